"""Rules that are not kube-proxy's and drop or reject a port: what a host firewall adds.

Read from a node's own dumps: `iptables-save` (every table) and `nft -j list ruleset`.
kube-proxy's chains (KUBE-*) and its nftables table are skipped: the auditor reads those.
With the nf_tables backend, iptables' tables also show in the nft ruleset; they are read
from iptables-save only, so each rule is named once, in the syntax it was written in.
"""

from __future__ import annotations

import contextlib
import json
import shlex
from typing import Any

IPTABLES_TABLES = {"filter", "nat", "raw", "mangle", "security"}
KUBE_PROXY_NFT_TABLE = "kube-proxy"


def _port_in(spec: str, port: int) -> bool:
    """'30080', '30000:32767' or '80,30080,9000:9100' (iptables' port syntax)."""
    for part in spec.split(","):
        low, _, high = part.partition(":")
        if low and int(low) <= port <= int(high or low):
            return True
    return False


def _options(words: list[str]) -> dict[str, tuple[str, bool]]:
    """`-p tcp -m tcp ! --dport 22 -j DROP` -> {"-p": ("tcp", False), "--dport": ("22",
    True), ...}: each option's value and whether it is negated."""
    out: dict[str, tuple[str, bool]] = {}
    for i, word in enumerate(words[:-1]):
        if word.startswith("-"):
            out.setdefault(word, (words[i + 1], i > 0 and words[i - 1] == "!"))
    return out


def iptables_drops(text: str, port: int, protocol: str) -> list[str]:
    """Each `-A` rule outside KUBE-* chains that drops or rejects `protocol`/`port`
    (`--dport`, `--dports` lists and ranges, negated ones included)."""
    found, table = [], ""
    for line in text.splitlines():
        if line.startswith("*"):
            table = line[1:].strip()
            continue
        if not line.startswith("-A "):
            continue
        words = shlex.split(line)
        if words[1].startswith("KUBE-"):
            continue
        args = _options(words[2:])
        if args.get("-j", ("", False))[0] not in ("DROP", "REJECT"):
            continue
        if args.get("-p", (protocol, False))[0].lower() != protocol:
            continue
        spec = args.get("--dport") or args.get("--dports") or args.get("--destination-port")
        if spec and _port_in(spec[0], port) != spec[1]:
            found.append(f"iptables -t {table} {line}")
    return found


def _nft_port_matches(right: Any, port: int) -> bool:
    if isinstance(right, int):
        return right == port
    if isinstance(right, dict) and "range" in right:
        low, high = right["range"]
        return int(low) <= port <= int(high)
    if isinstance(right, dict) and "set" in right:
        return any(_nft_port_matches(item, port) for item in right["set"])
    return False


def nft_drops(doc: dict[str, Any], port: int, protocol: str) -> list[str]:
    """Each rule of `nft -j list ruleset` outside kube-proxy's and iptables' tables that
    matches `protocol` dport `port` and drops or rejects."""
    found = []
    for item in doc.get("nftables", []):
        rule = item.get("rule")
        if not rule:
            continue
        family, table = rule.get("family"), rule.get("table")
        if table == KUBE_PROXY_NFT_TABLE or (family in ("ip", "ip6") and table in IPTABLES_TABLES):
            continue
        exprs = rule.get("expr", [])
        verdict = next((k for e in exprs for k in e if k in ("drop", "reject")), None)
        if verdict is None:
            continue
        for e in exprs:
            match = e.get("match", {})
            left = match.get("left", {}).get("payload", {})
            if (left.get("protocol"), left.get("field")) != (protocol, "dport"):
                continue
            hit = _nft_port_matches(match["right"], port)
            if hit == (match.get("op", "==") in ("==", "in")):
                where = f"{family} {table} {rule.get('chain')} (handle {rule.get('handle')})"
                found.append(f"nft rule in {where}: {protocol} dport {port} {verdict}")
    return found


def foreign_drops(iptables_save: str, nft_json: str, port: int, protocol: str) -> list[str]:
    """Both dumps of one node; a dump that could not be read is skipped."""
    found = iptables_drops(iptables_save, port, protocol.lower())
    with contextlib.suppress(ValueError):  # no nft, or no ruleset: nothing to read
        found += nft_drops(json.loads(nft_json), port, protocol.lower())
    return found
