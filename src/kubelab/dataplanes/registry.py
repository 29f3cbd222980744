"""Dataplanes by spec `kind`. Adding one: a module with a Dataplane subclass, one line here."""

from __future__ import annotations

from typing import TYPE_CHECKING

from kubelab.dataplanes.base import Dataplane
from kubelab.dataplanes.kubernetes.options import KubernetesOptions
from kubelab.dataplanes.reference.dataplane import ReferenceDataplane
from kubelab.errors import SpecError
from kubelab.spec_common import DataplaneOptions

if TYPE_CHECKING:
    from kubelab.spec import LabSpec

DATAPLANES: dict[str, type[Dataplane]] = {
    ReferenceDataplane.kind: ReferenceDataplane,
}
# Specs of these kinds are read, checked and planned (`kubelab plan`, the playbooks), but
# `up` cannot drive them yet: the kubernetes dataplane's cluster verbs through the API are
# the next part of its issue. A kind moves to DATAPLANES when its class exists.
PLANNED_ONLY: dict[str, type[DataplaneOptions]] = {
    "kubernetes": KubernetesOptions,
}


def dataplane_class(spec: LabSpec) -> type[Dataplane]:
    """The class that drives the spec's dataplane; a planned-only kind is refused here,
    before anything is built."""
    kind = spec.dataplane.kind
    if kind in PLANNED_ONLY:
        raise SpecError(
            f"dataplane.kind: {kind} labs are planned, not yet built, by kubelab; "
            f"`kubelab plan {spec.name}` prints the cluster, and `kubelab plan {spec.name} "
            "--vars FILE` the variables for ansible-playbook playbooks/kubernetes.yml"
        )
    return DATAPLANES[kind]
