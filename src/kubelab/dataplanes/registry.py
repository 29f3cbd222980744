"""Dataplanes by spec `kind`. Adding one: a module with a Dataplane subclass, one line here."""

from __future__ import annotations

from kubelab.dataplanes.base import Dataplane
from kubelab.dataplanes.reference.dataplane import ReferenceDataplane

DATAPLANES: dict[str, type[Dataplane]] = {
    ReferenceDataplane.kind: ReferenceDataplane,
}
