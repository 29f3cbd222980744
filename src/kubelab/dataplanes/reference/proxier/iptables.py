"""The iptables proxier: kube-proxy's iptables-mode layout, with kube-proxy's partial sync.

The text follows pkg/proxy/iptables/proxier.go (v1.31-v1.36; tested rule for rule against
its TestOverallIPTablesRules): the same chain names, hashes, comments, probabilities and
masquerade mark, LoadBalancer IPs with `KUBE-FW-` and filter `KUBE-PROXY-FIREWALL` for
loadBalancerSourceRanges, so `iptables-save` of a lab node reads like a kube-proxy node and
the rule auditor reads both the same way. Differences from kube-proxy, on purpose: the
built-in chains' jump rules are part of the same restore (kube-proxy ensures them with
separate calls), because the lab owns the node's whole ruleset; there are no nfacct counters
and no localhost NodePorts (route_localnet).

Syncs are partial as since kube-proxy 1.28 (KEP-3453): the first sync of a node, and one
every FULL_SYNC_PERIOD_S or after a partial restore fails, loads both tables whole; the
others send `iptables-restore --noflush` only the chains whose rules changed (declaring a
chain flushes it) and delete the chains that went away. A change that rewrites much of the
ruleset (1,000 Services created at once) is loaded whole instead: iptables-nft's
`--noflush` costs ~8x per line (NOFLUSH_COST).
"""

from __future__ import annotations

import ipaddress
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import ClassVar

from kubelab import naming as n
from kubelab.dataplanes.reference.proxier.base import Proxier, ProxierContext
from kubelab.errors import LabError
from kubelab.hosts import Runner
from kubelab.model import Endpoint, Service, ServicePort, ServiceState, categorize


def ip_in(address: str, network: ipaddress.IPv4Network) -> bool:
    return ipaddress.IPv4Address(address) in network


def _comment(text: str) -> str:
    return f'-m comment --comment "{text}"' if " " in text else f"-m comment --comment {text}"


FULL_SYNC_PERIOD_S = 3600.0  # kube-proxy's forced full resync (FullSyncPeriod: 1h)
FULL_LOAD_S = 600.0  # a full load of 10,000s of Services takes tens of seconds
# iptables-nft's `--noflush` restore costs ~8x a flushing one per line (43,000 lines of
# 1,000 Services x 10 endpoints: 7.8 s against 1.0 s here): a delta that large is sent as
# a full restore of the tables already built, which holds the same rules
NOFLUSH_COST = 8
NOFLUSH_MIN_LINES = 1000  # below this either way costs little; the partial path is kept


@dataclass
class _Table:
    """A table being written: chain declarations first, then rules, like kube-proxy's buffers.
    Rules are kept per chain (in order): a partial sync compares them chain by chain."""

    name: str
    builtin: tuple[str, ...]
    chains: dict[str, None] = field(default_factory=dict)  # an ordered set: O(1) membership
    rules: dict[str, list[str]] = field(default_factory=dict)  # chain -> its rules, in order
    _owned: set[str] = field(default_factory=set)  # chains whose list is this table's own

    def chain(self, name: str) -> None:
        self.chains.setdefault(name, None)

    def _own(self, chain: str) -> list[str]:
        """The chain's rule list, copied first if it is still a fragment's (fragments are
        cached between syncs and must not change)."""
        if chain not in self._owned:
            self.rules[chain] = list(self.rules.get(chain, ()))
            self._owned.add(chain)
        return self.rules[chain]

    def add(self, chain: str, *parts: str) -> None:
        self._own(chain).append(" ".join(["-A", chain, *[p for p in parts if p]]))

    def text(self) -> list[str]:
        lines = [f"*{self.name}"]
        lines += [f":{c} ACCEPT [0:0]" for c in self.builtin]
        lines += [f":{c} - [0:0]" for c in self.chains]
        for chain_rules in self.rules.values():
            lines += chain_rules
        return [*lines, "COMMIT"]

    def merge(self, part: _Table) -> None:
        """Append a fragment's chains and rules (one Service port's, rendered once)."""
        for c in part.chains:
            self.chains.setdefault(c, None)
        for c, rules in part.rules.items():
            if c in self.rules:
                self._own(c).extend(rules)
            else:  # shared with the fragment until something is added
                self.rules[c] = rules

    def delta(self, before: _Table) -> list[str]:
        """What turns `before` into this table with `--noflush`: every user chain whose
        rules changed, declared (which flushes it) and written again; every user chain
        that went away, declared and deleted. Built-in chains never change here."""
        changed = [
            c
            for c in self.chains
            if self.rules.get(c) != before.rules.get(c) or c not in before.chains
        ]
        gone = [c for c in before.chains if c not in self.chains]
        if not changed and not gone:
            return []
        lines = [f"*{self.name}", *(f":{c} - [0:0]" for c in [*changed, *gone])]
        for c in changed:
            lines += self.rules.get(c, [])
        return [*lines, *(f"-X {c}" for c in gone), "COMMIT"]


def _size(tables: tuple[_Table, _Table]) -> int:
    """Lines of a full restore of the tables."""
    return sum(len(t.chains) + sum(map(len, t.rules.values())) for t in tables)


def _proto(port: ServicePort) -> str:
    p = port.protocol.lower()
    return f"-m {p} -p {p}"


@dataclass
class _Applied:
    """What a node holds: the tables last loaded, and when they were last loaded whole."""

    tables: tuple[_Table, _Table]
    full_at: float


class IptablesProxier(Proxier):
    mode: ClassVar[str] = "iptables"
    layout: ClassVar[str] = "kube-proxy v1.31-v1.36 pkg/proxy/iptables"

    def __init__(self, scheduler: str = "rr", node_ips: dict[str, str] | None = None) -> None:
        super().__init__(scheduler, node_ips)
        self._applied: dict[str, _Applied] = {}
        # per node: each Service port's rendered rules, reused while it does not change
        self._fragments: dict[str, dict[tuple[object, ...], tuple[_Table, _Table]]] = {}
        # the fragments no node's own endpoints shape (no Local policy): rendered once for all
        self._shared: dict[tuple[object, ...], tuple[_Table, _Table]] = {}
        self.last_sync_partial = False

    def render(self, services: list[ServiceState], ctx: ProxierContext) -> str:
        flt, nat = self._tables(services, ctx)
        return "\n".join([*flt.text(), *nat.text()]) + "\n"

    def sync(self, runner: Runner, services: list[ServiceState], ctx: ProxierContext) -> str:
        """A partial restore when the node's tables are known and the full resync is not
        due; a full one otherwise (streamed: iptables-restore parses while the rules are
        still being rendered), and after a partial restore that fails."""
        applied = self._applied.get(ctx.node)
        now = time.monotonic()
        if applied is not None and now - applied.full_at < FULL_SYNC_PERIOD_S:
            tables = self._tables(services, ctx)
            delta = [line for new, old in zip(tables, applied.tables, strict=True)
                     for line in new.delta(old)]  # fmt: skip
            started = time.perf_counter()
            if len(delta) > NOFLUSH_MIN_LINES and len(delta) * NOFLUSH_COST > _size(tables):
                return self._load_whole(runner, ctx.node, tables, now)
            try:
                if delta:
                    runner.run(
                        ["iptables-restore", "-w", "--noflush"], input="\n".join(delta) + "\n"
                    )
                self.last_apply_seconds = time.perf_counter() - started
                self._applied[ctx.node] = _Applied(tables, applied.full_at)
                self.last_sync_partial = True
                return "\n".join(delta)
            except LabError:
                pass  # as kube-proxy: the next step is a full sync
        built: list[tuple[_Table, _Table]] = []
        started = time.perf_counter()
        runner.feed(
            ["iptables-restore", "-w"], self._build(services, ctx, built, emit=True), FULL_LOAD_S
        )
        self.last_apply_seconds = time.perf_counter() - started
        self._applied[ctx.node] = _Applied(built[0], now)
        self.last_sync_partial = False
        return "\n".join([*built[0][0].text(), *built[0][1].text()]) + "\n"

    def _load_whole(
        self, runner: Runner, node: str, tables: tuple[_Table, _Table], now: float
    ) -> str:
        text = "\n".join([*tables[0].text(), *tables[1].text()]) + "\n"
        started = time.perf_counter()
        self.apply(runner, text)
        self.last_apply_seconds = time.perf_counter() - started
        self._applied[node] = _Applied(tables, now)
        self.last_sync_partial = False
        return text

    def forget(self) -> None:
        self._applied.clear()
        self._fragments.clear()
        self._shared = {}

    def _tables(self, services: list[ServiceState], ctx: ProxierContext) -> tuple[_Table, _Table]:
        built: list[tuple[_Table, _Table]] = []
        for _ in self._build(services, ctx, built, emit=False):
            pass
        return built[0]

    def _build(
        self,
        services: list[ServiceState],
        ctx: ProxierContext,
        into: list[tuple[_Table, _Table]],
        emit: bool,
    ) -> Iterator[str]:
        """Build the node's (filter, nat) tables into `into`; with `emit`, yield the
        restore text as it is built: nat first, a Service port at a time (its new chains
        declared before its rules), then filter, which is small."""
        flt = _Table("filter", ("INPUT", "FORWARD", "OUTPUT"))
        nat = _Table("nat", ("PREROUTING", "INPUT", "OUTPUT", "POSTROUTING"))
        self._base_filter(flt)
        self._base_nat(nat)
        if emit:
            yield "\n".join(nat.text()[:-1]) + "\n"  # without COMMIT
        cache: dict[tuple[object, ...], tuple[_Table, _Table]] = {}
        cached, shared = self._fragments.get(ctx.node, {}), self._shared
        for state in services:
            node_bound = state.service.uses_local_endpoints
            for port in state.service.ports:
                endpoints = state.endpoints_for(port)
                key = (state.service, port, endpoints, ctx if node_bound else ctx.cluster_cidr)
                parts = cached.get(key) or shared.get(key)
                if parts is None:  # a Service port not rendered before, or changed
                    parts = (_Table("filter", ()), _Table("nat", ()))
                    self._service_port(parts[1], parts[0], state.service, port, endpoints, ctx)
                cache[key] = parts
                if emit:
                    new = [f":{c} - [0:0]" for c in parts[1].chains if c not in nat.chains]
                    rules = [r for chain_rules in parts[1].rules.values() for r in chain_rules]
                    yield "\n".join([*new, *rules, ""])
                flt.merge(parts[0])
                nat.merge(parts[1])
        self._fragments[ctx.node] = cache  # what this node's next sync can reuse
        # replaced, not edited: nodes syncing at the same time read it
        self._shared = {k: v for k, v in cache.items() if not isinstance(k[3], ProxierContext)}
        # NOTE (kube-proxy): this must be the last rule in KUBE-SERVICES.
        nat.add(
            n.KUBE_SERVICES,
            _comment(
                "kubernetes service nodeports; NOTE: this must be the last rule in this chain"
            ),
            "-m addrtype --dst-type LOCAL",
            f"-j {n.KUBE_NODEPORTS}",
        )
        into.append((flt, nat))
        if emit:
            yield "\n".join([nat.rules[n.KUBE_SERVICES][-1], "COMMIT", *flt.text(), ""])

    def apply(self, runner: Runner, text: str) -> None:
        runner.run(["iptables-restore", "-w"], input=text, timeout=FULL_LOAD_S)

    # --- fixed chains -------------------------------------------------------------------------

    @staticmethod
    def _base_filter(flt: _Table) -> None:
        for c in (
            n.KUBE_EXTERNAL_SERVICES,
            n.KUBE_FORWARD,
            n.KUBE_NODEPORTS,
            n.KUBE_PROXY_CANARY,
            n.KUBE_PROXY_FIREWALL,
            n.KUBE_SERVICES,
        ):
            flt.chain(c)
        new = "-m conntrack --ctstate NEW"
        fw = _comment("kubernetes load balancer firewall")
        flt.add("INPUT", new, fw, f"-j {n.KUBE_PROXY_FIREWALL}")
        flt.add(
            "INPUT", _comment("kubernetes health check service ports"), f"-j {n.KUBE_NODEPORTS}"
        )
        flt.add(
            "INPUT",
            new,
            _comment("kubernetes externally-visible service portals"),
            f"-j {n.KUBE_EXTERNAL_SERVICES}",
        )
        flt.add("FORWARD", new, fw, f"-j {n.KUBE_PROXY_FIREWALL}")
        flt.add("FORWARD", _comment("kubernetes forwarding rules"), f"-j {n.KUBE_FORWARD}")
        flt.add("FORWARD", new, _comment("kubernetes service portals"), f"-j {n.KUBE_SERVICES}")
        flt.add(
            "FORWARD",
            new,
            _comment("kubernetes externally-visible service portals"),
            f"-j {n.KUBE_EXTERNAL_SERVICES}",
        )
        flt.add("OUTPUT", new, fw, f"-j {n.KUBE_PROXY_FIREWALL}")
        flt.add("OUTPUT", new, _comment("kubernetes service portals"), f"-j {n.KUBE_SERVICES}")
        flt.add(n.KUBE_FORWARD, "-m conntrack --ctstate INVALID", "-j DROP")
        flt.add(
            n.KUBE_FORWARD,
            _comment("kubernetes forwarding rules"),
            f"-m mark --mark {n.MASQUERADE_MARK}/{n.MASQUERADE_MARK}",
            "-j ACCEPT",
        )
        flt.add(
            n.KUBE_FORWARD,
            _comment("kubernetes forwarding conntrack rule"),
            "-m conntrack --ctstate RELATED,ESTABLISHED",
            "-j ACCEPT",
        )

    @staticmethod
    def _base_nat(nat: _Table) -> None:
        for c in (
            n.KUBE_MARK_MASQ,
            n.KUBE_NODEPORTS,
            n.KUBE_POSTROUTING,
            n.KUBE_PROXY_CANARY,
            n.KUBE_SERVICES,
        ):
            nat.chain(c)
        portals = _comment("kubernetes service portals")
        nat.add("PREROUTING", portals, f"-j {n.KUBE_SERVICES}")
        nat.add("OUTPUT", portals, f"-j {n.KUBE_SERVICES}")
        nat.add("POSTROUTING", _comment("kubernetes postrouting rules"), f"-j {n.KUBE_POSTROUTING}")
        mark = n.MASQUERADE_MARK
        nat.add(n.KUBE_MARK_MASQ, f"-j MARK --or-mark {mark}")
        nat.add(n.KUBE_POSTROUTING, f"-m mark ! --mark {mark}/{mark}", "-j RETURN")
        nat.add(n.KUBE_POSTROUTING, f"-j MARK --xor-mark {mark}")
        nat.add(
            n.KUBE_POSTROUTING,
            _comment("kubernetes service traffic requiring SNAT"),
            "-j MASQUERADE --random-fully",
        )

    # --- one service port (kube-proxy's syncProxyRules loop body) ------------------------------

    def _service_port(
        self,
        nat: _Table,
        flt: _Table,
        svc: Service,
        port: ServicePort,
        endpoints: tuple[Endpoint, ...],
        ctx: ProxierContext,
    ) -> None:
        if svc.headless:
            return  # kube-proxy ignores Services without a ClusterIP
        name = svc.port_name(port)
        proto = port.protocol
        cat = categorize(svc, endpoints, ctx.node)
        svc_chain = n.svc_chain(name, proto)
        svl_chain = n.svl_chain(name, proto)
        ext_chain = n.ext_chain(name, proto)
        external_local = cat.external_local
        has_internal, has_external = cat.has_internal, cat.has_external
        internal_chain = svl_chain if cat.internal_local else svc_chain
        external_policy_chain = svl_chain if external_local else svc_chain
        externally = port.node_port is not None or bool(svc.external_addresses)
        uses_ext = cat.has_any and externally
        uses_fw = bool(svc.load_balancer_ips and svc.load_balancer_source_ranges)
        fw_chain = n.fw_chain(name, proto)
        if not cat.has_any:
            internal_verdict = external_verdict = "REJECT"
            why = f"{name} has no endpoints"
        else:
            internal_verdict = external_verdict = "DROP"
            why = f"{name} has no local endpoints"

        vip = f"-d {svc.cluster_ip}/32 --dport {port.port}"
        if has_internal:
            nat.add(
                n.KUBE_SERVICES,
                _comment(f"{name} cluster IP"),
                _proto(port),
                vip,
                f"-j {internal_chain}",
            )
        else:
            flt.add(n.KUBE_SERVICES, _comment(why), _proto(port), vip, f"-j {internal_verdict}")

        for kind, ip in svc.external_addresses:
            dest = f"-d {ip}/32 --dport {port.port}"
            label = "external IP" if kind == "externalip" else "loadbalancer IP"
            if cat.has_any:
                target = fw_chain if kind == "loadbalancer" and uses_fw else ext_chain
                nat.add(n.KUBE_SERVICES, _comment(f"{name} {label}"), _proto(port), dest,
                        f"-j {target}")  # fmt: skip
            if kind == "loadbalancer" and uses_fw:
                flt.add(
                    n.KUBE_PROXY_FIREWALL,
                    _comment(f"{name} traffic not accepted by {fw_chain}"),
                    _proto(port),
                    dest,
                    "-j DROP",
                )
            if not has_external:
                flt.add(n.KUBE_EXTERNAL_SERVICES, _comment(why), _proto(port), dest,
                        f"-j {external_verdict}")  # fmt: skip

        if port.node_port is not None:
            if uses_ext:
                nat.add(
                    n.KUBE_NODEPORTS,
                    _comment(name),
                    _proto(port),
                    f"--dport {port.node_port}",
                    f"-j {ext_chain}",
                )
            if not has_external:
                flt.add(
                    n.KUBE_EXTERNAL_SERVICES,
                    _comment(why),
                    "-m addrtype --dst-type LOCAL",
                    _proto(port),
                    f"--dport {port.node_port}",
                    f"-j {external_verdict}",
                )
        if svc.health_check_node_port is not None and svc.external_local and port is svc.ports[0]:
            flt.add(
                n.KUBE_NODEPORTS,
                _comment(f"{name} health check node port"),
                "-m tcp -p tcp",
                f"--dport {svc.health_check_node_port}",
                "-j ACCEPT",
            )

        # internal traffic: masquerade what comes from outside the pod network
        if has_internal:
            nat.chain(internal_chain)
            nat.add(
                internal_chain,
                _comment(f"{name} cluster IP"),
                _proto(port),
                vip,
                f"! -s {ctx.cluster_cidr}",
                f"-j {n.KUBE_MARK_MASQ}",
            )

        if uses_ext:
            nat.chain(ext_chain)
            if not external_local:
                nat.add(
                    ext_chain,
                    _comment(f"masquerade traffic for {name} external destinations"),
                    f"-j {n.KUBE_MARK_MASQ}",
                )
            else:
                nat.add(
                    ext_chain,
                    _comment(f"pod traffic for {name} external destinations"),
                    f"-s {ctx.cluster_cidr}",
                    f"-j {svc_chain}",
                )
                nat.add(
                    ext_chain,
                    _comment(f"masquerade LOCAL traffic for {name} external destinations"),
                    "-m addrtype --src-type LOCAL",
                    f"-j {n.KUBE_MARK_MASQ}",
                )
                nat.add(
                    ext_chain,
                    _comment(f"route LOCAL traffic for {name} external destinations"),
                    "-m addrtype --src-type LOCAL",
                    f"-j {svc_chain}",
                )
            if has_external:
                nat.add(ext_chain, f"-j {external_policy_chain}")

        if uses_fw and cat.has_any:
            # loadBalancerSourceRanges: allowed sources go on; the rest is not DNATed, so
            # filter KUBE-PROXY-FIREWALL drops it
            nat.chain(fw_chain)
            allowed = [str(r) for r in svc.load_balancer_source_ranges]
            node_ip = self.node_ips.get(ctx.node)
            if node_ip and any(ip_in(node_ip, r) for r in svc.load_balancer_source_ranges):
                allowed += [str(ip) for ip in svc.load_balancer_ips]  # the node's own calls
            for source in allowed:
                nat.add(fw_chain, _comment(f"{name} loadbalancer IP"), f"-s {source}",
                        f"-j {ext_chain}")  # fmt: skip
            nat.add(
                fw_chain,
                _comment(f"other traffic to {name} will be dropped by KUBE-PROXY-FIREWALL"),
            )

        if cat.cluster:
            nat.chain(svc_chain)
            self._to_endpoints(nat, svc_chain, name, svc, proto, cat.cluster)
        if cat.local:
            nat.chain(svl_chain)
            self._to_endpoints(nat, svl_chain, name, svc, proto, cat.local)
        self._sep_chains(nat, name, svc, proto, cat.reachable)

    @staticmethod
    def _to_endpoints(
        nat: _Table,
        chain: str,
        name: str,
        svc: Service,
        proto: str,
        endpoints: tuple[Endpoint, ...],
    ) -> None:
        """Affinity checks first; then endpoint i of n gets probability 1/(n-i), and the last
        one has no statistic match."""
        if svc.affinity_seconds is not None:
            for ep in endpoints:
                sep = n.sep_chain(name, proto, ep.address)
                nat.add(
                    chain,
                    _comment(f"{name} -> {ep.address}"),
                    f"-m recent --name {sep} --rcheck --seconds {svc.affinity_seconds} --reap",
                    f"-j {sep}",
                )
        count = len(endpoints)
        for i, ep in enumerate(endpoints):
            sep = n.sep_chain(name, proto, ep.address)
            stat = (
                f"-m statistic --mode random --probability {n.probability(i, count)}"
                if i < count - 1
                else ""
            )
            nat.add(chain, _comment(f"{name} -> {ep.address}"), stat, f"-j {sep}")

    @staticmethod
    def _sep_chains(
        nat: _Table, name: str, svc: Service, proto: str, endpoints: tuple[Endpoint, ...]
    ) -> None:
        p = proto.lower()
        for ep in endpoints:
            sep = n.sep_chain(name, proto, ep.address)
            nat.chain(sep)
            nat.add(sep, _comment(name), f"-s {ep.ip}/32", f"-j {n.KUBE_MARK_MASQ}")
            recent = f"-m recent --name {sep} --set" if svc.affinity_seconds is not None else ""
            nat.add(
                sep,
                _comment(name),
                recent,
                f"-m {p} -p {p}",
                f"-j DNAT --to-destination {ep.address}",
            )
