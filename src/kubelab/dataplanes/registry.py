"""Dataplanes by spec `kind`. Adding one: a module with a Dataplane subclass, one line here."""

from __future__ import annotations

from typing import TYPE_CHECKING

from kubelab.dataplanes.base import Dataplane
from kubelab.dataplanes.kubernetes.dataplane import KubernetesDataplane
from kubelab.dataplanes.reference.dataplane import ReferenceDataplane

if TYPE_CHECKING:
    from kubelab.spec import LabSpec

DATAPLANES: dict[str, type[Dataplane]] = {
    ReferenceDataplane.kind: ReferenceDataplane,
    KubernetesDataplane.kind: KubernetesDataplane,
}


def dataplane_class(spec: LabSpec) -> type[Dataplane]:
    """The class that drives the spec's dataplane."""
    return DATAPLANES[spec.dataplane.kind]
