"""Proxiers of the reference dataplane: one module per proxy mode, named here.

Adding a mode: a Proxier subclass in its own module (render, apply, and the facts it
differs in from the base), one line in PROXIERS, and a parser for its dump in rules/.
"""

from kubelab.dataplanes.reference.proxier.base import KernelFeature, Proxier, ProxierContext
from kubelab.dataplanes.reference.proxier.iptables import IptablesProxier
from kubelab.dataplanes.reference.proxier.ipvs import IpvsProxier
from kubelab.dataplanes.reference.proxier.nftables import NftablesProxier

PROXIERS: dict[str, type[Proxier]] = {
    IptablesProxier.mode: IptablesProxier,
    NftablesProxier.mode: NftablesProxier,
    IpvsProxier.mode: IpvsProxier,
}


def proxier_for(
    mode: str, scheduler: str = "rr", node_ips: dict[str, str] | None = None
) -> Proxier:
    return PROXIERS[mode](scheduler, node_ips)


__all__ = [
    "PROXIERS",
    "IptablesProxier",
    "IpvsProxier",
    "KernelFeature",
    "NftablesProxier",
    "Proxier",
    "ProxierContext",
    "proxier_for",
]
