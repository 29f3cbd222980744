"""Trace a packet through iptables-save / iptables -S dumps of kube-proxy's rules.

As kube-proxy's own packet-flow tests do (pkg/proxy/iptables/proxier_test.go,
tracePacket): nat KUBE-SERVICES first (PREROUTING and OUTPUT both jump there), and the
destination a DNAT picked is what the filter chains then see: KUBE-SERVICES,
KUBE-EXTERNAL-SERVICES, KUBE-NODEPORTS and KUBE-PROXY-FIREWALL. A masquerade mark
(KUBE-MARK-MASQ) means KUBE-POSTROUTING masquerades. `-m statistic` splits the packet into
both branches with their shares; `-m recent --rcheck` (an affinity entry) does not match a
first connection; matches a dump cannot decide (interfaces, ipsets) do not match and are
named in the notes.
"""

from __future__ import annotations

from kubelab.rules.iptables_save import Rule
from kubelab.rules.iptables_table import IptablesReader
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

FILTER_CHAINS = ("KUBE-SERVICES", "KUBE-EXTERNAL-SERVICES", "KUBE-NODEPORTS", "KUBE-PROXY-FIREWALL")
MAX_DEPTH = 12
Ends = list[tuple[Branch, str]]  # verdict: "return" (fell off the chain) or a final one


class IptablesTracer:
    def __init__(self, text: str, node_addresses: set[str]) -> None:
        self.reader = IptablesReader(text)
        self.node = local_addresses(node_addresses)
        self.notes: set[str] = set()

    def trace(self, packet: Packet) -> Trace:
        start = Branch(packet)
        ends: list[tuple[Branch, Outcome]] = []
        for branch, verdict in self._chain("nat", "KUBE-SERVICES", start, 0):
            after_nat = branch
            filtered = [(after_nat, "return")]
            for chain in FILTER_CHAINS:
                nxt: Ends = []
                for b, v in filtered:
                    if v != "return":
                        nxt.append((b, v))
                        continue
                    nxt += (
                        self._chain("filter", chain, b, 0)
                        if self._has("filter", chain)
                        else [(b, v)]
                    )
                filtered = nxt
            for b, v in filtered:
                if v in ("drop", "reject"):
                    ends.append((b, v))  # type: ignore[arg-type]
                elif verdict == "dnat" or b.dnat:
                    ends.append((b, "dnat"))
                elif v == "accept" or verdict == "accept":
                    ends.append((b, "accept"))
                else:
                    ends.append((b, "none"))
        trace = conclude(packet, "iptables", ends)
        trace.notes += sorted(self.notes)
        return trace

    def _has(self, table: str, chain: str) -> bool:
        return any(lr.table == table for lr in self.reader.rules.get(chain, []))

    def _chain(self, table: str, chain: str, branch: Branch, depth: int) -> Ends:
        if depth > MAX_DEPTH:
            self.notes.add(f"stopped following at {chain}: chains nest deeper than {MAX_DEPTH}")
            return [(branch, "return")]
        rules = self.reader.chain(chain, table)
        if not rules and chain.startswith(("KUBE-SVC-", "KUBE-SVL-", "KUBE-SEP-", "KUBE-EXT-")):
            self.notes.add(f"{chain} has no rules in this dump (an excerpt?): the trace ends there")
        return self._rules(table, chain, rules, 0, branch, depth)

    def _rules(
        self, table: str, chain: str, rules: list[Rule], i: int, branch: Branch, depth: int
    ) -> Ends:
        while i < len(rules):
            rule = rules[i]
            if not self._matches(rule, branch):
                i += 1
                continue
            if rule.probability is not None and rule.probability < 1.0:
                # the statistic match splits the packet: its share takes the target, the
                # rest goes on with the next rule
                taken = self._then(table, chain, rules, i, branch.split(rule.probability), depth)
                rest = branch.split(1.0 - rule.probability)
                return taken + self._rules(table, chain, rules, i + 1, rest, depth)
            return self._then(table, chain, rules, i, branch, depth)
        return [(branch, "return")]

    def _then(
        self, table: str, chain: str, rules: list[Rule], i: int, branch: Branch, depth: int
    ) -> Ends:
        """Rule i matched: its target, then the next rules for what comes back."""
        out: Ends = []
        for b, v in self._target(table, chain, rules[i], branch, depth):
            if v == "continue":
                out += self._rules(table, chain, rules, i + 1, b, depth)
            else:
                out.append((b, v))
        return out

    def _target(self, table: str, chain: str, rule: Rule, branch: Branch, depth: int) -> Ends:
        """What the rule's target does; "continue" goes on with the next rule."""
        target = rule.target
        label = f"{table} {chain}"
        if target is None:
            return [(branch, "continue")]
        if target == "DNAT":
            dest = _after(rule.target_args, "--to-destination")
            if dest is None:
                return [(branch, "continue")]
            return [(branch.step(f"{label}: DNAT to {dest}").to(dest), "dnat")]
        if target in ("ACCEPT", "DROP", "REJECT"):
            why = f" ({rule.comment})" if rule.comment else ""
            return [(branch.step(f"{label}: {target}{why}"), target.lower())]
        if target == "RETURN":
            return [(branch, "return")]
        if target == "MARK":
            if "--or-mark" in rule.target_args:
                return [(branch.marked(label), "continue")]
            return [(branch, "continue")]
        if target in ("MASQUERADE", "SNAT", "LOG"):
            return [(branch, "continue")]
        if target == "KUBE-MARK-MASQ":
            return [(branch.marked(label), "continue")]
        if not self.reader.defined(target):
            self.notes.add(f"{chain} jumps to {target}, which the dump never defines")
            return [(branch, "continue")]
        why = f" ({rule.comment})" if rule.comment else ""
        share = f" share {branch.share:.4f}" if branch.share < 1.0 else ""
        stepped = branch.step(f"{label} -> {target}{why}{share}")
        out: Ends = []
        for b, v in self._chain(table, target, stepped, depth + 1):
            # -j returns to the caller; -g (goto) would return to the caller's caller, which
            # kube-proxy never writes
            out.append((b, "continue" if v == "return" else v))
        return out

    def _matches(self, rule: Rule, branch: Branch) -> bool:
        """Whether every match of the rule holds for the packet."""
        p = branch.packet
        args = list(rule.conditions)
        i = 0
        while i < len(args):
            negate = args[i] == "!"
            if negate:
                i += 1
            flag = args[i]
            value = args[i + 1] if i + 1 < len(args) else ""
            ok: bool
            step = 2
            if flag == "-m":
                module = value
                if module in ("comment", "tcp", "udp", "sctp", "addrtype", "conntrack", "mark",
                              "statistic", "nfacct"):  # fmt: skip
                    i += 2
                    continue
                if module == "recent":
                    if "--rcheck" in args or "--update" in args:
                        return False  # a first connection has no affinity entry yet
                    i += 2
                    continue
                self.notes.add(f"-m {module} cannot be decided from a dump; taken as no match")
                return False
            if flag in ("-s", "--source"):
                ok = in_network(p.src, value)
            elif flag in ("-d", "--destination"):
                ok = in_network(p.dst, value)
            elif flag in ("-p", "--protocol"):
                ok = value.lower() == p.protocol
            elif flag in ("--dport", "--destination-port"):
                ok = int(value) == p.port
            elif flag == "--dst-type":
                ok = value == "LOCAL" and is_local(p.dst, self.node)
            elif flag == "--src-type":
                ok = value == "LOCAL" and is_local(p.src, self.node)
            elif flag == "--ctstate":
                ok = "NEW" in value.split(",")
            elif flag == "--mark":
                ok = branch.masquerade
            elif flag in ("--mode", "--probability", "--nfacct-name", "--name", "--seconds",
                          "--mask", "--hitcount"):  # fmt: skip
                ok = True
            elif flag in ("--set", "--reap", "--rsource", "--rcheck", "--update"):
                ok, step = True, 1
            elif flag in ("-i", "-o", "--in-interface", "--out-interface"):
                self.notes.add(f"{flag} {value} cannot be decided from a dump; taken as no match")
                return False
            else:
                self.notes.add(f"{flag} is not read by the tracer; taken as no match")
                return False
            if ok == negate:
                return False
            i += step
        return True


def _after(args: tuple[str, ...], flag: str) -> str | None:
    for i, tok in enumerate(args[:-1]):
        if tok == flag:
            return args[i + 1]
    return None


def trace_iptables(text: str, packet: Packet, node_addresses: set[str]) -> Trace:
    return IptablesTracer(text, node_addresses).trace(packet)
