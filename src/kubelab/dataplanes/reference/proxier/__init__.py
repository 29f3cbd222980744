"""Proxiers of the reference dataplane: one module per proxy mode, picked by one switch."""

from kubelab.dataplanes.reference.proxier.base import Proxier, ProxierContext
from kubelab.dataplanes.reference.proxier.iptables import IptablesProxier

PROXIERS: dict[str, type[Proxier]] = {IptablesProxier.mode: IptablesProxier}


def proxier_for(mode: str) -> Proxier:
    return PROXIERS[mode]()


__all__ = ["PROXIERS", "Proxier", "ProxierContext", "proxier_for"]
