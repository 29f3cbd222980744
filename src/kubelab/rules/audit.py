"""`kubelab audit`: detect a dump's format, read it into a ForwardingTable, check it, and
optionally diff it against the table a node should have.

Bad input never raises a traceback: a file that is no dump is an AuditInputError with one
line naming what was looked for and where; a damaged dump gives a partial table plus
warnings naming the lines.
"""

from __future__ import annotations

import ipaddress
import json
import re

from kubelab.rules import cilium
from kubelab.rules.iptables_table import read_iptables
from kubelab.rules.ipvsadm import read_ipvsadm
from kubelab.rules.nft_table import read_nftables
from kubelab.rules.table import ForwardingTable, check_table
from kubelab.rules.trace import Packet, Trace
from kubelab.rules.trace_iptables import trace_iptables
from kubelab.rules.trace_ipvs import trace_ipvs
from kubelab.rules.trace_nft import trace_nft


class AuditInputError(ValueError):
    """The input is not a dump kubelab can read. The message is one line."""


def detect(text: str) -> str:
    if cilium.detect(text):
        return "cilium"
    stripped = text.lstrip()
    if stripped.startswith("{"):
        return "nftables-json"
    if re.search(r"^\s*table\s+ip\s+kube-proxy\s*\{", text, re.M):
        return "nftables-text"
    if re.search(r"^(\[\d+:\d+\]\s*)?-A\s+KUBE-", text, re.M) or re.search(r"^:KUBE-", text, re.M):
        return "iptables"
    if (
        "IP Virtual Server" in text
        or re.search(r"^(TCP|UDP|SCTP)\s+\S+:\d+", text, re.M)
        or re.search(r"^\s*-A\s+-[tu]\s+\S+:\d+", text, re.M)
    ):
        return "ipvs"
    return "unknown"


def _first_line(text: str) -> str:
    for number, line in enumerate(text.splitlines(), start=1):
        if line.strip():
            return f"line {number}: {line.strip()[:60]!r}"
    return "the file is empty"


def read_dump(
    text: str, source: str = "dump", node_addresses: set[str] | None = None
) -> ForwardingTable:
    kind = detect(text)
    if kind == "unknown":
        if re.search(r"^\s*table\s+(ip|ip6|inet)\s+\S+", text, re.M):
            raise AuditInputError(
                f"{source}: an nftables ruleset without `table ip kube-proxy`;"
                " kube-proxy's nftables mode writes that table"
            )
        raise AuditInputError(
            f"{source}: not a kube-proxy dump ({_first_line(text)}); expected iptables-save or "
            "iptables -S output with KUBE-* chains, nft list ruleset (text or -j), ipvsadm "
            "-Ln / -S -n, or cilium-dbg service list"
        )
    try:
        if kind == "nftables-json":
            try:
                json.loads(text)
            except json.JSONDecodeError as exc:
                raise AuditInputError(
                    f"{source}: line {exc.lineno} column {exc.colno}: the "
                    f"nftables JSON is cut off or broken ({exc.msg})"
                ) from None
            table = read_nftables(text)
        elif kind == "nftables-text":
            table = read_nftables(text)
            if text.count("{") != text.count("}"):
                table.warnings.append(
                    "the nftables text has unbalanced braces: the dump "
                    "looks cut off; the table may be partial"
                )
        elif kind == "iptables":
            table = read_iptables(text)
            if len(re.findall(r"^\*\w+", text, re.M)) > len(re.findall(r"^COMMIT", text, re.M)):
                table.warnings.append(
                    "a table has no COMMIT line: the dump looks cut off; the table may be partial"
                )
        elif kind == "cilium":
            table = cilium.read_cilium(text)
        else:
            table = read_ipvsadm(text, node_addresses)
    except AuditInputError:
        raise
    except (ValueError, KeyError, IndexError, TypeError) as exc:
        raise AuditInputError(
            f"{source}: could not read this {kind} dump: {type(exc).__name__}: {exc}"
        ) from None
    if not table.frontends and not table.warnings:
        table.warnings.append("no kube-proxy Service rules found in this dump")
    return table


def audit(
    text: str,
    source: str = "dump",
    pod_cidrs: list[str] | None = None,
    node_addresses: set[str] | None = None,
) -> ForwardingTable:
    try:
        nets = [ipaddress.IPv4Network(c, strict=False) for c in pod_cidrs or []]
    except ValueError as exc:
        raise AuditInputError(f"--pod-cidr: {exc}; use a CIDR such as 10.244.0.0/16") from None
    table = read_dump(text, source, node_addresses)
    check_table(table, nets)
    return table


def trace(text: str, source: str, packet: Packet, node_addresses: set[str]) -> Trace:
    """Follow `packet` through the dump's rules (see trace.py)."""
    kind = detect(text)
    if kind == "unknown":
        read_dump(text, source)  # raises the one-line error naming what was looked for
    if kind == "cilium":
        raise AuditInputError(
            f"{source}: a Cilium service list holds load-balancer state, not rules to follow; "
            "--trace reads iptables, nftables or IPVS dumps"
        )
    try:
        if kind == "iptables":
            return trace_iptables(text, packet, node_addresses)
        if kind in ("nftables-json", "nftables-text"):
            return trace_nft(text, packet, node_addresses)
        return trace_ipvs(text, packet)
    except (ValueError, KeyError, IndexError, TypeError) as exc:
        raise AuditInputError(
            f"{source}: could not trace through this {kind} dump: {type(exc).__name__}: {exc}"
        ) from None
