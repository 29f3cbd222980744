"""Proxiers of the reference dataplane: one module per proxy mode, picked by one switch."""

from kubelab.dataplanes.reference.proxier.base import Proxier, ProxierContext
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
    if mode == IpvsProxier.mode:
        return IpvsProxier(scheduler, node_ips)
    return PROXIERS[mode]()


__all__ = [
    "PROXIERS",
    "IptablesProxier",
    "IpvsProxier",
    "NftablesProxier",
    "Proxier",
    "ProxierContext",
    "proxier_for",
]
