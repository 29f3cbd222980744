"""Services and endpoints as the proxier sees them: kube-proxy's inputs, in kubelab's words."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Literal

from kubelab.spec_common import NODE_PORT_RANGE, ServiceSpec

if TYPE_CHECKING:
    from kubelab.spec import LabSpec

Protocol = Literal["TCP", "UDP"]
TrafficPolicy = Literal["Cluster", "Local"]


@dataclass(frozen=True)
class Endpoint:
    """One address of an EndpointSlice, with its conditions."""

    ip: ipaddress.IPv4Address
    port: int
    node: str
    pod: str
    ready: bool = True
    serving: bool = True
    terminating: bool = False

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
    type: Literal["ClusterIP", "NodePort", "LoadBalancer"]
    cluster_ip: ipaddress.IPv4Address | None  # None: headless
    ports: tuple[ServicePort, ...]
    workload: str
    external_traffic_policy: TrafficPolicy = "Cluster"
    internal_traffic_policy: TrafficPolicy = "Cluster"
    session_affinity: Literal["None", "ClientIP"] = "None"
    session_affinity_timeout_s: int = 10800
    health_check_node_port: int | None = None
    external_ips: tuple[ipaddress.IPv4Address, ...] = ()
    # status.loadBalancer.ingress: what the lab's pool assigned, as MetalLB would
    load_balancer_ips: tuple[ipaddress.IPv4Address, ...] = ()
    load_balancer_source_ranges: tuple[ipaddress.IPv4Network, ...] = ()

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"

    @property
    def headless(self) -> bool:
        return self.cluster_ip is None

    @property
    def externally_accessible(self) -> bool:
        """kube-proxy's ExternallyAccessible: a NodePort, an external IP or a LoadBalancer IP."""
        return (
            self.type in ("NodePort", "LoadBalancer")
            or bool(self.external_ips)
            or bool(self.load_balancer_ips)
        )

    @property
    def external_local(self) -> bool:
        return self.externally_accessible and self.external_traffic_policy == "Local"

    @property
    def needs_health_check(self) -> bool:
        """The API server allocates a healthCheckNodePort (and kube-proxy serves it) for a
        LoadBalancer with externalTrafficPolicy Local only, not for a NodePort."""
        return self.type == "LoadBalancer" and self.external_traffic_policy == "Local"

    @property
    def external_addresses(self) -> tuple[tuple[str, ipaddress.IPv4Address], ...]:
        """("externalip" | "loadbalancer", address) for every external address."""
        return tuple(("externalip", ip) for ip in self.external_ips) + tuple(
            ("loadbalancer", ip) for ip in self.load_balancer_ips
        )

    @property
    def uses_local_endpoints(self) -> bool:
        """A traffic policy is Local: what a node's rules say depends on its own endpoints."""
        return self.internal_traffic_policy == "Local" or self.external_local

    @property
    def affinity_seconds(self) -> int | None:
        return self.session_affinity_timeout_s if self.session_affinity == "ClientIP" else None

    def port_name(self, port: ServicePort) -> str:
        """kube-proxy's ServicePortName string: `ns/name:port`, or `ns/name` if unnamed."""
        return f"{self.key}:{port.name}" if port.name else self.key

    def port_by_name(self, name: str | None) -> ServicePort:
        for p in self.ports:
            if name in (None, p.name):
                return p
        raise KeyError(f"Service {self.key} has no port {name!r}")

    def with_changes(self, **changes: object) -> Service:
        return replace(self, **changes)  # type: ignore[arg-type]


@dataclass(frozen=True)
class ServiceState:
    """One Service together with its current endpoints (the EndpointSlice's content)."""

    service: Service
    endpoints: tuple[Endpoint, ...] = field(default_factory=tuple)

    def as_status(self) -> dict[str, Any]:
        """The Service and its endpoints as `kubelab status` shows them."""
        s = self.service
        return {
            "name": s.key,
            "type": s.type,
            "cluster_ip": str(s.cluster_ip) if s.cluster_ip else "None",
            "external_traffic_policy": s.external_traffic_policy,
            "internal_traffic_policy": s.internal_traffic_policy,
            "session_affinity": s.session_affinity,
            "health_check_node_port": s.health_check_node_port,
            "external_ips": [str(ip) for ip in s.external_ips],
            "load_balancer_ips": [str(ip) for ip in s.load_balancer_ips],
            "load_balancer_source_ranges": [str(r) for r in s.load_balancer_source_ranges],
            "ports": [
                {
                    "name": p.name,
                    "protocol": p.protocol,
                    "port": p.port,
                    "target_port": p.target_port,
                    "node_port": p.node_port,
                }
                for p in s.ports
            ],
            "endpoints": [
                {"address": e.address, "node": e.node, "ready": e.ready,
                 "terminating": e.terminating}
                for e in self.endpoints
            ],
        }  # fmt: skip

    def endpoints_for(self, port: ServicePort) -> tuple[Endpoint, ...]:
        """Every endpoint of the slice, at the port's target port (ready or not)."""
        target = port.target_port
        if all(e.port == target for e in self.endpoints):
            return self.endpoints  # the common case, and cheap at 10,000s of Services
        return tuple(replace(e, port=target) for e in self.endpoints)


@dataclass(frozen=True)
class Categorized:
    """kube-proxy's CategorizeEndpoints (pkg/proxy/topology.go), for one node."""

    cluster: tuple[Endpoint, ...]  # used with policy Cluster
    local: tuple[Endpoint, ...]  # used with policy Local
    reachable: tuple[Endpoint, ...]  # every endpoint some rule on this node may DNAT to
    has_any: bool  # the Service has usable endpoints somewhere
    internal_local: bool = False  # internalTrafficPolicy Local
    external_local: bool = False  # externalTrafficPolicy Local

    @property
    def internal(self) -> tuple[Endpoint, ...]:
        """What ClusterIP traffic reaches on this node."""
        return self.local if self.internal_local else self.cluster

    @property
    def external(self) -> tuple[Endpoint, ...]:
        """What NodePort / external traffic from outside the cluster reaches on this node."""
        return self.local if self.external_local else self.cluster

    @property
    def has_internal(self) -> bool:
        return self.has_any and bool(self.internal)

    @property
    def has_external(self) -> bool:
        return self.has_any and bool(self.external)


def _usable(endpoints: tuple[Endpoint, ...]) -> tuple[Endpoint, ...]:
    """Ready endpoints; if there are none, serving-and-terminating ones (kube-proxy's
    ProxyTerminatingEndpoints fallback)."""
    ready = tuple(e for e in endpoints if e.ready)
    if ready:
        return ready
    return tuple(e for e in endpoints if e.serving and e.terminating)


def categorize(service: Service, endpoints: tuple[Endpoint, ...], node: str) -> Categorized:
    """Which endpoints each traffic policy uses on `node` (kube-proxy's CategorizeEndpoints,
    without topology hints)."""
    # Cluster endpoints are needed for internal policy Cluster, and for any externally
    # reachable Service: even under external policy Local, pod and node traffic
    # short-circuits to them.
    uses_cluster = service.internal_traffic_policy != "Local" or service.externally_accessible
    uses_local = service.uses_local_endpoints
    cluster = _usable(endpoints) if uses_cluster else ()
    local = _usable(tuple(e for e in endpoints if e.node == node)) if uses_local else ()
    chosen = {e.address for e in (*cluster, *local)}
    reachable = tuple(e for e in endpoints if e.address in chosen)
    has_any = any(e.ready or (e.serving and e.terminating) for e in endpoints)
    return Categorized(
        cluster,
        local,
        reachable,
        has_any,
        internal_local=service.internal_traffic_policy == "Local",
        external_local=service.external_traffic_policy == "Local",
    )


def service_from_spec(
    spec: ServiceSpec,
    index: int,
    lab: LabSpec,
    taken: set[int],
    load_balancer_ips: tuple[ipaddress.IPv4Address, ...] = (),
) -> Service:
    if spec.cluster_ip == "None":
        cluster_ip = None
    elif spec.cluster_ip is not None:
        cluster_ip = spec.cluster_ip
    else:
        cluster_ip = lab.network.service_cidr.network_address + 10 + index
    return with_health_check_port(Service(
        namespace=spec.namespace,
        name=spec.name,
        type=spec.type,
        cluster_ip=cluster_ip,
        ports=tuple(
            ServicePort(p.name, p.protocol, p.port, p.target_port, p.node_port) for p in spec.ports
        ),
        workload=spec.workload,
        external_traffic_policy=spec.external_traffic_policy,
        internal_traffic_policy=spec.internal_traffic_policy,
        session_affinity=spec.session_affinity,
        session_affinity_timeout_s=spec.session_affinity_timeout_s,
        health_check_node_port=spec.health_check_node_port,
        external_ips=tuple(spec.external_ips),
        load_balancer_ips=load_balancer_ips,
        load_balancer_source_ranges=tuple(spec.load_balancer_source_ranges),
    ), taken)  # fmt: skip


def with_health_check_port(svc: Service, taken: set[int]) -> Service:
    """The Service with a healthCheckNodePort exactly when it needs one, as the API server
    keeps it: allocated from `taken` when missing, released back into it when no longer
    needed."""
    if svc.needs_health_check and svc.health_check_node_port is None:
        return svc.with_changes(health_check_node_port=allocate_node_port(taken))
    if not svc.needs_health_check and svc.health_check_node_port is not None:
        taken.discard(svc.health_check_node_port)
        return svc.with_changes(health_check_node_port=None)
    return svc


def allocate_node_port(taken: set[int]) -> int:
    """The highest free port of the NodePort range (the API server picks at random)."""
    for port in range(NODE_PORT_RANGE[1], NODE_PORT_RANGE[0] - 1, -1):
        if port not in taken:
            taken.add(port)
            return port
    raise ValueError("the NodePort range is exhausted")
