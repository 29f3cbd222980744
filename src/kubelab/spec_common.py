"""The parts of a lab spec every backend shares: networks, members, workloads, Services,
and the base classes of the substrate and dataplane option models.

Each substrate and dataplane owns its own options model (a subclass of SubstrateOptions or
DataplaneOptions, in its own module); `kubelab.spec` joins them into the LabSpec union.
"""

from __future__ import annotations

import ipaddress
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

if TYPE_CHECKING:
    from kubelab.spec import LabSpec

NODE_PORT_RANGE = (30000, 32767)
DNS_LABEL = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"


class StrictModel(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# --- the options each backend contributes ----------------------------------------------------


class SubstrateOptions(StrictModel):
    """Where nodes live; each substrate module subclasses this with `kind: Literal[...]`."""

    kind: str


class DataplaneOptions(StrictModel):
    """Who forwards packets; each dataplane module subclasses this."""

    kind: str
    proxy_mode: str = "iptables"
    # how long after a pod dies or a node fails its endpoints leave the rules, as the
    # endpoints controller and node lifecycle controller would take to notice
    endpoint_detection_delay_s: float = Field(1.0, ge=0, le=300)

    def check_lab(self, spec: LabSpec) -> None:
        """Checks of this dataplane against the rest of the spec (the substrate, say);
        raise ValueError starting with the field to fix. Default: none."""


# --- addressing -------------------------------------------------------------------------------


def _parse_network(value: Any, example: str) -> ipaddress.IPv4Network:
    try:
        net = ipaddress.ip_network(str(value), strict=True)
    except ValueError as exc:
        raise ValueError(
            f"{value!r} is not a valid IPv4 network ({exc}); use a CIDR such as {example}"
        ) from None
    if not isinstance(net, ipaddress.IPv4Network):
        raise ValueError(f"{value!r} is IPv6; the lab is IPv4 only, use a CIDR such as {example}")
    return net


class NetworkSpec(StrictModel):
    node_cidr: ipaddress.IPv4Network = ipaddress.IPv4Network("192.168.56.0/24")
    pod_cidr: ipaddress.IPv4Network = ipaddress.IPv4Network("10.244.0.0/16")
    node_pod_prefix: int = Field(24, ge=8, le=30)
    service_cidr: ipaddress.IPv4Network = ipaddress.IPv4Network("10.96.0.0/12")
    # LoadBalancer IPs, handed out on the node network as MetalLB's L2 mode does; default:
    # the /28 below the one holding the client (192.168.56.224/28 for a /24)
    load_balancer_pool: ipaddress.IPv4Network | None = None

    @property
    def lb_pool(self) -> ipaddress.IPv4Network:
        """The pool in use. A node network smaller than a /26 has no room for the default:
        a /32 pool that holds no host, so LoadBalancer Services are refused until one is
        set."""
        if self.load_balancer_pool is not None:
            return self.load_balancer_pool
        if self.node_cidr.prefixlen > 26:
            return ipaddress.IPv4Network(f"{self.node_cidr.network_address}/32")
        return ipaddress.IPv4Network(f"{self.node_cidr.broadcast_address - 31}/28")

    @field_validator("load_balancer_pool", mode="before")
    @classmethod
    def _lb_pool(cls, v: Any) -> ipaddress.IPv4Network | None:
        return None if v is None else _parse_network(v, "192.168.56.224/28")

    @field_validator("node_cidr", mode="before")
    @classmethod
    def _node_cidr(cls, v: Any) -> ipaddress.IPv4Network:
        return _parse_network(v, "192.168.56.0/24")

    @field_validator("pod_cidr", mode="before")
    @classmethod
    def _pod_cidr(cls, v: Any) -> ipaddress.IPv4Network:
        return _parse_network(v, "10.244.0.0/16")

    @field_validator("service_cidr", mode="before")
    @classmethod
    def _service_cidr(cls, v: Any) -> ipaddress.IPv4Network:
        return _parse_network(v, "10.96.0.0/12")

    @model_validator(mode="after")
    def _no_overlap(self) -> NetworkSpec:
        named = [
            ("node_cidr", self.node_cidr),
            ("pod_cidr", self.pod_cidr),
            ("service_cidr", self.service_cidr),
        ]
        for i, (name_a, a) in enumerate(named):
            for name_b, b in named[i + 1 :]:
                if a.overlaps(b):
                    raise ValueError(
                        f"{name_a} {a} overlaps {name_b} {b}; give each a separate range "
                        "(for example 192.168.56.0/24, 10.244.0.0/16, 10.96.0.0/12)"
                    )
        if self.load_balancer_pool is not None and not self.load_balancer_pool.subnet_of(
            self.node_cidr
        ):
            raise ValueError(
                f"load_balancer_pool {self.load_balancer_pool} is outside node_cidr "
                f"{self.node_cidr}; LoadBalancer IPs live on the node network (for example "
                f"{list(self.node_cidr.subnets(new_prefix=max(self.node_cidr.prefixlen, 28)))[-1]})"
            )
        if self.node_pod_prefix <= self.pod_cidr.prefixlen:
            raise ValueError(
                f"node_pod_prefix /{self.node_pod_prefix} must be longer than pod_cidr "
                f"/{self.pod_cidr.prefixlen} so each node gets a slice; use 24 with a /16"
            )
        return self


# --- members ----------------------------------------------------------------------------------


class NodeSpec(StrictModel):
    name: str = Field(pattern=DNS_LABEL, max_length=12)


class ClientSpec(StrictModel):
    name: str = Field("client", pattern=DNS_LABEL, max_length=12)


class WorkloadSpec(StrictModel):
    """A set of backend pods answering like agnhost netexec."""

    name: str = Field(pattern=DNS_LABEL, max_length=12)
    pods_per_node: int | None = Field(None, ge=0)
    replicas: int | None = Field(None, ge=0)  # spread round-robin over the nodes
    nodes: list[str] | None = None  # like a nodeSelector: only these nodes get pods
    port: int = Field(8080, ge=1, le=65535)
    udp_port: int = Field(8081, ge=1, le=65535)  # agnhost netexec's --udp-port default

    @model_validator(mode="after")
    def _one_count(self) -> WorkloadSpec:
        if (self.pods_per_node is None) == (self.replicas is None):
            raise ValueError("set exactly one of pods_per_node or replicas")
        return self

    def count_on(self, node_index: int, node_count: int, node_name: str = "") -> int:
        """Pods of this workload on node `node_index` (0-based) of `node_count`."""
        if self.nodes is not None and node_name and node_name not in self.nodes:
            return 0
        if self.pods_per_node is not None:
            return self.pods_per_node
        assert self.replicas is not None
        count = len(self.nodes) if self.nodes else node_count
        index = self.nodes.index(node_name) if self.nodes and node_name else node_index
        return self.replicas // count + (1 if index < self.replicas % count else 0)


class ServicePortSpec(StrictModel):
    name: str | None = Field(None, pattern=DNS_LABEL)
    protocol: Literal["TCP", "UDP"] = "TCP"
    port: int = Field(ge=1, le=65535)
    target_port: int = Field(ge=1, le=65535)
    node_port: int | None = None

    @field_validator("node_port")
    @classmethod
    def _node_port_range(cls, v: int | None) -> int | None:
        low, high = NODE_PORT_RANGE
        if v is not None and not low <= v <= high:
            raise ValueError(f"{v} is outside the NodePort range; use a port from {low} to {high}")
        return v


class ServiceSpec(StrictModel):
    name: str = Field(pattern=DNS_LABEL)
    namespace: str = Field("default", pattern=DNS_LABEL)
    workload: str
    type: Literal["ClusterIP", "NodePort", "LoadBalancer"] = "ClusterIP"
    cluster_ip: ipaddress.IPv4Address | Literal["None"] | None = None  # "None" = headless
    # addresses on the node network that the lab routes to a node (spec.externalIPs)
    external_ips: list[ipaddress.IPv4Address] = Field(default_factory=list)
    # type LoadBalancer: default, the next free address of network.load_balancer_pool
    load_balancer_ip: ipaddress.IPv4Address | None = None
    load_balancer_source_ranges: list[ipaddress.IPv4Network] = Field(default_factory=list)
    external_traffic_policy: Literal["Cluster", "Local"] = "Cluster"
    internal_traffic_policy: Literal["Cluster", "Local"] = "Cluster"
    session_affinity: Literal["None", "ClientIP"] = "None"
    session_affinity_timeout_s: int = Field(10800, ge=1, le=86400)
    health_check_node_port: int | None = None  # default: allocated for LoadBalancer + Local
    ports: list[ServicePortSpec] = Field(min_length=1)

    @field_validator("health_check_node_port")
    @classmethod
    def _health_port_range(cls, v: int | None) -> int | None:
        return ServicePortSpec._node_port_range(v)

    @model_validator(mode="after")
    def _ports(self) -> ServiceSpec:
        if len(self.ports) > 1 and any(p.name is None for p in self.ports):
            raise ValueError("a Service with several ports must name each port (ports[].name)")
        for p in self.ports:
            if self.type != "ClusterIP" and p.node_port is None:
                raise ValueError(
                    f"port {p.port} needs node_port for type {self.type}; "
                    f"pick one from {NODE_PORT_RANGE[0]} to {NODE_PORT_RANGE[1]}"
                )
            if self.type == "ClusterIP" and p.node_port is not None:
                raise ValueError("node_port is set but type is ClusterIP; use type: NodePort")
        if self.cluster_ip == "None" and (self.type != "ClusterIP" or self.external_ips):
            raise ValueError(
                "a headless Service (cluster_ip: None) must be type ClusterIP without external_ips"
            )
        if self.type != "LoadBalancer" and (
            self.load_balancer_ip is not None or self.load_balancer_source_ranges
        ):
            raise ValueError(
                "load_balancer_ip and load_balancer_source_ranges need type LoadBalancer; "
                "set type: LoadBalancer or remove them"
            )
        if self.external_traffic_policy == "Local" and self.type == "ClusterIP":
            raise ValueError(
                "external_traffic_policy Local needs type NodePort or LoadBalancer (as the "
                "API server requires); change the type or use Cluster"
            )
        if self.health_check_node_port is not None and not (
            self.type == "LoadBalancer" and self.external_traffic_policy == "Local"
        ):
            raise ValueError(
                "health_check_node_port needs type LoadBalancer with external_traffic_policy "
                "Local (the API server allocates one for no other Service); remove it"
            )
        return self
