"""ForwardingTable from iptables dumps: `iptables-save` (with or without counters, any
tables) and `iptables -S` / `iptables -t nat -S`, for every kube-proxy generation.

Layouts read:
- 1.1x-1.19: masquerade rule in KUBE-SERVICES (`! -s podCIDR ... -j KUBE-MARK-MASQ`),
  NodePort masquerade in KUBE-NODEPORTS, `KUBE-XLB-` chains for Local policy,
  `KUBE-MARK-DROP`, 5-decimal probabilities (0.33332999982).
- 1.20+: masquerade inside KUBE-SVC, `KUBE-EXT-`/`KUBE-SVL-`/`KUBE-FW-` chains,
  REJECT/DROP in filter KUBE-SERVICES / KUBE-EXTERNAL-SERVICES, 10-decimal probabilities.
- 1.27+: `KUBE-FW-` holds only the loadBalancerSourceRanges (`-s range -j KUBE-EXT-`), the
  rest is dropped by filter `KUBE-PROXY-FIREWALL`; `-> ip:port` endpoint comments.
- both: `-m recent` ClientIP affinity, unnamed ports ("ns/svc:" or "ns/svc").
Policy Local: the `KUBE-EXT-` short-circuits (pod CIDR, `--src-type LOCAL`) are read as the
sources that still reach the cluster-wide endpoints; a "has no local endpoints" DROP belongs
to the frontend of the same address, whatever its kind.
Rules of other owners (Docker, CNIs, libvirt, host port-forwards) are ignored.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from kubelab.rules.iptables_save import Rule, parse_rule
from kubelab.rules.table import (
    NODE_SOURCE,
    ForwardingTable,
    Frontend,
    effective_weights,
    service_ranges,
)

KINDS_BY_COMMENT = (
    (" cluster IP", "clusterip"),
    (" external IP", "externalip"),
    (" loadbalancer IP", "loadbalancer"),
)
SERVICE_CHAINS = ("KUBE-SVC-", "KUBE-SVL-", "KUBE-EXT-", "KUBE-FW-", "KUBE-XLB-")
COMMENT_SUFFIXES = re.compile(
    r"( cluster IP| external IP| loadbalancer IP| has no endpoints| has no local endpoints"
    r"| health check node port| -> \S+|:? ?\(?$)$"
)


@dataclass(frozen=True)
class LocatedRule:
    rule: Rule
    table: str
    line: int


def service_name(comment: str | None) -> str | None:
    """'default/kubernetes:https cluster IP' -> 'default/kubernetes:https';
    'default/hostnames: cluster IP' -> 'default/hostnames' (unnamed port, old format)."""
    if not comment or "/" not in comment:
        return None
    name = comment
    for marker in (
        " cluster IP",
        " external IP",
        " loadbalancer IP",
        " has no endpoints",
        " has no local endpoints",
        " health check node port",
        " -> ",
    ):
        if marker in name:
            name = name.split(marker)[0]
    for prefix in (
        "masquerade traffic for ",
        "masquerade LOCAL traffic for ",
        "route LOCAL traffic for ",
        "pod traffic for ",
        "Redirect pods trying to reach external loadbalancer VIP to clusterIP for ",
    ):
        name = name.removeprefix(prefix)
    name = name.removesuffix(" external destinations").strip()
    name = name.rstrip(":").strip()
    return name or None


def _kind(comment: str | None, default: str) -> str:
    """clusterip / externalip / loadbalancer, from kube-proxy's rule comment."""
    return next((k for marker, k in KINDS_BY_COMMENT if comment and marker in comment), default)


def _arg(rule: Rule, flag: str) -> str | None:
    args = rule.args
    for i, tok in enumerate(args[:-1]):
        if tok == flag and (i == 0 or args[i - 1] != "!"):
            return args[i + 1]
    return None


def _negated(rule: Rule, flag: str) -> str | None:
    args = rule.args
    for i, tok in enumerate(args[:-1]):
        if tok == flag and i > 0 and args[i - 1] == "!":
            return args[i + 1]
        if tok == "!" and args[i + 1] == flag and i + 2 < len(args):
            return args[i + 2]
    return None


class IptablesReader:
    def __init__(self, text: str) -> None:
        self.rules: dict[str, list[LocatedRule]] = {}
        self.declared: set[str] = set()
        self.table = ForwardingTable("iptables")
        self._visited: set[str] = set()
        self._followed: set[int] = set()  # frontends already followed (ids)
        self._read(text)

    def _read(self, text: str) -> None:
        current = "?"
        for number, raw in enumerate(text.splitlines(), start=1):
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            if line.startswith("*"):
                current = line[1:].strip()
                continue
            if line.startswith(":"):
                self.declared.add(line[1:].split()[0])
                continue
            if line.startswith("-N "):
                self.declared.add(line.split()[1])
                continue
            if line in ("COMMIT",) or line.startswith("-P "):
                continue
            try:
                rule = parse_rule(line)
            except ValueError as exc:
                self.table.warnings.append(
                    f"line {number}: cannot read this rule ({exc}): {line[:80]}"
                )
                continue
            if rule is None:
                continue
            table = current if current != "?" else self._guess_table(rule)
            self.rules.setdefault(rule.chain, []).append(LocatedRule(rule, table, number))

    @staticmethod
    def _guess_table(rule: Rule) -> str:
        """`iptables -S` output carries no table; filter rules are the REJECT/DROP/ACCEPT
        ones of kube-proxy's chains, everything else it writes lives in nat."""
        return "filter" if rule.target in ("REJECT", "DROP", "ACCEPT") else "nat"

    def chain(self, name: str, table: str = "nat") -> list[Rule]:
        return [lr.rule for lr in self.rules.get(name, []) if lr.table == table]

    def defined(self, name: str) -> bool:
        return name in self.declared or name in self.rules

    # --- frontends ----------------------------------------------------------------------------

    def read(self) -> ForwardingTable:
        masq_offcluster: set[tuple[str, str, int]] = set()
        masq_nodeports: set[tuple[str, int]] = set()
        for rule in self.chain("KUBE-SERVICES"):
            vip, port, proto = self._dest(rule)
            if rule.target == "KUBE-MARK-MASQ" and vip and port:
                masq_offcluster.add((vip, proto, port))  # pre-1.20 layout
            elif (rule.target or "").startswith(SERVICE_CHAINS) and vip and port:
                kind = _kind(rule.comment, "clusterip")
                front = self.table.add(Frontend(kind, vip, port, proto, service_name(rule.comment)))
                self._follow_once(rule, front)
        for rule in self.chain("KUBE-NODEPORTS"):
            _, port, proto = self._dest(rule)
            if port is None:
                continue
            if rule.target == "KUBE-MARK-MASQ":
                masq_nodeports.add((proto, port))
            elif (rule.target or "").startswith(SERVICE_CHAINS):
                front = self.table.add(
                    Frontend("nodeport", None, port, proto, service_name(rule.comment))
                )
                self._follow_once(rule, front)
        self._no_endpoint_rules()
        for f in self.table.frontends:
            if f.kind == "clusterip" and (f.vip, f.protocol, f.port) in masq_offcluster:
                f.masquerade_offcluster = True
            if f.kind == "nodeport" and (f.protocol, f.port) in masq_nodeports:
                f.masquerade_all = True
            if f.kind != "clusterip":
                f.masquerade_offcluster = bool(f.masquerade_all)
            elif f.masquerade_offcluster is None:
                f.masquerade_offcluster = False
        self._unreached_chains()
        self.table.sort()
        return self.table

    def _follow_once(self, rule: Rule, front: Frontend) -> None:
        """A frontend reached by several rules (a NodePort's localhost rule and its own,
        say) is read from the first."""
        if id(front) not in self._followed:
            self._followed.add(id(front))
            self._follow(rule.target or "", front, rule)

    def _unreached_chains(self) -> None:
        """Service chains no frontend leads to (a grep'ed or cut dump): name what they
        hold and which of their endpoint chains the dump never defines."""
        for chain in sorted(self.rules):
            if not chain.startswith(("KUBE-SVC-", "KUBE-SVL-")) or chain in self._visited:
                continue
            rules = self.chain(chain)
            name = next((service_name(r.comment) for r in rules if r.comment), None)
            label = f"{chain} ({name})" if name else chain
            self.table.warnings.append(
                f"{label} is not reached from KUBE-SERVICES or KUBE-NODEPORTS in this dump"
            )
            missing = [
                r.target
                for r in rules
                if (r.target or "").startswith("KUBE-SEP-") and not self.defined(r.target or "")
            ]
            if missing:
                self.table.warnings.append(
                    f"{label} jumps to {len(missing)} endpoint chains the "
                    f"dump never defines: {', '.join(sorted(set(map(str, missing))))}"
                )

    @staticmethod
    def _dest(rule: Rule) -> tuple[str | None, int | None, str]:
        vip = _arg(rule, "-d")
        port = _arg(rule, "--dport")
        proto = (_arg(rule, "-p") or "tcp").lower()
        return (vip.split("/")[0] if vip else None, int(port) if port else None, proto)

    def _no_endpoint_rules(self) -> None:
        """filter-table REJECT / DROP for Services without (local) endpoints."""
        for chain in ("KUBE-SERVICES", "KUBE-EXTERNAL-SERVICES", "KUBE-NODEPORTS"):
            for rule in self.chain(chain, "filter"):
                if rule.target not in ("REJECT", "DROP"):
                    continue
                vip, port, proto = self._dest(rule)
                if port is None:
                    continue
                verdict = "reject" if rule.target == "REJECT" else "drop"
                local_dst = rule.has("--dst-type", "LOCAL")
                if vip is None and local_dst:
                    kind = "nodeport"
                elif vip is None:
                    continue
                else:
                    kind = _kind(
                        rule.comment, "clusterip" if chain == "KUBE-SERVICES" else "externalip"
                    )
                served = next(
                    (
                        f
                        for f in self.table.frontends
                        if f.kind != "nodeport"
                        and (f.vip, f.protocol, f.port) == (vip, proto, port)
                    ),
                    None,
                )
                front = served or self.table.add(
                    Frontend(kind, vip, port, proto, service_name(rule.comment))
                )
                front.no_endpoints = verdict  # type: ignore[assignment]
                if "has no local endpoints" in (rule.comment or ""):
                    front.local_only = True

    # --- chains -------------------------------------------------------------------------------

    def _follow(self, chain: str, front: Frontend, via: Rule, depth: int = 0) -> None:
        self._visited.add(chain)
        if depth > 6:
            self.table.warnings.append(f"{front.label()}: chain loop through {chain}")
            return
        if not self.defined(chain):
            self.table.warnings.append(
                f"{front.label()}: jumps to {chain}, which the dump never defines "
                f"(from chain {via.chain})"
            )
            return
        rules = self.chain(chain)
        if chain.startswith("KUBE-FW-"):
            self._firewall(rules, front, depth)
            return
        if chain.startswith("KUBE-EXT-"):
            self._external(rules, front, depth)
            return
        if chain.startswith("KUBE-XLB-"):  # Local policy before 1.20
            front.local_only = True
            if front.masquerade_all is None:
                front.masquerade_all = False
            if any(r.target == "KUBE-MARK-DROP" and not r.conditions for r in rules):
                front.no_endpoints = "drop"
        self._endpoints(chain, rules, front)

    def _firewall(self, rules: list[Rule], front: Frontend, depth: int) -> None:
        """loadBalancerSourceRanges: `-s range -j` on to the Service; the rest is dropped
        (KUBE-MARK-DROP before 1.27, filter KUBE-PROXY-FIREWALL since)."""
        onward = None
        for r in rules:
            if r.target == "KUBE-MARK-MASQ" and not r.conditions:
                front.masquerade_all = True
            if (r.target or "").startswith(SERVICE_CHAINS):
                source = _arg(r, "-s")
                if source:
                    front.source_ranges.append(source)
                onward = onward or r
        front.source_ranges = service_ranges(front, front.source_ranges)
        if onward is not None:
            self._follow(onward.target or "", front, onward, depth + 1)

    def _external(self, rules: list[Rule], front: Frontend, depth: int) -> None:
        """KUBE-EXT-: masquerade (policy Cluster), or for policy Local the pod and node
        short-circuits to KUBE-SVC-, then KUBE-SVL- (none when this node has no local
        endpoint: filter KUBE-EXTERNAL-SERVICES drops what is left)."""
        final = None
        for r in rules:
            target = r.target or ""
            if target == "KUBE-MARK-MASQ" and not r.conditions:
                front.masquerade_all = True
            if not target.startswith(SERVICE_CHAINS):
                continue
            if not r.conditions:
                final = r
                continue
            source = _arg(r, "-s")
            sources = [source] if source else [NODE_SOURCE] if r.has("--src-type", "LOCAL") else []
            if not sources:
                continue
            front.local_only = True  # the short-circuit rules exist only for policy Local
            first = not front.short_circuit_sources
            front.short_circuit_sources += sources
            if first:
                cluster = Frontend(front.kind, front.vip, front.port, front.protocol, front.service)
                self._follow(target, cluster, r, depth + 1)
                front.short_circuit_endpoints = cluster.endpoints
        if front.masquerade_all is None:
            front.masquerade_all = False
        if final is None:
            return  # Local policy with no local endpoints: filter DROPs it
        if (final.target or "").startswith("KUBE-SVL-"):
            front.local_only = True
        self._follow(final.target or "", front, final, depth + 1)

    def _endpoints(self, chain: str, rules: list[Rule], front: Frontend) -> None:
        picks = []
        for r in rules:
            target = r.target or ""
            if target == "KUBE-MARK-MASQ":
                if _negated(r, "-s") or not r.conditions:
                    front.masquerade_offcluster = True
                continue
            if not target.startswith("KUBE-SEP-"):
                continue
            if "--rcheck" in r.args:
                seconds = _arg(r, "--seconds")
                if seconds:
                    front.affinity_seconds = int(seconds)
                continue
            picks.append(r)
        if not picks and front.no_endpoints is None:
            if not any((r.target or "").startswith("KUBE-SEP-") for r in rules):
                self.table.warnings.append(
                    f"{front.label()}: service chain {chain} jumps to no endpoint"
                )
            return
        for r in picks:
            dest = self._dnat(r.target or "", front)
            front.endpoints.append(dest or "?")
            if r.probability_text is not None:
                front.probabilities.append(r.probability_text)
        front.weights = effective_weights([r.probability for r in picks])
        if picks and picks[-1].probability is not None:
            self.table.warnings.append(
                f"{front.label()}: the last endpoint rule of {chain} has "
                "a probability; some traffic falls through"
            )

    def _dnat(self, sep: str, front: Frontend) -> str | None:
        if not self.defined(sep):
            self.table.warnings.append(
                f"{front.label()}: jumps to {sep}, which the dump never defines"
            )
            return None
        for r in self.chain(sep):
            if r.target == "DNAT":
                dest = _arg(r, "--to-destination")
                if dest:
                    return dest
        self.table.warnings.append(f"{front.label()}: endpoint chain {sep} has no DNAT rule")
        return None


def read_iptables(text: str) -> ForwardingTable:
    return IptablesReader(text).read()
