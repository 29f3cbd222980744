"""ForwardingTable from kube-proxy's nftables mode: `nft -j list ruleset` (JSON) and the
plain text of `nft list ruleset` / `nft list table ip kube-proxy` (what people paste).

Both are first brought to the same facts per rule (verdict, numgen targets, DNAT target,
source matches), then read the same way: `service-ips` / `service-nodeports` elements give
the frontends, their chains give masquerading, affinity, endpoints and, for policy Local,
the pod and node sources short-circuited to the cluster-wide endpoints;
`no-endpoint-services` / `no-endpoint-nodeports` give REJECT (goto reject-chain) or DROP
for the frontend they belong to; `firewall-ips` marks LoadBalancer IPs with
loadBalancerSourceRanges, whose `firewall-` chain lists the ranges.

Layouts read: kube-proxy 1.29-1.30 (`endpoints-check`), 1.31-1.35 (`cluster-ips` set,
`service-endpoints-check`, `cluster-ips-check`) and 1.36 (`filter-*-pre-dnat` base
chains). The frontends are read from the maps and service chains, which all of them share;
the `cluster-ips` set, where present, tells a cluster IP without endpoints from an
external one. Without `firewall-ips` entries an nftables dump does not say whether an
external address is an external IP or a LoadBalancer IP: such frontends are "external".
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

from kubelab.rules.nft import NftRule, load_nft_json
from kubelab.rules.table import NODE_SOURCE, ForwardingTable, Frontend, service_ranges

TABLE = "kube-proxy"


@dataclass(frozen=True)
class Facts:
    verdict: tuple[str, str] | None  # ("jump"|"goto", chain)
    numgen: tuple[str, ...] | None  # endpoint chains by key
    dnat: str | None
    conditional: bool
    masq_offcluster: bool  # "ip saddr != CIDR jump mark-for-masquerade"
    affinity_set: str | None  # "ip saddr @affinity-X goto endpoint-X"
    fib_local: bool = False  # "fib saddr type local"
    saddr: tuple[str, ...] = ()  # "ip saddr 10.0.0.0/8": the addresses or prefixes matched
    saddr_not: tuple[str, ...] = ()  # "ip saddr != { ... }"
    drop: bool = False


@dataclass
class Dump:
    chains: dict[str, list[Facts]] = field(default_factory=dict)
    # map name -> [(key tokens, verdict text, comment)]
    maps: dict[str, list[tuple[tuple[str, ...], str, str | None]]] = field(default_factory=dict)
    set_timeouts: dict[str, int | None] = field(default_factory=dict)
    set_elements: dict[str, list[str]] = field(default_factory=dict)


# --- from JSON ----------------------------------------------------------------------------------


def _json_value(v: Any) -> str:
    if isinstance(v, dict) and "prefix" in v:
        return f"{v['prefix']['addr']}/{v['prefix']['len']}"
    return str(v)


def _json_values(v: Any) -> tuple[str, ...]:
    """A match's right-hand side: one value, or an anonymous set of them."""
    if isinstance(v, dict) and "set" in v:
        return tuple(_json_value(x) for x in v["set"])
    return (_json_value(v),)


def _facts_from_json(rule: NftRule) -> Facts:
    masq = False
    affinity = None
    fib = False
    saddr: tuple[str, ...] = ()
    saddr_not: tuple[str, ...] = ()
    for m in rule.matches:
        left, right = m.get("left", {}), m.get("right")
        if isinstance(left, dict) and "fib" in left:
            fib = True
        on_saddr = isinstance(left, dict) and left.get("payload", {}).get("field") == "saddr"
        if on_saddr and isinstance(right, str) and right.startswith("@"):
            affinity = right[1:]
        elif on_saddr and m.get("op") == "!=":
            masq = True
            saddr_not = _json_values(right)
        elif on_saddr and m.get("op") in ("==", "in"):
            saddr = _json_values(right)
    verdict = rule.verdict()
    targets = rule.numgen_targets()
    return Facts(
        verdict,
        tuple(targets) if targets is not None else None,
        rule.dnat(),
        bool(rule.matches),
        masq and verdict == ("jump", "mark-for-masquerade"),
        affinity,
        fib,
        saddr,
        saddr_not,
        any("drop" in e for e in rule.expr),
    )


def _key_tokens(key: Any) -> tuple[tuple[str, ...], str | None]:
    comment = None
    if isinstance(key, dict) and "elem" in key:
        comment = key["elem"].get("comment")
        key = key["elem"]["val"]
    if isinstance(key, dict) and "concat" in key:
        return tuple(_json_value(k) for k in key["concat"]), comment
    return (_json_value(key),), comment


def _verdict_text(value: Any) -> str:
    if isinstance(value, dict):
        ((kind, arg),) = value.items()
        return f"{kind} {arg['target']}" if isinstance(arg, dict) else kind
    return str(value)


def dump_from_json(text: str) -> Dump:
    raw = load_nft_json(text, TABLE)
    dump = Dump()
    for name, rules in raw.chains.items():
        dump.chains[name] = [_facts_from_json(r) for r in rules]
    for name, elems in raw.maps.items():
        out = []
        for key, value in elems:
            tokens, comment = _key_tokens(key)
            out.append((tokens, _verdict_text(value), comment))
        dump.maps[name] = out
    for name, obj in raw.sets.items():
        timeout = obj.get("timeout")
        dump.set_timeouts[name] = int(timeout) if isinstance(timeout, int) else None
        dump.set_elements[name] = [
            _json_value(e["elem"]["val"] if isinstance(e, dict) and "elem" in e else e)
            for e in obj.get("elem", [])
        ]
    return dump


# --- from text ----------------------------------------------------------------------------------

_VERDICT = re.compile(r"\b(jump|goto)\s+(\S+?)(?:\s+comment\s+\".*\")?\s*$")
_NUMGEN = re.compile(r"numgen\s+random\s+mod\s+\d+\s+vmap\s+\{(.*)\}")
_DNAT = re.compile(r"\bdnat\s+(?:ip\s+)?to\s+(\S+)")
_AFFINITY = re.compile(r"ip\s+saddr\s+@(\S+)\s+goto\s+")
_COMMENT = re.compile(r'\s*comment\s+"[^"]*"')
_SADDR = re.compile(r"\bip\s+saddr\s+(?!!=|@)(\{[^}]*\}|\S+)")
_SADDR_NOT = re.compile(r"\bip\s+saddr\s+!=\s+(\{[^}]*\}|\S+)")


def _text_values(text: str) -> tuple[str, ...]:
    return tuple(v.strip() for v in text.strip("{} ").split(",") if v.strip())


def _facts_from_text(rule: str) -> Facts:
    bare = _COMMENT.sub("", rule).strip()
    numgen = _NUMGEN.search(bare)
    targets = None
    if numgen:
        pairs = re.findall(r"(\d+)\s*:\s*goto\s+([^\s,}]+)", numgen.group(1))
        targets = tuple(t for _, t in sorted(pairs, key=lambda p: int(p[0])))
    verdict_match = None if numgen else _VERDICT.search(bare)
    verdict = (verdict_match.group(1), verdict_match.group(2)) if verdict_match else None
    conditional = not re.match(r"^(jump|goto)\s", bare)
    dnat = _DNAT.search(bare)
    affinity = _AFFINITY.search(bare)
    masq = "saddr !=" in bare and verdict == ("jump", "mark-for-masquerade")
    saddr = _SADDR.search(bare)
    saddr_not = _SADDR_NOT.search(bare)
    return Facts(
        verdict,
        targets,
        dnat.group(1) if dnat else None,
        conditional,
        masq,
        affinity.group(1) if affinity else None,
        "fib saddr type local" in bare,
        _text_values(saddr.group(1)) if saddr else (),
        _text_values(saddr_not.group(1)) if saddr_not else (),
        bool(re.search(r"\bdrop$", bare)),
    )


def _blocks(body: str) -> list[tuple[str, str, str]]:
    """Top-level `chain|map|set NAME { ... }` blocks of a table body, braces balanced."""
    out = []
    pos = 0
    header = re.compile(r"\b(chain|map|set)\s+(\S+)\s*\{")
    while (m := header.search(body, pos)) is not None:
        depth, i = 1, m.end()
        while i < len(body) and depth:
            depth += {"{": 1, "}": -1}.get(body[i], 0)
            i += 1
        out.append((m.group(1), m.group(2), body[m.end() : i - 1]))
        pos = i
    return out


def _timeout_seconds(text: str) -> int | None:
    m = re.search(r"\btimeout\s+((?:\d+[dhms])+)", text)
    if not m:
        return None
    units = {"d": 86400, "h": 3600, "m": 60, "s": 1}
    return sum(int(n) * units[u] for n, u in re.findall(r"(\d+)([dhms])", m.group(1)))


def _rule_lines(body: str) -> list[str]:
    """One rule per line, joining lines whose braces are still open."""
    out: list[str] = []
    pending = ""
    for raw in body.splitlines():
        line = raw.strip()
        if not line:
            continue
        pending = f"{pending} {line}".strip() if pending else line
        if pending.count("{") > pending.count("}"):
            continue
        out.append(pending)
        pending = ""
    return out


def dump_from_text(text: str) -> Dump:
    m = re.search(r"table\s+ip\s+kube-proxy\s*\{", text)
    if m is None:
        raise ValueError("no `table ip kube-proxy` in this nftables dump")
    dump = Dump()
    body = text[m.end() :]
    for kind, name, block in _blocks(body):
        if kind == "chain":
            rules = [
                line
                for line in _rule_lines(block)
                if not re.match(r"^(type\s|policy\s|comment\s|devices\s)", line)
            ]
            dump.chains[name] = [_facts_from_text(r) for r in rules]
        elif kind == "set":
            dump.set_timeouts[name] = _timeout_seconds(block)
            elems = re.search(r"elements\s*=\s*\{(.*?)\}", block, re.S)
            dump.set_elements[name] = list(_text_values(elems.group(1))) if elems else []
        else:
            elems = re.search(r"elements\s*=\s*\{(.*)\}", block, re.S)
            entries = []
            for item in elems.group(1).split(",") if elems else []:
                item = " ".join(item.split())
                if ":" not in item:
                    continue
                key, _, verdict = item.rpartition(" : ")
                comment = re.search(r'comment\s+"([^"]*)"', key)
                key = _COMMENT.sub("", key)
                entries.append(
                    (
                        tuple(t.strip() for t in key.split(" . ")),
                        verdict.strip(),
                        comment.group(1) if comment else None,
                    )
                )
            dump.maps[name] = entries
    return dump


# --- reading ------------------------------------------------------------------------------------


def service_from_chain(chain: str) -> str | None:
    """'service-ULMVA6XW-ns1/svc1/tcp/p80' -> 'ns1/svc1:p80'."""
    m = re.match(
        r"^(?:service|local|external|firewall)-[A-Z0-9]{8}-([^/]+)/([^/]+)/[^/]+/(.*)$", chain
    )
    if not m:
        return None
    ns, name, port = m.groups()
    return f"{ns}/{name}:{port}" if port else f"{ns}/{name}"


ServiceKey = tuple[str, str, int]  # (address, protocol, port)


class NftReader:
    def __init__(self, dump: Dump) -> None:
        self.dump = dump
        self.table = ForwardingTable("nftables")
        # the cluster-ips set (kube-proxy 1.31 on): None where the layout has none
        self.cluster_ips: set[str] | None = (
            set(dump.set_elements["cluster-ips"]) if "cluster-ips" in dump.set_elements else None
        )
        self.firewalls: dict[ServiceKey, str] = {}
        for tokens, verdict, _comment in dump.maps.get("firewall-ips", []):
            if len(tokens) == 3:
                self.firewalls[(tokens[0], tokens[1], int(tokens[2]))] = verdict.split()[-1]

    def _external_kind(self, key: ServiceKey) -> str:
        return "loadbalancer" if key in self.firewalls else "external"

    def read(self) -> ForwardingTable:
        for tokens, verdict, _comment in self.dump.maps.get("service-ips", []):
            if len(tokens) != 3:
                continue
            key = (tokens[0], tokens[1], int(tokens[2]))
            target = verdict.split()[-1]
            kind = self._external_kind(key) if target.startswith("external-") else "clusterip"
            front = self.table.add(
                Frontend(kind, key[0], key[2], key[1], service_from_chain(target))
            )
            self._follow(target, front)
            if kind == "loadbalancer":
                self._firewall(self.firewalls[key], front)
        for tokens, verdict, _comment in self.dump.maps.get("service-nodeports", []):
            if len(tokens) != 2:
                continue
            proto, port = tokens
            target = verdict.split()[-1]
            front = self.table.add(
                Frontend("nodeport", None, int(port), proto, service_from_chain(target))
            )
            self._follow(target, front)
        self._no_endpoint_entries()
        for f in self.table.frontends:
            if f.kind != "clusterip":
                f.masquerade_offcluster = bool(f.masquerade_all)
            elif f.masquerade_offcluster is None:
                f.masquerade_offcluster = False
        self.table.sort()
        return self.table

    def _no_endpoint_entries(self) -> None:
        """REJECT (no endpoints at all) or DROP (no endpoints for this traffic) entries,
        merged into the frontend they belong to; where there is none, one is made of the
        kind the dump shows."""
        by_address = {
            (f.vip, f.protocol, f.port): f for f in self.table.frontends if f.kind != "nodeport"
        }
        ambiguous: set[str] = set()
        for map_name in ("no-endpoint-services", "no-endpoint-nodeports"):
            for tokens, verdict, comment in self.dump.maps.get(map_name, []):
                if map_name == "no-endpoint-nodeports" and len(tokens) == 2:
                    front = self.table.add(
                        Frontend("nodeport", None, int(tokens[1]), tokens[0], comment)
                    )
                elif map_name == "no-endpoint-services" and len(tokens) == 3:
                    key = (tokens[0], tokens[1], int(tokens[2]))
                    front = by_address.get(key) or self.table.add(
                        Frontend(self._unserved_kind(key, comment, ambiguous), *_args(key, comment))
                    )
                else:
                    continue
                front.no_endpoints = "reject" if "reject" in verdict else "drop"
                if front.no_endpoints == "drop":
                    front.local_only = True
        for name in sorted(ambiguous):
            self.table.warnings.append(
                f"{name}: several addresses without endpoints, and this layout has no "
                "cluster-ips set to say which is the cluster IP; all are read as clusterip"
            )

    def _unserved_kind(self, key: ServiceKey, comment: str | None, ambiguous: set[str]) -> str:
        if self.cluster_ips is not None:
            return "clusterip" if key[0] in self.cluster_ips else self._external_kind(key)
        if key in self.firewalls:
            return "loadbalancer"
        entries = [t for t, _, c in self.dump.maps.get("no-endpoint-services", []) if c == comment]
        if comment and len(entries) > 1:
            ambiguous.add(comment)
        return "clusterip"

    def _rules(self, chain: str, front: Frontend) -> list[Facts] | None:
        if chain not in self.dump.chains:
            self.table.warnings.append(
                f"{front.label()}: goes to chain {chain}, which the dump never defines"
            )
            return None
        return self.dump.chains[chain]

    def _firewall(self, chain: str, front: Frontend) -> None:
        """`ip saddr != { ranges } drop`: the loadBalancerSourceRanges."""
        for r in self._rules(chain, front) or []:
            if r.drop and r.saddr_not:
                front.source_ranges = service_ranges(front, list(r.saddr_not))

    def _follow(self, chain: str, front: Frontend, depth: int = 0) -> None:
        rules = self._rules(chain, front)
        if rules is None or depth > 4:
            return
        if chain.startswith("external-"):
            self._external(rules, front, depth)
            return
        for r in rules:
            if r.masq_offcluster:
                front.masquerade_offcluster = True
            if r.affinity_set:
                front.affinity_seconds = self.dump.set_timeouts.get(r.affinity_set)
            if r.numgen is not None:
                for ep_chain in r.numgen:
                    front.endpoints.append(self._dnat(ep_chain, front) or "?")
                n = len(r.numgen)
                front.weights = [1.0 / n] * n
        if not front.endpoints:
            self.table.warnings.append(
                f"{front.label()}: service chain {chain} reaches no endpoint"
            )

    def _external(self, rules: list[Facts], front: Frontend, depth: int) -> None:
        """`external-` chain: masquerade (policy Cluster), or for policy Local the pod and
        node short-circuits to the cluster-wide chain, then the policy chain (none when
        this node has no local endpoint: the no-endpoint maps drop what is left)."""
        front.masquerade_all = any(
            r.verdict == ("jump", "mark-for-masquerade") and not r.conditional for r in rules
        )
        for r in rules:
            if not (r.conditional and r.verdict and r.verdict[0] == "goto"):
                continue
            sources = list(r.saddr) if r.saddr else [NODE_SOURCE] if r.fib_local else []
            if not sources:
                continue
            front.local_only = True
            first = not front.short_circuit_sources
            front.short_circuit_sources += sources
            if first:
                cluster = Frontend(front.kind, front.vip, front.port, front.protocol, front.service)
                self._follow(r.verdict[1], cluster, depth + 1)
                front.short_circuit_endpoints = cluster.endpoints
        final = next(
            (
                r
                for r in reversed(rules)
                if not r.conditional and r.verdict and r.verdict[0] == "goto"
            ),
            None,
        )
        if final is None or final.verdict is None:
            return
        if final.verdict[1].startswith("local-"):
            front.local_only = True
        self._follow(final.verdict[1], front, depth + 1)

    def _dnat(self, chain: str, front: Frontend) -> str | None:
        rules = self._rules(chain, front)
        for r in rules or []:
            if r.dnat:
                return r.dnat
        if rules is not None:
            self.table.warnings.append(f"{front.label()}: endpoint chain {chain} has no DNAT")
        return None


def _args(key: ServiceKey, comment: str | None) -> tuple[str, int, str, str | None]:
    """Frontend's (vip, port, protocol, service) for a map key."""
    return key[0], key[2], key[1], comment


def read_nftables(text: str) -> ForwardingTable:
    stripped = text.lstrip()
    dump = dump_from_json(text) if stripped.startswith("{") else dump_from_text(text)
    return NftReader(dump).read()


def looks_like_json(text: str) -> bool:
    try:
        return "nftables" in json.loads(text)
    except ValueError:
        return False
