"""The cluster's address plan: which node owns which pod slice, which pod gets which
address. A pure function of the spec and the substrate's inventory, so every part
(dataplane, scenarios, tests) agrees on it without saved state."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from kubelab.errors import LabError
from kubelab.inventory import Inventory, Member
from kubelab.naming import lab_netns

if TYPE_CHECKING:
    from kubelab.spec import LabSpec
    from kubelab.spec_common import WorkloadSpec


@dataclass(frozen=True)
class NodeInfo:
    name: str
    index: int  # 1-based
    ip: ipaddress.IPv4Address
    pod_cidr: ipaddress.IPv4Network
    pod_gateway: ipaddress.IPv4Address  # the node's cni0 address


@dataclass(frozen=True)
class PodInfo:
    name: str
    workload: str
    node: str
    ip: ipaddress.IPv4Address
    port: int
    netns: str  # the pod's sandbox: a network namespace on its node
    udp_port: int = 8081


@dataclass(frozen=True)
class Topology:
    spec: LabSpec
    inventory: Inventory

    @property
    def lab_id(self) -> str:
        return self.spec.lab_id

    @cached_property
    def nodes(self) -> tuple[NodeInfo, ...]:
        net = self.spec.network
        slices = net.pod_cidr.subnets(new_prefix=net.node_pod_prefix)
        next(slices)  # slice 0 stays unused, so node1 owns x.x.1.0/24
        out = []
        for i, (member, pod_cidr) in enumerate(zip(self.inventory.nodes, slices, strict=False), 1):
            out.append(NodeInfo(member.name, i, member.ip, pod_cidr, pod_cidr.network_address + 1))
        return tuple(out)

    @property
    def client(self) -> Member:
        return self.inventory.client

    @cached_property
    def pods(self) -> tuple[PodInfo, ...]:
        """The pods the spec asks for at start (the dataplane adds and removes pods later)."""
        out = []
        for i, node in enumerate(self.nodes):
            host = 2  # .1 is the node's bridge
            for wl in self.spec.workloads:
                for k in range(wl.count_on(i, len(self.nodes), node.name)):
                    out.append(self.pod_info(wl, node, k, host))
                    host += 1
        return tuple(out)

    def pod_info(self, wl: WorkloadSpec, node: NodeInfo, k: int, host: int) -> PodInfo:
        name = f"{wl.name}-{node.name}-{k}"
        return PodInfo(
            name=name,
            workload=wl.name,
            node=node.name,
            ip=node.pod_cidr.network_address + host,
            port=wl.port,
            netns=lab_netns(self.lab_id, name),
            udp_port=wl.udp_port,
        )

    def node(self, name: str) -> NodeInfo:
        for n in self.nodes:
            if n.name == name:
                return n
        raise KeyError(f"no node named {name!r}; nodes are {[n.name for n in self.nodes]}")

    def pods_on(self, node: str) -> tuple[PodInfo, ...]:
        return tuple(p for p in self.pods if p.node == node)

    def owns(self, address: str) -> bool:
        """Whether `address` is one this lab assigns (its node network, pods, Services and
        members) or loopback: the only places lab traffic may go."""
        try:
            ip = ipaddress.IPv4Address(address)
        except ValueError:
            return False
        net = self.spec.network
        ranges = (net.node_cidr, net.pod_cidr, net.service_cidr)
        members = {m.ip for m in self.inventory.members()}
        return ip.is_loopback or ip in members or any(ip in r for r in ranges)

    def require_own(self, target: str) -> str:
        """`target` (an address or a URL) if the lab owns its host; otherwise refuse before
        any traffic starts."""
        host = urlsplit(target).hostname if "://" in target else target
        if host is None or not self.owns(host):
            net = self.spec.network
            raise LabError(
                f"refusing traffic to {host}: lab {self.lab_id} sends only to its own "
                f"addresses (node network {net.node_cidr}, pods {net.pod_cidr}, Services "
                f"{net.service_cidr}) and loopback"
            )
        return target
