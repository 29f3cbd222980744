"""The ForwardingTable: what one node forwards, whatever the proxy mode that wrote it.

One Frontend per (kind, VIP, protocol, port) the node intercepts, with the endpoints its
rules send new connections to (in the order the rules try them), their effective shares,
session affinity, masquerading, the traffic-policy flag and the verdict with no endpoints.
Parsers build it from real dumps; `expected.py` builds it from Services and endpoints.
"""

from __future__ import annotations

import ipaddress
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

# "external": an external IP or a LoadBalancer IP, where the dump does not say which (an
# nftables dump tells them apart only for LoadBalancer IPs with loadBalancerSourceRanges)
KINDS: tuple[str, ...] = ("clusterip", "nodeport", "externalip", "loadbalancer", "external")
# a short-circuit source that is this node itself (`fib saddr type local`, `--src-type LOCAL`)
NODE_SOURCE = "node"
# a share further than this from 1/n, relative to 1/n, is reported: 10-decimal probabilities
# stay far below it at any size; the 5-decimal ones kube-proxy printed before 2019 cross it
# from about 300 endpoints on
UNIFORM_TOLERANCE = 1e-3


@dataclass
class Frontend:
    kind: str  # one of KINDS
    vip: str | None  # None for nodeport
    port: int
    protocol: str  # tcp | udp | sctp
    service: str | None = None  # "ns/name:port" or "ns/name", as the dump names it
    endpoints: list[str] = field(default_factory=list)  # "ip:port", in rule order
    probabilities: list[str] = field(default_factory=list)  # printed, the last endpoint has none
    weights: list[float] = field(default_factory=list)  # effective share of each endpoint
    affinity_seconds: int | None = None
    masquerade_offcluster: bool | None = None  # None: the mode cannot show it
    masquerade_all: bool | None = None  # external traffic always masqueraded (policy Cluster)
    local_only: bool = False  # externalTrafficPolicy Local: only this node's endpoints
    # with no_endpoints "drop" and local_only: external sources are dropped, while the
    # short-circuit sources below still reach the cluster-wide endpoints
    no_endpoints: Literal["reject", "drop"] | None = None
    # policy Local: sources that skip the policy and go to the cluster-wide endpoints
    # (pod CIDRs, and NODE_SOURCE, which kube-proxy also masquerades)
    short_circuit_sources: list[str] = field(default_factory=list)
    short_circuit_endpoints: list[str] = field(default_factory=list)
    # loadBalancerSourceRanges: only these sources are let through, the rest is dropped
    source_ranges: list[str] = field(default_factory=list)
    scheduler: str | None = None  # IPVS only
    addresses: list[str] = field(default_factory=list)  # IPVS NodePorts: node addresses

    @property
    def key(self) -> tuple[str, str | None, str, int]:
        return (self.kind, self.vip, self.protocol, self.port)

    def label(self) -> str:
        where = f"{self.vip}:{self.port}" if self.vip else f":{self.port}"
        name = f" ({self.service})" if self.service else ""
        return f"{self.kind} {self.protocol} {where}{name}"


# IPVS only: left out of the JSON when empty
OPTIONAL_KEYS = ("scheduler", "addresses")


@dataclass
class ForwardingTable:
    mode: str  # iptables | nftables | ipvs | cilium (a Cilium service list)
    frontends: list[Frontend] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def add(self, frontend: Frontend) -> Frontend:
        """Add, or merge into the frontend with the same key (first wins on conflicts)."""
        for f in self.frontends:
            if f.key == frontend.key:
                return f
        self.frontends.append(frontend)
        return frontend

    def find(self, kind: str, vip: str | None, protocol: str, port: int) -> Frontend | None:
        return next((f for f in self.frontends if f.key == (kind, vip, protocol, port)), None)

    def sort(self) -> None:
        self.frontends.sort(
            key=lambda f: (
                KINDS.index(f.kind),
                ipaddress.ip_address(f.vip or "0.0.0.0"),
                f.protocol,
                f.port,
            )
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "mode": self.mode,
            "frontends": [
                {k: v for k, v in asdict(f).items() if k not in OPTIONAL_KEYS or v}
                for f in self.frontends
            ],
            "warnings": self.warnings,
        }


def service_ranges(front: Frontend, sources: list[str]) -> list[str]:
    """A firewall's allowed sources without the LoadBalancer IP itself, which kube-proxy
    adds when the node's own address is in a range (its calls to the VIP loop back with
    the VIP as source): what is left is loadBalancerSourceRanges."""
    own = {front.vip, f"{front.vip}/32"}
    return [s for s in sources if s not in own]


def effective_weights(probabilities: list[float | None]) -> list[float]:
    """The share of new connections each rule of a probability chain gets, in order. A rule
    with no probability takes everything that reaches it."""
    remaining = 1.0
    out = []
    for p in probabilities:
        share = remaining if p is None else remaining * p
        out.append(share)
        remaining -= share
    return out


def check_table(table: ForwardingTable, pod_cidrs: list[ipaddress.IPv4Network]) -> None:
    """Checks that need only the dump: uneven shares, DNAT outside the known pod ranges."""
    for f in table.frontends:
        n = len(f.weights)
        if n > 1:
            worst = max(abs(w - 1 / n) * n for w in f.weights)
            if worst > UNIFORM_TOLERANCE:
                table.warnings.append(
                    f"{f.label()}: endpoint shares are not uniform: one is {worst:.2%} off "
                    f"1/{n} (min {min(f.weights) * n:.4f}/n, max {max(f.weights) * n:.4f}/n)"
                )
            repeats = len(f.probabilities) - len(set(f.probabilities))
            if repeats:
                table.warnings.append(
                    f"{f.label()}: {repeats} probabilities repeat in the chain (the 5-decimal "
                    "format kube-proxy printed before 2019 repeats from 319 endpoints on)"
                )
        if pod_cidrs:
            for ep in f.endpoints:
                ip = ipaddress.ip_address(ep.rsplit(":", 1)[0])
                if not any(ip in net for net in pod_cidrs):
                    table.warnings.append(
                        f"{f.label()}: DNAT target {ep} is outside the pod ranges "
                        + ", ".join(str(n) for n in pod_cidrs)
                    )


def render_text(table: ForwardingTable) -> str:
    """The table for people: one block per frontend."""
    lines = [f"mode: {table.mode}, {len(table.frontends)} frontends"]
    for f in table.frontends:
        extras = []
        if f.affinity_seconds is not None:
            extras.append(f"affinity {f.affinity_seconds}s")
        if f.local_only:
            extras.append("local only")
        if f.masquerade_all:
            extras.append("masquerade all")
        if f.masquerade_offcluster:
            extras.append("masquerade off-cluster")
        if f.no_endpoints:
            extras.append(f"no endpoints: {f.no_endpoints}")
        if f.source_ranges:
            extras.append(f"only from {', '.join(f.source_ranges)}, others dropped")
        if f.scheduler:
            extras.append(f"scheduler {f.scheduler}")
        lines.append(f"{f.label()}" + (f"  [{', '.join(extras)}]" if extras else ""))
        for i, ep in enumerate(f.endpoints):
            share = f"{f.weights[i]:.4f}" if i < len(f.weights) else "?"
            lines.append(f"    -> {ep:<22} share {share}")
        if f.short_circuit_sources:
            sources = ", ".join(
                "this node (masqueraded)" if s == NODE_SOURCE else s
                for s in f.short_circuit_sources
            )
            lines.append(f"    from {sources}: to the cluster-wide endpoints")
            lines += [f"    => {ep}" for ep in f.short_circuit_endpoints]
    lines += [f"warning: {w}" for w in table.warnings]
    return "\n".join(lines) + "\n"
