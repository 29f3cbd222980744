"""The lab spec: labs/<name>.yaml parsed into validated pydantic models.

The substrate and dataplane sections are a discriminated union built from the backends'
registries, so each backend owns its options model. A backend may also complete the raw
spec before validation (the `existing` substrate reads its node names from the inventory).
Every validation error becomes one line naming the field and a valid alternative
(`load_spec`), and it is raised before anything is built.
"""

from __future__ import annotations

import hashlib
import ipaddress
import math
import re
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Union

import yaml
from pydantic import Field, ValidationError, model_validator

from kubelab.dataplanes.registry import DATAPLANES
from kubelab.errors import SpecError
from kubelab.spec_common import (
    DNS_LABEL,
    NODE_PORT_RANGE,
    ClientSpec,
    DataplaneOptions,
    NetworkSpec,
    NodeSpec,
    ServicePortSpec,
    ServiceSpec,
    StrictModel,
    SubstrateOptions,
    WorkloadSpec,
)
from kubelab.substrates.base import planned_inventory
from kubelab.substrates.registry import SUBSTRATES

NAME_PATTERN = r"^[a-z][a-z0-9]*$"

if TYPE_CHECKING:
    SubstrateSection = SubstrateOptions
    DataplaneSection = DataplaneOptions
else:
    SubstrateSection = Annotated[
        Union[tuple(cls.Options for cls in SUBSTRATES.values())],  # noqa: UP007
        Field(discriminator="kind"),
    ]
    DataplaneSection = Annotated[
        Union[tuple(cls.Options for cls in DATAPLANES.values())],  # noqa: UP007
        Field(discriminator="kind"),
    ]

__all__ = [
    "NODE_PORT_RANGE",
    "ClientSpec",
    "LabSpec",
    "NetworkSpec",
    "NodeSpec",
    "ServicePortSpec",
    "ServiceSpec",
    "WorkloadSpec",
    "load_spec",
    "parse_spec",
]


# --- the lab ----------------------------------------------------------------------------------


class LabSpec(StrictModel):
    name: str = Field(pattern=NAME_PATTERN, max_length=10)
    description: str = ""
    substrate: SubstrateSection
    dataplane: DataplaneSection
    network: NetworkSpec = Field(default_factory=NetworkSpec)
    # no fixed cap: the node and pod networks below bound how many nodes fit
    nodes: list[NodeSpec] = Field(min_length=1)
    client: ClientSpec = Field(default_factory=ClientSpec)
    workloads: list[WorkloadSpec] = Field(default_factory=list)
    services: list[ServiceSpec] = Field(default_factory=list)
    seed: int = 1

    @model_validator(mode="after")
    def _consistent(self) -> LabSpec:
        """Checks across fields. Each message starts with the path of the field to fix."""
        self.dataplane.check_lab(self)
        members = [(f"nodes[{i}].name", n.name) for i, n in enumerate(self.nodes)]
        members.append(("client.name", self.client.name))
        seen: set[str] = set()
        for path, name in members:
            if name == "fabric":
                raise ValueError(f"{path}: 'fabric' is reserved for the lab's switch; rename it")
            if name in seen:
                raise ValueError(
                    f"{path}: {name!r} is used twice; give every node and the client "
                    "a different name"
                )
            seen.add(name)
        net = self.network
        slices = 2 ** (net.node_pod_prefix - net.pod_cidr.prefixlen)
        if len(self.nodes) + 1 > slices:
            raise ValueError(
                f"network.pod_cidr: {net.pod_cidr} holds {slices} /{net.node_pod_prefix} node "
                f"slices, too few for {len(self.nodes)} nodes; use a larger pod_cidr"
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
                f"workloads: {pods} pods per node do not fit a /{net.node_pod_prefix} node slice "
                f"of pod_cidr (room for {per_node}); lower pods_per_node or node_pod_prefix"
            )
        room = net.node_cidr.num_addresses - RESERVED_NODE_ADDRESSES
        if len(self.nodes) > room:
            fits = 32 - math.ceil(math.log2(len(self.nodes) + RESERVED_NODE_ADDRESSES))
            raise ValueError(
                f"network.node_cidr: {net.node_cidr} holds {max(room, 0)} nodes and a client, "
                f"too few for {len(self.nodes)}; use a larger node_cidr (a /{fits} holds "
                f"{2 ** (32 - fits) - RESERVED_NODE_ADDRESSES})"
            )
        node_names = {n.name for n in self.nodes}
        workloads: set[str] = set()
        for i, w in enumerate(self.workloads):
            if w.name in workloads:
                raise ValueError(
                    f"workloads[{i}].name: {w.name!r} is used twice; give each workload its own"
                )
            workloads.add(w.name)
            unknown = sorted(set(w.nodes or []) - node_names)
            if unknown:
                raise ValueError(
                    f"workloads[{i}].nodes: {_shown(unknown)} are not nodes of this lab; "
                    f"use some of {_shown(sorted(node_names))}"
                )
        node_ports: dict[int, str] = {}
        external_owner: dict[ipaddress.IPv4Address, str] = {}
        if any(s.type == "LoadBalancer" for s in self.services):
            self._check_pool()
        seen_services: set[str] = set()
        for i, svc in enumerate(self.services):
            key = f"{svc.namespace}/{svc.name}"
            if key in seen_services:
                raise ValueError(
                    f"services[{i}].name: Service {key} is defined twice; give each its own name"
                )
            seen_services.add(key)
            if svc.workload not in workloads:
                raise ValueError(
                    f"services[{i}].workload: Service {key} selects workload {svc.workload!r}, "
                    "which is not defined; use one of "
                    f"{sorted(workloads) or 'the workloads you add under workloads:'}"
                )
            if isinstance(svc.cluster_ip, ipaddress.IPv4Address) and (
                svc.cluster_ip not in net.service_cidr
            ):
                raise ValueError(
                    f"services[{i}].cluster_ip: {svc.cluster_ip} is outside "
                    f"service_cidr {net.service_cidr}; pick an address inside it"
                )
            self.check_external_addresses(f"services[{i}]", svc, external_owner)
            ports = [(f"services[{i}].ports[{j}].node_port", p.node_port) for j, p in
                     enumerate(svc.ports)] + [(f"services[{i}].health_check_node_port",
                                               svc.health_check_node_port)]  # fmt: skip
            for path, node_port in ports:
                if node_port is None:
                    continue
                if node_port in node_ports:
                    raise ValueError(
                        f"{path}: {node_port} is already {node_ports[node_port]}; "
                        "give each NodePort and health-check port its own"
                    )
                node_ports[node_port] = f"used by {path.split('.')[0]}" + (
                    " as its health-check port" if "health" in path else " as a NodePort"
                )
        return self

    def _check_pool(self) -> None:
        pool = self.network.lb_pool
        taken = sorted(m.ip for m in planned_inventory(self).members() if m.ip in pool)
        if pool.num_addresses < 2 or taken:
            raise ValueError(
                f"network.load_balancer_pool: {pool} has no room for LoadBalancer IPs"
                + (f" ({', '.join(map(str, taken))} are lab members)" if taken else "")
                + "; set a free range of the node network, such as a /28 inside "
                f"{self.network.node_cidr}"
            )

    def check_external_addresses(
        self, where: str, svc: ServiceSpec, owner: dict[ipaddress.IPv4Address, str]
    ) -> None:
        """External IPs and LoadBalancer IPs are addresses the lab routes on its own node
        network: inside node_cidr, not a member's, each used by one Service (`owner`:
        address -> who has it, filled in as Services are checked)."""
        net = self.network
        members = {m.ip for m in planned_inventory(self).members()}
        pool = net.lb_pool
        wanted = [(f"{where}.external_ips[{j}]", ip) for j, ip in enumerate(svc.external_ips)]
        if svc.load_balancer_ip is not None:
            wanted.append((f"{where}.load_balancer_ip", svc.load_balancer_ip))
        for path, ip in wanted:
            if ip not in net.node_cidr or ip in members:
                raise ValueError(
                    f"{path}: {ip} is not a free address of the node network {net.node_cidr}; "
                    "the lab routes only its own: pick an unused one of it"
                )
            if path.endswith("load_balancer_ip") and ip not in pool:
                raise ValueError(
                    f"{path}: {ip} is outside network.load_balancer_pool {pool}; pick one "
                    "inside it or set the pool"
                )
            if ip in owner:
                raise ValueError(f"{path}: {ip} is already {owner[ip]}; give each its own")
            owner[ip] = f"used by {where}"

    @property
    def lab_id(self) -> str:
        return self.name

    def digest(self) -> str:
        """A stable hash of the spec, recorded in provenance."""
        canonical = self.model_dump_json(exclude_none=False)
        return hashlib.sha256(canonical.encode()).hexdigest()[:16]


BACKEND_KINDS = {*SUBSTRATES, *DATAPLANES}


def _field_path(loc: tuple[int | str, ...]) -> str:
    path = ""
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        elif part in BACKEND_KINDS:  # tags pydantic adds to the location
            continue
        else:
            path += f".{part}" if path else str(part)
    return path or "(top level)"


PATTERNS = {
    NAME_PATTERN: "lowercase letters and digits, starting with a letter (for example lab2)",
    DNS_LABEL: "lowercase letters, digits and '-', starting and ending with a letter or "
    "digit (for example node-1)",
}
SHOWN_VALUE = 40  # an error shows at most this much of the value it rejects
FIELD_FIRST = re.compile(r"^[a-z_]+(\[\d+\]|\.[a-z_]+)*: ")
RESERVED_NODE_ADDRESSES = 14  # .0-.10 stay free, the client takes one, broadcast


def _shown(value: Any) -> str:
    """The rejected value, short: an error names the field, it never echoes a long value."""
    text = repr(value)
    if isinstance(value, list | dict) and len(text) > SHOWN_VALUE:
        return f"a {type(value).__name__} of {len(value)} items"
    return text if len(text) <= SHOWN_VALUE else text[: SHOWN_VALUE - 3] + "..."


def _one_line(err: Any) -> str:
    loc = _field_path(tuple(err["loc"]))
    kind = err["type"]
    msg = str(err["msg"])
    ctx = err.get("ctx", {})
    value = _shown(err.get("input"))
    if kind == "extra_forbidden":
        return f"{loc}: unknown field; remove it or check the spelling against labs/local.yaml"
    if kind == "missing":
        return f"{loc}: required field is missing; add it (see labs/local.yaml)"
    if kind == "union_tag_invalid":
        tag = str(ctx.get("discriminator", "kind")).strip("'")
        return f"{loc}.{tag}: {ctx.get('tag')!r} is not supported; use {ctx.get('expected_tags')}"
    if kind == "literal_error":
        return f"{loc}: {value} is not supported; use {ctx.get('expected', '')}"
    if kind == "string_pattern_mismatch":
        wanted = PATTERNS.get(ctx.get("pattern"), f"the pattern {ctx.get('pattern')}")
        return f"{loc}: {value} is not a valid name; use {wanted}"
    if kind == "string_too_long":
        return f"{loc}: {value} is too long; use at most {ctx.get('max_length')} characters"
    if kind == "too_short":
        return f"{loc}: {value} has too few entries; give at least {ctx.get('min_length')}"
    if kind == "too_long":
        return f"{loc}: {value} has too many entries; give at most {ctx.get('max_length')}"
    if kind in ("int_parsing", "int_type", "int_from_float"):
        return f"{loc}: {value} is not a whole number; give an integer"
    if kind in ("list_type", "tuple_type"):
        return f"{loc}: {value} is not a list; give a YAML list (one '- item' per line)"
    if kind in ("dict_type", "model_type", "model_attributes_type"):
        return f"{loc}: {value} is not a mapping; give 'key: value' lines"
    if kind in ("string_type",):
        return f"{loc}: {value} is not text; quote it"
    if kind in ("bool_parsing", "bool_type"):
        return f"{loc}: {value} is not true or false; give one of them"
    if kind in ("greater_than_equal", "greater_than"):
        return f"{loc}: {value} is too small; use at least {ctx.get('ge', ctx.get('gt'))}"
    if kind in ("less_than_equal", "less_than"):
        return f"{loc}: {value} is too large; use at most {ctx.get('le', ctx.get('lt'))}"
    if msg.startswith("Value error, "):
        text = msg[len("Value error, ") :]
        if loc == "(top level)" and FIELD_FIRST.match(text):
            return text  # a check across fields names the field it is about itself
        return f"{loc}: {text}"
    return f"{loc}: {value}: {msg}"


def parse_spec(data: Any, source: str = "<spec>", base_dir: Path | None = None) -> LabSpec:
    """Validate a spec mapping. `base_dir` is where relative paths in it start (the spec
    file's folder); backends complete the mapping first (see Substrate.complete)."""
    if not isinstance(data, dict):
        raise SpecError(f"{source}: the file must hold a mapping of fields (see labs/local.yaml)")
    substrate = data.get("substrate")
    kind = substrate.get("kind") if isinstance(substrate, dict) else None
    if isinstance(kind, str) and kind in SUBSTRATES:
        try:
            data = SUBSTRATES[kind].complete(data, base_dir or Path.cwd(), source)
        except SpecError as exc:
            raise SpecError(f"{source}: {exc}") from None
    try:
        return LabSpec.model_validate(data)
    except ValidationError as exc:
        errors = exc.errors()
        line = _one_line(errors[0])
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
    return parse_spec(data, str(p), p.resolve().parent)
