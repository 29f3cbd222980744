"""The lab spec: labs/<name>.yaml parsed into validated pydantic models.

Every validation error becomes one line naming the field and a valid alternative
(`load_spec`), and it is raised before anything is built.
"""

from __future__ import annotations

import hashlib
import ipaddress
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from kubelab.errors import SpecError

NODE_PORT_RANGE = (30000, 32767)
NAME_PATTERN = r"^[a-z][a-z0-9]*$"
DNS_LABEL = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"


class StrictModel(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# --- substrates: where nodes live -------------------------------------------------------------


class NetnsSubstrate(StrictModel):
    """Nodes are network namespaces on the local kernel (the embedded lab)."""

    kind: Literal["netns"]


Substrate = Annotated[NetnsSubstrate, Field(discriminator="kind")]


# --- dataplanes: who forwards packets ---------------------------------------------------------


class ReferenceDataplane(StrictModel):
    """kubelab's own pod network plus a proxier that writes kube-proxy's rule layout."""

    kind: Literal["reference"]
    proxy_mode: Literal["iptables", "nftables", "ipvs"] = "iptables"
    # IPVS scheduler (kube-proxy's --ipvs-scheduler); only read in ipvs mode
    scheduler: Literal["rr", "wrr", "lc", "wlc", "lblc", "lblcr", "sh", "dh", "sed", "nq", "mh"] = (
        "rr"
    )
    pod_network: Literal["host-gw", "vxlan"] = "host-gw"
    # how long after a pod dies or a node fails its endpoints leave the rules, as the
    # endpoints controller and node lifecycle controller would take to notice
    endpoint_detection_delay_s: float = Field(1.0, ge=0, le=300)


Dataplane = Annotated[ReferenceDataplane, Field(discriminator="kind")]


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
    type: Literal["ClusterIP", "NodePort"] = "ClusterIP"
    cluster_ip: ipaddress.IPv4Address | Literal["None"] | None = None  # "None" = headless
    external_traffic_policy: Literal["Cluster", "Local"] = "Cluster"
    internal_traffic_policy: Literal["Cluster", "Local"] = "Cluster"
    session_affinity: Literal["None", "ClientIP"] = "None"
    session_affinity_timeout_s: int = Field(10800, ge=1, le=86400)
    health_check_node_port: int | None = None  # default: allocated for NodePort + Local
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
            if self.type == "NodePort" and p.node_port is None:
                raise ValueError(
                    f"port {p.port} needs node_port for type NodePort; "
                    f"pick one from {NODE_PORT_RANGE[0]} to {NODE_PORT_RANGE[1]}"
                )
            if self.type == "ClusterIP" and p.node_port is not None:
                raise ValueError("node_port is set but type is ClusterIP; use type: NodePort")
        if self.cluster_ip == "None" and self.type != "ClusterIP":
            raise ValueError("a headless Service (cluster_ip: None) must be type ClusterIP")
        if self.health_check_node_port is not None and not (
            self.type == "NodePort" and self.external_traffic_policy == "Local"
        ):
            raise ValueError(
                "health_check_node_port needs type NodePort with "
                "external_traffic_policy Local; remove it"
            )
        return self


# --- the lab ----------------------------------------------------------------------------------


class LabSpec(StrictModel):
    name: str = Field(pattern=NAME_PATTERN, max_length=10)
    description: str = ""
    substrate: Substrate
    dataplane: Dataplane
    network: NetworkSpec = Field(default_factory=NetworkSpec)
    nodes: list[NodeSpec] = Field(min_length=1, max_length=16)
    client: ClientSpec = Field(default_factory=ClientSpec)
    workloads: list[WorkloadSpec] = Field(default_factory=list)
    services: list[ServiceSpec] = Field(default_factory=list)
    seed: int = 1

    @model_validator(mode="after")
    def _consistent(self) -> LabSpec:
        names = [n.name for n in self.nodes] + [self.client.name]
        if "fabric" in names:
            raise ValueError("'fabric' is reserved for the lab's switch; name the member otherwise")
        dup = {n for n in names if names.count(n) > 1}
        if dup:
            raise ValueError(
                f"member name {sorted(dup)[0]!r} is used twice; give every node "
                "and the client a different name"
            )
        net = self.network
        slices = 2 ** (net.node_pod_prefix - net.pod_cidr.prefixlen)
        if len(self.nodes) + 1 > slices:
            raise ValueError(
                f"pod_cidr {net.pod_cidr} holds {slices} /{net.node_pod_prefix} node slices, "
                f"too few for {len(self.nodes)} nodes; use a larger pod_cidr"
            )
        per_node = 2 ** (32 - net.node_pod_prefix) - 3  # network, gateway, broadcast
        pods = max(
            (
                sum(w.count_on(i, len(self.nodes), n.name) for w in self.workloads)
                for i, n in enumerate(self.nodes)
            ),
            default=0,
        )
        if pods > per_node:
            raise ValueError(
                f"{pods} pods per node do not fit a /{net.node_pod_prefix} node slice of "
                f"pod_cidr (room for {per_node}); lower pods_per_node or node_pod_prefix"
            )
        if len(self.nodes) + 12 > net.node_cidr.num_addresses - 2:
            raise ValueError(
                f"node_cidr {net.node_cidr} is too small for {len(self.nodes)} "
                "nodes and a client; use a /24"
            )
        workloads = {w.name for w in self.workloads}
        node_names = {n.name for n in self.nodes}
        for w in self.workloads:
            unknown = sorted(set(w.nodes or []) - node_names)
            if unknown:
                raise ValueError(
                    f"workload {w.name} names unknown nodes {unknown}; "
                    f"use some of {sorted(node_names)}"
                )
        seen_node_ports: set[int] = set()
        seen_services: set[str] = set()
        for svc in self.services:
            key = f"{svc.namespace}/{svc.name}"
            if key in seen_services:
                raise ValueError(f"Service {key} is defined twice; give each a different name")
            seen_services.add(key)
            if svc.workload not in workloads:
                raise ValueError(
                    f"Service {key} selects workload {svc.workload!r}, which is not defined; "
                    f"use one of {sorted(workloads) or 'the workloads you add under workloads:'}"
                )
            if isinstance(svc.cluster_ip, ipaddress.IPv4Address) and (
                svc.cluster_ip not in net.service_cidr
            ):
                raise ValueError(
                    f"Service {key} cluster_ip {svc.cluster_ip} is outside "
                    f"service_cidr {net.service_cidr}; pick an address inside it"
                )
            for node_port in [p.node_port for p in svc.ports] + [svc.health_check_node_port]:
                if node_port is None:
                    continue
                if node_port in seen_node_ports:
                    raise ValueError(f"node_port {node_port} is used twice; give each its own")
                seen_node_ports.add(node_port)
        return self

    @property
    def lab_id(self) -> str:
        return self.name

    def digest(self) -> str:
        """A stable hash of the spec, recorded in provenance."""
        canonical = self.model_dump_json(exclude_none=False)
        return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def _field_path(loc: tuple[int | str, ...]) -> str:
    path = ""
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        elif part in ("netns", "reference"):  # discriminator tags pydantic adds to the location
            continue
        else:
            path += f".{part}" if path else str(part)
    return path or "(top level)"


def _one_line(err: Any, model_fields: dict[str, Any]) -> str:
    loc = _field_path(tuple(err["loc"]))
    kind = err["type"]
    msg = str(err["msg"])
    value = err.get("input")
    if kind == "extra_forbidden":
        return f"{loc}: unknown field; remove it or check the spelling against labs/local.yaml"
    if kind == "missing":
        return f"{loc}: required field is missing; add it (see labs/local.yaml)"
    if kind == "union_tag_invalid":
        ctx = err.get("ctx", {})
        tag = str(ctx.get("discriminator", "kind")).strip("'")
        return f"{loc}.{tag}: {ctx.get('tag')!r} is not supported; use {ctx.get('expected_tags')}"
    if kind == "literal_error":
        expected = err.get("ctx", {}).get("expected", "")
        return f"{loc}: {value!r} is not supported; use {expected}"
    if msg.startswith("Value error, "):
        msg = msg[len("Value error, ") :]
        return f"{loc}: {msg}"
    return f"{loc}: {value!r}: {msg}"


def parse_spec(data: Any, source: str = "<spec>") -> LabSpec:
    if not isinstance(data, dict):
        raise SpecError(f"{source}: the file must hold a mapping of fields (see labs/local.yaml)")
    try:
        return LabSpec.model_validate(data)
    except ValidationError as exc:
        errors = exc.errors()
        line = _one_line(errors[0], LabSpec.model_fields)
        more = f" (+{len(errors) - 1} more)" if len(errors) > 1 else ""
        raise SpecError(f"{source}: {line}{more}") from None


def load_spec(path: str | Path) -> LabSpec:
    """Read and validate a lab spec file. Raises SpecError with one line on any problem."""
    p = Path(path)
    if not p.is_file():
        raise SpecError(f"{p}: no such lab spec file; pass a file such as labs/local.yaml")
    try:
        data = yaml.safe_load(p.read_text())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        raise SpecError(f"{p}:{where}: not valid YAML; fix the syntax there") from None
    return parse_spec(data, str(p))
