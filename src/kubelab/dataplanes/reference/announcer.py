"""Where the client sends a Service's external IPs and LoadBalancer IPs: to one node each,
as MetalLB's L2 mode makes it answer ARP for them (and as an admin routes external IPs).

The lab does it with one /32 route per address on the client, via the announcing node's
address: the same effect as an ARP answer from that node, without a speaker. The node is
the first node (in the spec's order) that has a ready endpoint of the Service when its
externalTrafficPolicy is Local (MetalLB announces only from such nodes), else the first
node. An address no node may announce gets no route, so the client cannot reach it, as
with MetalLB.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence

from kubelab.hosts import Runner
from kubelab.model import ServiceState
from kubelab.topology import NodeInfo


def announcements(
    services: Sequence[ServiceState], nodes: Sequence[NodeInfo]
) -> dict[ipaddress.IPv4Address, ipaddress.IPv4Address]:
    """External address -> the address of the node that answers for it."""
    out: dict[ipaddress.IPv4Address, ipaddress.IPv4Address] = {}
    for state in services:
        svc = state.service
        if not svc.external_addresses:
            continue
        candidates = list(nodes)
        if svc.external_local:
            ready = {e.node for e in state.endpoints if e.ready}
            candidates = [n for n in nodes if n.name in ready]
        if not candidates:
            continue
        for _, address in svc.external_addresses:
            out[address] = candidates[0].ip
    return out


class Announcer:
    """Keeps the client's routes equal to `announcements` with as few changes as it can."""

    def __init__(self) -> None:
        self.routes: dict[ipaddress.IPv4Address, ipaddress.IPv4Address] = {}

    def sync(
        self, client: Runner, wanted: dict[ipaddress.IPv4Address, ipaddress.IPv4Address]
    ) -> None:
        for address in sorted(self.routes.keys() - wanted.keys()):
            client.run(["ip", "route", "del", f"{address}/32"], check=False)
        for address, via in sorted(wanted.items()):
            if self.routes.get(address) != via:
                client.run(["ip", "route", "replace", f"{address}/32", "via", str(via)])
        self.routes = dict(wanted)

    def clear(self, client: Runner) -> None:
        self.sync(client, {})
