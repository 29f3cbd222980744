"""Substrates by spec `kind`. Adding one: a module with a Substrate subclass, one line here."""

from __future__ import annotations

from kubelab.substrates.base import Substrate
from kubelab.substrates.existing import ExistingSubstrate
from kubelab.substrates.netns import NetnsSubstrate
from kubelab.substrates.vagrant import VagrantSubstrate

SUBSTRATES: dict[str, type[Substrate]] = {
    NetnsSubstrate.kind: NetnsSubstrate,
    ExistingSubstrate.kind: ExistingSubstrate,
    VagrantSubstrate.kind: VagrantSubstrate,
}
