"""`kubelab audit DUMP --trace SRC DST:PORT[/proto]`: follow one new connection's first
packet through a node's kube-proxy rules, as the kernel would, and say what becomes of it.

The walk is the mode's own (trace_iptables.py, trace_nft.py, trace_ipvs.py); this module
holds what they share: the packet, the branches a random pick splits it into (each with its
share of new connections), and the outcome: DNAT to endpoints (with their shares and
whether the packet is masqueraded), or drop / reject / accept, or none when no kube-proxy
rule acted on it. A branch whose state cannot be known from a dump (an affinity entry
already present, a connection not new) is taken the way a first connection goes.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field, replace
from typing import Any, Literal

Outcome = Literal["dnat", "drop", "reject", "accept", "none"]
PROTOCOLS = ("tcp", "udp", "sctp")
FLOW = re.compile(r"^(?P<dst>[0-9.]+):(?P<port>\d+)(?:/(?P<proto>tcp|udp|sctp))?$")


class TraceInputError(ValueError):
    """A flow kubelab cannot trace; the message is one line naming the argument."""


@dataclass(frozen=True)
class Packet:
    src: str
    dst: str
    port: int
    protocol: str = "tcp"

    @property
    def src_ip(self) -> ipaddress.IPv4Address:
        return ipaddress.IPv4Address(self.src)

    @property
    def dst_ip(self) -> ipaddress.IPv4Address:
        return ipaddress.IPv4Address(self.dst)


def parse_flow(source: str, destination: str) -> Packet:
    """SRC and DST:PORT[/tcp|udp|sctp], as the command line gives them."""
    try:
        ipaddress.IPv4Address(source)
    except ValueError:
        raise TraceInputError(
            f"--trace SRC: {source!r} is not an IPv4 address; give the packet's source, "
            "such as 10.244.1.5"
        ) from None
    m = FLOW.match(destination)
    if m is None or not 0 < int(m["port"]) < 65536:
        raise TraceInputError(
            f"--trace DST: {destination!r} is not ADDRESS:PORT[/tcp|udp|sctp]; for example "
            "10.96.0.10:53/udp"
        )
    try:
        ipaddress.IPv4Address(m["dst"])
    except ValueError:
        raise TraceInputError(f"--trace DST: {m['dst']!r} is not an IPv4 address") from None
    return Packet(source, m["dst"], int(m["port"]), m["proto"] or "tcp")


@dataclass(frozen=True)
class Branch:
    """The packet on one path through the rules: its current destination (after any
    DNAT), its masquerade mark, its share of new connections, and the steps it took."""

    packet: Packet
    share: float = 1.0
    masquerade: bool = False
    dnat: str | None = None  # "ip:port" once DNATed
    path: tuple[str, ...] = ()

    def step(self, text: str) -> Branch:
        return replace(self, path=(*self.path, text))

    def marked(self, where: str) -> Branch:
        """The masquerade mark set (kube-proxy's mark-for-masquerade / KUBE-MARK-MASQ)."""
        if self.masquerade:
            return self
        return replace(self.step(f"{where}: mark for masquerade"), masquerade=True)

    def split(self, share: float) -> Branch:
        return replace(self, share=self.share * share)

    def to(self, address: str) -> Branch:
        ip, _, port = address.rpartition(":")
        packet = replace(
            self.packet, dst=ip or address, port=int(port) if port else self.packet.port
        )
        return replace(self, packet=packet, dnat=address)


@dataclass
class Trace:
    packet: Packet
    mode: str
    outcome: Outcome = "none"
    endpoints: list[str] = field(default_factory=list)
    shares: list[float] = field(default_factory=list)
    masquerade: bool = False  # every DNATed branch is masqueraded
    masqueraded: dict[str, bool] = field(default_factory=dict)  # per endpoint
    path: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "outcome": self.outcome,
            "endpoints": self.endpoints,
            "shares": [round(s, 6) for s in self.shares],
            "masquerade": self.masquerade,
            "masqueraded_endpoints": [e for e in self.endpoints if self.masqueraded.get(e)],
            "path": self.path,
            "packet": {
                "source": self.packet.src,
                "destination": self.packet.dst,
                "port": self.packet.port,
                "protocol": self.packet.protocol,
            },
            "mode": self.mode,
            "notes": self.notes,
        }


def conclude(packet: Packet, mode: str, ends: list[tuple[Branch, Outcome]]) -> Trace:
    """One outcome from every branch's end. Endpoints keep the order of the first branch
    that reached each. `masquerade` holds when every DNATed branch is masqueraded; a pod
    reaching itself through the Service (hairpin) is masqueraded on its own branch only,
    which `masqueraded` tells per endpoint."""
    trace = Trace(packet, mode)
    if not ends:
        return trace
    verdicts = {outcome for _, outcome in ends}
    shares: dict[str, float] = {}
    for branch, outcome in ends:
        if outcome == "dnat" and branch.dnat:
            shares[branch.dnat] = shares.get(branch.dnat, 0.0) + branch.share
            trace.masqueraded[branch.dnat] = (
                trace.masqueraded.get(branch.dnat, True) and branch.masquerade
            )
    trace.masquerade = bool(trace.masqueraded) and all(trace.masqueraded.values())
    order: tuple[Outcome, ...] = ("dnat", "reject", "drop", "accept", "none")
    trace.outcome = next(o for o in order if o in verdicts)
    trace.endpoints = list(shares)
    trace.shares = [shares[e] for e in trace.endpoints]
    longest = max(ends, key=lambda e: (e[1] == trace.outcome, e[0].share, len(e[0].path)))
    trace.path = list(longest[0].path)
    if len(verdicts) > 1:
        parts = sorted(f"{o} {sum(b.share for b, x in ends if x == o):.4f}" for o in verdicts)
        trace.notes.append("branches end differently: " + ", ".join(parts))
    return trace


def render_text(trace: Trace) -> str:
    p = trace.packet
    lines = [f"trace {p.protocol} {p.src} -> {p.dst}:{p.port} through {trace.mode} rules"]
    lines += [f"  {step}" for step in trace.path]
    lines.append(f"outcome: {trace.outcome}")
    for endpoint, share in zip(trace.endpoints, trace.shares, strict=True):
        lines.append(f"  -> {endpoint:<22} share {share:.4f}")
    if trace.outcome == "dnat":
        mixed = [e for e in trace.endpoints if trace.masqueraded.get(e)]
        if trace.masquerade or not mixed:
            lines.append(f"masquerade: {'yes' if trace.masquerade else 'no'}")
        else:
            lines.append(f"masquerade: only to {', '.join(mixed)} (the source itself: hairpin)")
    lines += [f"note: {n}" for n in trace.notes]
    return "\n".join(lines) + "\n"


def local_addresses(node_addresses: set[str]) -> set[ipaddress.IPv4Address]:
    try:
        return {ipaddress.IPv4Address(a) for a in node_addresses}
    except ValueError as exc:
        raise TraceInputError(f"--node-address: {exc}; give the node's IPv4 addresses") from None


def is_local(address: str, node: set[ipaddress.IPv4Address]) -> bool:
    """`addrtype LOCAL` / `fib type local`: the node's own addresses and loopback."""
    ip = ipaddress.IPv4Address(address)
    return ip.is_loopback or ip in node


def in_network(address: str, text: str) -> bool:
    return ipaddress.IPv4Address(address) in ipaddress.IPv4Network(text, strict=False)
