"""Trace a packet through an IPVS dump (`ipvsadm -Ln` or `-S -n`): the virtual server its
destination and port name, and the real servers it may go to, each with its weight's
share (what rr and wrr give over many connections; lc, sh and the others pick by load or
hash, so the shares are the weights only).

An IPVS dump holds no masquerading (kube-proxy's IPVS mode marks it with iptables rules
and ipsets), so the trace says nothing of it. A virtual server with no real server is
answered with ICMP port unreachable: reject.
"""

from __future__ import annotations

import re

from kubelab.rules.ipvsadm import parse_list, parse_save
from kubelab.rules.trace import Packet, Trace


def trace_ipvs(text: str, packet: Packet) -> Trace:
    warnings: list[str] = []
    is_save = re.search(r"^\s*-A\s+-[tu]\s", text, re.M) is not None
    servers = (parse_save if is_save else parse_list)(text, warnings)
    trace = Trace(packet, "ipvs")
    trace.notes += warnings
    trace.notes.append(
        "an IPVS dump holds no masquerading (kube-proxy's IPVS mode keeps it in iptables "
        "and ipsets); masquerade is shown as no"
    )
    vs = next(
        (
            v
            for v in servers
            if (v.protocol, v.address, v.port) == (packet.protocol, packet.dst, packet.port)
        ),
        None,
    )
    where = f"{packet.protocol.upper()} {packet.dst}:{packet.port}"
    if vs is None:
        trace.path.append(f"no virtual server {where}")
        return trace
    flags = f" {vs.scheduler}" if vs.scheduler else ""
    flags += f" persistent {vs.persistent}" if vs.persistent else ""
    trace.path.append(f"virtual server {where}{flags}, {len(vs.reals)} real servers")
    if not vs.reals:
        trace.outcome = "reject"
        trace.path.append("no real server: ICMP port unreachable")
        return trace
    total = sum(w for _, w in vs.reals) or 1
    trace.outcome = "dnat"
    trace.endpoints = [r for r, _ in vs.reals]
    trace.shares = [w / total for _, w in vs.reals]
    if vs.scheduler not in (None, "rr", "wrr"):
        trace.notes.append(f"scheduler {vs.scheduler} picks by load or hash; shares are weights")
    return trace
