"""The address plan of a lab: who gets which name, namespace and address.

A pure function of the spec, so every part (substrate, dataplane, scenarios, tests) agrees
on it without saved state.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from functools import cached_property

from kubelab.spec import LabSpec, WorkloadSpec

NETNS_PREFIX = "kl"
NODE_HOST_OFFSET = 10  # node i (1-based) gets node_cidr + 10 + i, as Vagrant labs usually do


def netns_prefix(lab_id: str) -> str:
    """Every namespace of lab `lab_id` starts with this. Lab ids contain no '-', so the
    prefix of lab 'a' never matches lab 'ab'."""
    return f"{NETNS_PREFIX}-{lab_id}-"


@dataclass(frozen=True)
class NodeInfo:
    name: str
    index: int  # 1-based
    ip: ipaddress.IPv4Address
    netns: str
    pod_cidr: ipaddress.IPv4Network
    pod_gateway: ipaddress.IPv4Address  # the node's cni0 address


@dataclass(frozen=True)
class PodInfo:
    name: str
    workload: str
    node: str
    ip: ipaddress.IPv4Address
    port: int
    netns: str
    udp_port: int = 8081


@dataclass(frozen=True)
class ClientInfo:
    name: str
    ip: ipaddress.IPv4Address
    netns: str


@dataclass(frozen=True)
class Topology:
    spec: LabSpec

    @property
    def lab_id(self) -> str:
        return self.spec.lab_id

    def netns_name(self, member: str) -> str:
        return f"{netns_prefix(self.lab_id)}{member}"

    @property
    def fabric_netns(self) -> str:
        return self.netns_name("fabric")

    @cached_property
    def nodes(self) -> tuple[NodeInfo, ...]:
        net = self.spec.network
        slices = list(net.pod_cidr.subnets(new_prefix=net.node_pod_prefix))
        out = []
        for i, node in enumerate(self.spec.nodes, start=1):
            pod_cidr = slices[i]  # slice 0 stays unused, so node1 owns x.x.1.0/24
            out.append(
                NodeInfo(
                    name=node.name,
                    index=i,
                    ip=net.node_cidr.network_address + NODE_HOST_OFFSET + i,
                    netns=self.netns_name(node.name),
                    pod_cidr=pod_cidr,
                    pod_gateway=pod_cidr.network_address + 1,
                )
            )
        return tuple(out)

    @cached_property
    def client(self) -> ClientInfo:
        net = self.spec.network.node_cidr
        return ClientInfo(
            name=self.spec.client.name,
            ip=net.broadcast_address - 1,
            netns=self.netns_name(self.spec.client.name),
        )

    @cached_property
    def pods(self) -> tuple[PodInfo, ...]:
        """The pods the spec asks for at start (the Lab adds and removes pods later)."""
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
            netns=self.netns_name(name),
            udp_port=wl.udp_port,
        )

    def node(self, name: str) -> NodeInfo:
        for n in self.nodes:
            if n.name == name:
                return n
        raise KeyError(f"no node named {name!r}; nodes are {[n.name for n in self.nodes]}")

    def pods_on(self, node: str) -> tuple[PodInfo, ...]:
        return tuple(p for p in self.pods if p.node == node)

    def members(self) -> dict[str, str]:
        """Every member a person can `kubelab exec` into, mapped to its namespace."""
        out = {n.name: n.netns for n in self.nodes}
        out[self.client.name] = self.client.netns
        out.update({p.name: p.netns for p in self.pods})
        out["fabric"] = self.fabric_netns
        return out

    def all_netns(self) -> list[str]:
        return sorted(set(self.members().values()))
