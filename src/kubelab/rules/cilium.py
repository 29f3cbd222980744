"""ForwardingTable from Cilium's kube-proxy replacement: `cilium-dbg service list` (and the
older `cilium service list`), the listing the agent prints from its load-balancer state.

One row per frontend: an ID, the frontend address (`10.96.0.10:53/UDP` in recent listings,
`10.96.0.10:53` in older ones, which are read as TCP with a warning; a trailing `/i` marks
the internal-scope twin Cilium keeps for a Service whose traffic policies differ by scope),
the Service type, and the backends, one per line (`1 => 10.244.1.69:53/UDP (active)`).

A NodePort is a frontend per node address plus the `0.0.0.0` surrogate: they become one
`nodeport` frontend listing the addresses, as the IPVS reader does. Only active backends
take new connections (a line without a state, as the oldest listings print, counts as
active); terminating, quarantined and maintenance backends are named in a warning.

The listing shows no Service names, affinity, masquerading or loadBalancerSourceRanges:
those fields stay unset, and the diff against `--expect` compares frontends and endpoints
only. IPv6 frontends are left out with a warning (kubelab's labs are IPv4).
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field

from kubelab.rules.table import ForwardingTable, Frontend

HEADER = re.compile(r"^\s*ID\s+Frontend\s+Service Type\s+Backend\s*$")
OLD_HEADER = re.compile(r"^\s*ID\s+Frontend\s+Backend\s*$")
# ID, frontend, type, and the first backend if any
ROW = re.compile(r"^\s*(\d+)\s+(\S+)\s+([A-Za-z]+)(?:\s+(\d+\s*=>.*?))?\s*$")
BACKEND = re.compile(r"^\s*(\d+)\s*=>\s*(\S+)(?:\s+\(([a-z-]+)\))?")
KINDS = {
    "ClusterIP": "clusterip",
    "NodePort": "nodeport",
    "ExternalIPs": "externalip",
    "LoadBalancer": "loadbalancer",
}
USABLE = "active"


@dataclass
class Row:
    line: int
    address: str
    port: int
    protocol: str
    internal: bool
    kind: str
    backends: list[tuple[str, str]] = field(default_factory=list)  # ("ip:port", state)


def detect(text: str) -> bool:
    return any(HEADER.match(line) or OLD_HEADER.match(line) for line in text.splitlines()[:5])


def _address(text: str) -> tuple[str, int, str, bool]:
    """`10.96.0.10:53/UDP/i` -> ("10.96.0.10", 53, "udp", True); no protocol: tcp."""
    host_port, *rest = text.split("/")
    host, _, port = host_port.rpartition(":")
    protocol = next((r.lower() for r in rest if r.upper() in ("TCP", "UDP", "SCTP")), "tcp")
    return host.strip("[]"), int(port), protocol, "i" in rest


def _backend(text: str) -> str:
    host, port, _, _ = _address(text)
    return f"{host}:{port}"


def parse_rows(text: str, warnings: list[str]) -> list[Row]:
    rows: list[Row] = []
    for number, raw in enumerate(text.splitlines(), start=1):
        if not raw.strip() or HEADER.match(raw):
            continue
        if OLD_HEADER.match(raw):
            raise ValueError(
                f"line {number}: a listing without the Service Type column (an old Cilium): "
                "its frontends cannot be told apart; use cilium-dbg service list"
            )
        row = ROW.match(raw)
        if row:
            _id, front, kind, first = row.groups()
            host, port, protocol, internal = _address(front)
            rows.append(Row(number, host, port, protocol, internal, kind))
            if first:
                raw = first
            else:
                continue
        backend = BACKEND.match(raw)
        if backend and rows:
            rows[-1].backends.append((_backend(backend.group(2)), backend.group(3) or USABLE))
        else:
            warnings.append(f"line {number}: not a service list line: {raw.strip()[:60]}")
    return rows


def read_cilium(text: str) -> ForwardingTable:
    table = ForwardingTable("cilium")
    rows = parse_rows(text, table.warnings)
    if rows and not re.search(r"^\s*\d+\s+\S+/(TCP|UDP|SCTP)", text, re.M | re.I):
        table.warnings.append(
            "the listing names no protocols (an older Cilium): every frontend is read as tcp"
        )
    internal: dict[tuple[str, str, str, int], list[str]] = {}
    for row in rows:
        if ipaddress.ip_address(row.address).version == 6:
            table.warnings.append(f"line {row.line}: IPv6 frontend [{row.address}] left out")
            continue
        kind = KINDS.get(row.kind)
        if kind is None:
            table.warnings.append(
                f"line {row.line}: {row.kind} frontend {row.address}:{row.port} left out "
                "(not a Service frontend kube-proxy would write)"
            )
            continue
        usable = [ep for ep, state in row.backends if state == USABLE]
        for ep, state in row.backends:
            if state != USABLE:
                table.warnings.append(
                    f"{kind} {row.protocol} {row.address}:{row.port}: backend {ep} is {state}, "
                    "not used for new connections"
                )
        vip = None if kind == "nodeport" else row.address
        if row.internal:  # what pods and the node reach when the policy is Local
            internal.setdefault((kind, vip or "", row.protocol, row.port), usable)
            continue
        front = table.add(Frontend(kind, vip, row.port, row.protocol))
        if kind == "nodeport" and row.address != "0.0.0.0":
            front.addresses = sorted({*front.addresses, row.address})
        if not front.endpoints:
            front.endpoints = usable
            front.weights = [1 / len(usable) for _ in usable]
    for (kind, vip, protocol, port), endpoints in internal.items():
        external = table.find(kind, vip or None, protocol, port)
        if external is not None:
            external.local_only = True  # two scopes: the external one keeps local backends
            external.short_circuit_endpoints = endpoints
    table.sort()
    return table
