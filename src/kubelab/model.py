"""Services and endpoints as the proxier sees them: kube-proxy's inputs, in kubelab's words."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field, replace
from typing import Literal

from kubelab.spec import LabSpec, ServiceSpec
from kubelab.topology import Topology

Protocol = Literal["TCP"]
TrafficPolicy = Literal["Cluster", "Local"]


@dataclass(frozen=True)
class Endpoint:
    ip: ipaddress.IPv4Address
    port: int
    node: str
    pod: str
    ready: bool = True

    @property
    def address(self) -> str:
        return f"{self.ip}:{self.port}"


@dataclass(frozen=True)
class ServicePort:
    name: str | None
    protocol: Protocol
    port: int
    target_port: int
    node_port: int | None


@dataclass(frozen=True)
class Service:
    namespace: str
    name: str
    type: Literal["ClusterIP", "NodePort"]
    cluster_ip: ipaddress.IPv4Address
    ports: tuple[ServicePort, ...]
    workload: str
    external_traffic_policy: TrafficPolicy = "Cluster"

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"

    def port_name(self, port: ServicePort) -> str:
        """kube-proxy's ServicePortName string: `ns/name:port`, or `ns/name` if unnamed."""
        return f"{self.key}:{port.name}" if port.name else self.key

    def with_changes(self, **changes: object) -> Service:
        return replace(self, **changes)  # type: ignore[arg-type]


@dataclass(frozen=True)
class ServiceState:
    """One Service together with its current endpoints (the EndpointSlice's content)."""

    service: Service
    endpoints: tuple[Endpoint, ...] = field(default_factory=tuple)

    def endpoints_for(self, port: ServicePort) -> tuple[Endpoint, ...]:
        return tuple(
            Endpoint(e.ip, port.target_port, e.node, e.pod, e.ready)
            for e in self.endpoints
            if e.ready
        )


def service_from_spec(spec: ServiceSpec, index: int, lab: LabSpec) -> Service:
    cluster_ip = spec.cluster_ip or lab.network.service_cidr.network_address + 10 + index
    return Service(
        namespace=spec.namespace,
        name=spec.name,
        type=spec.type,
        cluster_ip=cluster_ip,
        ports=tuple(
            ServicePort(p.name, p.protocol, p.port, p.target_port, p.node_port) for p in spec.ports
        ),
        workload=spec.workload,
        external_traffic_policy=spec.external_traffic_policy,
    )


def endpoints_of(service: Service, topology: Topology) -> tuple[Endpoint, ...]:
    """Ready endpoints of a Service: every pod of its workload, in the pods' order."""
    return tuple(
        Endpoint(p.ip, p.port, p.node, p.name)
        for p in topology.pods
        if p.workload == service.workload
    )
