"""Read `nft -j list ruleset` (nftables' JSON) into chains, rules, maps and sets.

Pure functions over the JSON document; the rules keep nft's expression lists, with helpers
for what kube-proxy's layout uses: verdicts (jump/goto), `numgen ... vmap` targets,
whether a rule matches anything, DNAT targets, comments.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class NftRule:
    chain: str
    expr: tuple[dict[str, Any], ...]
    comment: str | None = None

    def verdict(self) -> tuple[str, str] | None:
        """The rule's own jump or goto, e.g. ("jump", "mark-for-masquerade")."""
        for e in self.expr:
            for kind in ("jump", "goto"):
                if kind in e:
                    return kind, e[kind]["target"]
        return None

    @property
    def matches(self) -> list[dict[str, Any]]:
        return [e["match"] for e in self.expr if "match" in e]

    @property
    def unconditional(self) -> bool:
        return not self.matches

    def numgen_targets(self) -> list[str] | None:
        """For `numgen random mod N vmap { 0 : goto A, ... }`: the targets by key, else None."""
        for e in self.expr:
            vmap = e.get("vmap")
            if vmap and "numgen" in vmap.get("key", {}):
                pairs = sorted(vmap["data"]["set"], key=lambda kv: kv[0])
                return [next(iter(v.values()))["target"] for _, v in pairs]
        return None

    def dnat(self) -> str | None:
        """The `dnat to ip:port` target, as "ip:port"."""
        for e in self.expr:
            if "dnat" in e:
                d = e["dnat"]
                return f"{d['addr']}:{d['port']}" if "port" in d else str(d["addr"])
        return None


@dataclass
class NftDump:
    chains: dict[str, list[NftRule]] = field(default_factory=dict)
    maps: dict[str, list[tuple[Any, Any]]] = field(default_factory=dict)
    sets: dict[str, dict[str, Any]] = field(default_factory=dict)

    def rules(self, chain: str) -> list[NftRule]:
        return self.chains.get(chain, [])


def load_nft_json(text: str, table: str = "kube-proxy", family: str = "ip") -> NftDump:
    """The objects of one table from `nft -j list ruleset` (or `list table`) output."""
    doc = json.loads(text)
    dump = NftDump()
    for item in doc.get("nftables", []):
        ((kind, obj),) = item.items()
        if not isinstance(obj, dict) or obj.get("table") != table or obj.get("family") != family:
            continue
        if kind == "chain":
            dump.chains.setdefault(obj["name"], [])
        elif kind == "rule":
            rule = NftRule(obj["chain"], tuple(obj.get("expr", [])), obj.get("comment"))
            dump.chains.setdefault(obj["chain"], []).append(rule)
        elif kind == "map":
            dump.maps[obj["name"]] = [tuple(e) for e in obj.get("elem", [])]
        elif kind == "set":
            dump.sets[obj["name"]] = obj
    return dump
