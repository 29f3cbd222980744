"""Trace a packet through `table ip kube-proxy` of an nft dump (text or JSON).

The table's base chains run in the kernel's order: a packet from this node (its source is
a node address) passes the output hook's chains by priority; any other passes the
prerouting chains, then the input chains if its destination (after DNAT) is the node's, the
forward chains if not. So a filter chain before the DNAT priority sees the Service address,
one after it sees the endpoint, whatever the layout (1.29's `filter-output` at -110 drops
what 1.36's `filter-output` at 0 lets through). Rules are read into one small vocabulary,
kube-proxy's: address, protocol, port, `fib ... type local` and `ct state` matches, verdict
maps over `ip daddr . meta l4proto . th dport`, `numgen random mod N vmap` (each endpoint
its 1/N share), jump/goto/return, accept/drop/reject, `dnat to`, the masquerade mark.
`ip saddr @affinity-...` does not match a first connection. A rule with something else in
it is named in the notes and taken as no match.
"""

from __future__ import annotations

import json
import re
import shlex
from dataclasses import dataclass, field
from typing import Any

from kubelab.rules.nft_table import Dump, _blocks, _rule_lines, dump_from_json, dump_from_text
from kubelab.rules.trace import (
    Branch,
    Outcome,
    Packet,
    Trace,
    conclude,
    in_network,
    is_local,
    local_addresses,
)

TABLE = "kube-proxy"
PRIORITIES = {"raw": -300, "mangle": -150, "dstnat": -100, "filter": 0, "security": 50,
              "srcnat": 100}  # fmt: skip
MAX_DEPTH = 12
Term = tuple[Any, ...]  # ("match", field, negate, values) | ("vmap", fields, target) | ...


@dataclass
class BaseChain:
    name: str
    hook: str
    priority: int


@dataclass
class Table:
    chains: dict[str, list[list[Term]]] = field(default_factory=dict)
    base: list[BaseChain] = field(default_factory=list)
    maps: dict[str, dict[tuple[str, ...], tuple[str, str | None]]] = field(default_factory=dict)
    sets: dict[str, list[str]] = field(default_factory=dict)


# --- text ------------------------------------------------------------------------------------


def _priority(text: str) -> int:
    """`dstnat`, `dstnat - 10`, `filter`, `-110`."""
    m = re.match(r"^\s*([a-z]+)?\s*(?:([+-])\s*(\d+))?\s*$", text)
    if m and m.group(1):
        base = PRIORITIES.get(m.group(1), 0)
        delta = int(m.group(3) or 0) * (-1 if m.group(2) == "-" else 1)
        return base + delta
    return int(text.replace(" ", ""))


def _values(tokens: list[str], i: int) -> tuple[list[str], int]:
    """One value, or a `{ a, b }` set, at tokens[i]."""
    if tokens[i] != "{":
        return [tokens[i]], i + 1
    end = tokens.index("}", i)
    return [t for t in tokens[i + 1 : end] if t != ","], end + 1


FIELDS = {("ip", "saddr"): "saddr", ("ip", "daddr"): "daddr", ("meta", "l4proto"): "l4proto",
          ("th", "dport"): "dport", ("tcp", "dport"): "dport", ("udp", "dport"): "dport",
          ("sctp", "dport"): "dport"}  # fmt: skip


def text_terms(rule: str) -> list[Term] | None:
    """A rule of `nft list ruleset` as terms, or None if a part is outside the vocabulary."""
    rule = re.sub(r'\s*comment\s+"[^"]*"', "", rule)
    try:
        t = shlex.split(rule.replace("{", " { ").replace("}", " } ").replace(",", " , "))
    except ValueError:
        return None
    out: list[Term] = []
    i = 0
    try:
        while i < len(t):
            pair = (t[i], t[i + 1] if i + 1 < len(t) else "")
            if pair in FIELDS and "." in t[i + 2 : i + 3]:  # a concatenation: a vmap key
                keys = []
                while i < len(t) and (t[i], t[i + 1]) in FIELDS:
                    keys.append(FIELDS[(t[i], t[i + 1])])
                    i += 2
                    if t[i] == ".":
                        i += 1
                if t[i] != "vmap":
                    return None
                out.append(("vmap", tuple(keys), t[i + 1]))
                i += 2
            elif pair in FIELDS:
                name, i = FIELDS[pair], i + 2
                negate = t[i] == "!="
                if t[i] in ("!=", "=="):
                    i += 1
                if pair[0] in ("tcp", "udp", "sctp"):
                    out.append(("match", "l4proto", False, [pair[0]]))
                if t[i] == "vmap":
                    out.append(("vmap", (name,), t[i + 1]))
                    i += 2
                    continue
                values, i = _values(t, i)
                out.append(("match", name, negate, values))
            elif t[i] == "fib" and t[i + 2 : i + 3] == ["type"]:
                negate = t[i + 3] == "!="
                where = t[i + 4] if negate else t[i + 3]
                out.append(("match", f"fib_{t[i + 1]}_{where}", negate, ["true"]))
                i += 5 if negate else 4
            elif pair == ("ct", "state"):
                values, i = _values(t, i + 2)
                out.append(("match", "ct_state", False, values))
            elif t[i] == "numgen" and t[i + 1 : i + 3] == ["random", "mod"]:
                end = t.index("}", i)
                items = " ".join(t[i + 6 : end]).split(",")
                picks = []
                for item in items:
                    key, _, verdict = item.strip().partition(" : ")
                    verb, _, chain = verdict.partition(" ")
                    picks.append((int(key), verb, chain or None))
                out.append(("numgen", int(t[i + 3]), sorted(picks)))
                i = end + 1
            elif t[i] in ("jump", "goto"):
                out.append(("verdict", t[i], t[i + 1]))
                i += 2
            elif t[i] in ("return", "accept", "drop", "reject"):
                out.append(("verdict", t[i], None))
                i += 1
                if t[i - 1] == "reject" and t[i : i + 1] == ["with"]:
                    i = len(t)
            elif t[i] == "dnat":
                i += 1
                if t[i] == "ip":
                    i += 1
                out.append(("dnat", t[i + 1]))
                i += 2
            elif t[i : i + 2] in (["meta", "mark"], ["mark", "set"]) and "set" in t[i : i + 3]:
                out.append(("mark",))
                i = len(t)
            elif t[i] == "counter":
                i += 5 if t[i + 1 : i + 2] == ["packets"] else 1
            elif t[i] == "update":
                i = t.index("}", i) + 1
            elif t[i] == "masquerade":
                i = len(t)  # what follows is its options
            else:
                return None
    except (IndexError, ValueError):
        return None
    return out


def table_from_text(text: str) -> Table:
    m = re.search(r"table\s+ip\s+kube-proxy\s*\{", text)
    if m is None:
        raise ValueError("no `table ip kube-proxy` in this nftables dump")
    table = Table()
    for kind, name, block in _blocks(text[m.end() :]):
        if kind == "chain":
            rules = []
            for line in _rule_lines(block):
                hook = re.match(r"type\s+\S+\s+hook\s+(\S+)\s+priority\s+([^;]+);", line)
                if hook:
                    table.base.append(BaseChain(name, hook.group(1), _priority(hook.group(2))))
                    continue
                if re.match(r"^(policy\s|comment\s|devices\s)", line):
                    continue
                terms = text_terms(line)
                rules.append(terms if terms is not None else [("unknown",)])
            table.chains[name] = rules
    _maps_and_sets(dump_from_text(text), table)
    return table


def _maps_and_sets(dump: Dump, table: Table) -> None:
    """Map elements and set members as the auditor reads them (nft_table.py)."""
    for name, entries in dump.maps.items():
        table.maps[name] = {}
        for tokens, verdict, _comment in entries:
            verb, _, chain = verdict.partition(" ")
            table.maps[name][tokens] = (verb, chain or None)
    table.sets.update(dump.set_elements)


# --- JSON ------------------------------------------------------------------------------------


def _json_value(v: Any) -> list[str]:
    if isinstance(v, dict) and "set" in v:
        return [x for item in v["set"] for x in _json_value(item)]
    if isinstance(v, dict) and "prefix" in v:
        return [f"{v['prefix']['addr']}/{v['prefix']['len']}"]
    if isinstance(v, dict) and "range" in v:
        return [f"{v['range'][0]}-{v['range'][1]}"]
    return [str(v)]


def _json_field(left: Any) -> str | None:
    if not isinstance(left, dict):
        return None
    if "payload" in left:
        field_name = left["payload"].get("field")
        return {"saddr": "saddr", "daddr": "daddr", "dport": "dport"}.get(field_name)
    if "meta" in left and left["meta"].get("key") == "l4proto":
        return "l4proto"
    if "fib" in left:
        return f"fib_{left['fib']['flags'][0]}"
    if "ct" in left and left["ct"].get("key") == "state":
        return "ct_state"
    return None


def json_terms(expr: list[dict[str, Any]]) -> list[Term] | None:
    out: list[Term] = []
    for e in expr:
        ((kind, arg),) = e.items()
        if kind == "match":
            name = _json_field(arg["left"])
            if name is None:
                return None
            negate = arg.get("op") == "!="
            right = arg["right"]
            if name.startswith("fib_"):
                out.append(("match", f"{name}_{right}", negate, ["true"]))
            elif isinstance(right, str) and right.startswith("@"):
                out.append(("match", name, negate, [right]))
            else:
                out.append(("match", name, negate, _json_value(right)))
        elif kind == "vmap":
            key = arg["key"]
            if "numgen" in key:
                picks = []
                for k, v in arg["data"]["set"]:
                    ((verb, target),) = v.items()
                    picks.append((int(k), verb, target["target"] if target else None))
                out.append(("numgen", key["numgen"]["mod"], sorted(picks)))
                continue
            parts = key.get("concat", [key])
            fields = tuple(_json_field(p) for p in parts)
            if None in fields:
                return None
            out.append(("vmap", fields, arg["data"]))
        elif kind in ("jump", "goto"):
            out.append(("verdict", kind, arg["target"]))
        elif kind in ("return", "accept", "drop", "reject"):
            out.append(("verdict", kind, None))
        elif kind == "dnat":
            out.append(("dnat", f"{arg['addr']}:{arg['port']}" if "port" in arg else arg["addr"]))
        elif kind == "mangle" and arg.get("key", {}).get("meta", {}).get("key") == "mark":
            out.append(("mark",))
        elif kind in ("masquerade", "counter", "set", "dynset"):
            continue
        else:
            return None
    return out


def table_from_json(text: str) -> Table:
    doc = json.loads(text)
    table = Table()
    for item in doc.get("nftables", []):
        ((kind, obj),) = item.items()
        if not isinstance(obj, dict) or obj.get("table") != TABLE or obj.get("family") != "ip":
            continue
        if kind == "chain":
            table.chains.setdefault(obj["name"], [])
            if "hook" in obj:
                table.base.append(BaseChain(obj["name"], obj["hook"], int(obj.get("prio", 0))))
        elif kind == "rule":
            terms = json_terms(obj.get("expr", []))
            table.chains.setdefault(obj["chain"], []).append(
                terms if terms is not None else [("unknown",)]
            )
    _maps_and_sets(dump_from_json(text), table)
    return table


# --- the walk --------------------------------------------------------------------------------

Ends = list[tuple[Branch, str]]


class NftTracer:
    def __init__(self, table: Table, node_addresses: set[str]) -> None:
        self.table = table
        self.node = local_addresses(node_addresses)
        self.notes: set[str] = set()

    def trace(self, packet: Packet) -> Trace:
        local_source = is_local(packet.src, self.node)
        first = ["output"] if local_source else ["prerouting"]
        branches: Ends = [(Branch(packet), "continue")]
        branches = self._hooks(branches, first)
        after: Ends = []
        for b, v in branches:
            if v != "continue":
                after.append((b, v))
                continue
            if local_source:
                after.append((b, v))
            else:
                hook = "input" if is_local(b.packet.dst, self.node) else "forward"
                after += self._hooks([(b, v)], [hook])
        ends: list[tuple[Branch, Outcome]] = []
        for b, v in after:
            if v in ("drop", "reject"):
                ends.append((b, v))  # type: ignore[arg-type]
            else:
                ends.append((b, "dnat" if b.dnat else "none"))
        trace = conclude(packet, "nftables", ends)
        trace.notes += sorted(self.notes)
        return trace

    def _hooks(self, branches: Ends, hooks: list[str]) -> Ends:
        chains = sorted((c for c in self.table.base if c.hook in hooks), key=lambda c: c.priority)
        for base in chains:
            nxt: Ends = []
            for b, v in branches:
                if v != "continue":
                    nxt.append((b, v))
                    continue
                for b2, v2 in self._chain(base.name, b, 0):
                    # accept ends this base chain only; the next one still runs
                    nxt.append((b2, v2 if v2 in ("drop", "reject") else "continue"))
            branches = nxt
        return branches

    def _chain(self, name: str, branch: Branch, depth: int) -> Ends:
        """The branches leaving chain `name`: "return" when they fell off its end (or
        returned), else their verdict (accept, drop, reject, dnat)."""
        if depth > MAX_DEPTH:
            self.notes.add(f"stopped following at {name}: chains nest deeper than {MAX_DEPTH}")
            return [(branch, "return")]
        return self._rules(name, self.table.chains.get(name, []), 0, branch, depth)

    def _rules(
        self, chain: str, rules: list[list[Term]], i: int, branch: Branch, depth: int
    ) -> Ends:
        while i < len(rules):
            outcome = self._rule(chain, rules[i], branch, depth)
            if outcome is None:
                i += 1
                continue
            out: Ends = []
            for b, v in outcome:
                if v == "continue":
                    out += self._rules(chain, rules, i + 1, b, depth)
                else:
                    out.append((b, v))
            return out
        return [(branch, "return")]

    def _rule(self, chain: str, terms: list[Term], branch: Branch, depth: int) -> Ends | None:
        """None if the rule does not match; else its branches: "continue" with the next
        rule, "return" to the caller, or a final verdict."""
        p = branch.packet
        for term in terms:
            kind = term[0]
            if kind == "unknown":
                self.notes.add(f"{chain}: a rule the tracer does not read, taken as no match")
                return None
            if kind == "match":
                if not self._match(term[1], term[2], term[3], p):
                    return None
            elif kind == "mark":
                branch = branch.marked(chain)
            elif kind == "dnat":
                return [(branch.step(f"{chain}: dnat to {term[1]}").to(term[1]), "dnat")]
            elif kind == "vmap":
                key = tuple(self._field(f, p) for f in term[1])
                entry = self.table.maps.get(str(term[2]).lstrip("@"), {}).get(key)
                if entry is None:
                    return None
                verb, target = entry
                stepped = branch.step(f"{chain}: {' . '.join(key)} in @{str(term[2]).lstrip('@')}")
                return self._verdict(chain, verb, target, stepped, depth)
            elif kind == "numgen":
                picks = term[2]
                out: Ends = []
                for _, verb, target in picks:
                    share = branch.split(1.0 / term[1])
                    out += self._verdict(chain, verb, target, share, depth)
                return out
            elif kind == "verdict":
                return self._verdict(chain, term[1], term[2], branch, depth)
        return [(branch, "continue")]

    def _verdict(
        self, chain: str, verb: str, target: str | None, branch: Branch, depth: int
    ) -> Ends:
        if verb in ("accept", "drop", "reject"):
            return [(branch.step(f"{chain}: {verb}"), verb)]
        if verb == "return":
            return [(branch, "return")]
        share = f" share {branch.share:.4f}" if branch.share < 1.0 else ""
        stepped = branch.step(f"{chain} -> {verb} {target}{share}")
        out: Ends = []
        for b, v in self._chain(str(target), stepped, depth + 1):
            if v != "return":
                out.append((b, v))
            elif verb == "jump":
                out.append((b, "continue"))
            else:
                out.append((b, "return"))  # goto: back to the caller's caller
        return out

    @staticmethod
    def _field(name: str, p: Packet) -> str:
        return {"saddr": p.src, "daddr": p.dst, "l4proto": p.protocol, "dport": str(p.port)}[name]

    def _match(self, name: str, negate: bool, values: list[str], p: Packet) -> bool:
        if name.startswith("fib_"):
            _, where, kind = name.split("_", 2)
            address = p.src if where == "saddr" else p.dst
            hit = kind == "local" and is_local(address, self.node)
        elif name == "ct_state":
            hit = "new" in values
        elif values and values[0].startswith("@"):
            members = self.table.sets.get(values[0][1:])
            if members is None or values[0].startswith("@affinity-"):
                hit = False  # an affinity set: a first connection is in none
            else:
                hit = any(self._hit(name, m, p) for m in members)
        else:
            hit = any(self._hit(name, v, p) for v in values)
        return hit != negate

    def _hit(self, name: str, value: str, p: Packet) -> bool:
        if name in ("saddr", "daddr"):
            return in_network(p.src if name == "saddr" else p.dst, value)
        if name == "l4proto":
            return value == p.protocol
        if name == "dport":
            return value == str(p.port)
        return False


def trace_nft(text: str, packet: Packet, node_addresses: set[str]) -> Trace:
    table = table_from_json(text) if text.lstrip().startswith("{") else table_from_text(text)
    return NftTracer(table, node_addresses).trace(packet)
