"""The nftables proxier: kube-proxy's nftables-mode layout in `table ip kube-proxy`.

Follows pkg/proxy/nftables/proxier.go of kube-proxy 1.36 (checked rule by rule against its
TestOverallNFTablesRules, tests/data/dumps/SOURCES.md): filter base chains before DNAT
(`filter-prerouting-pre-dnat`, `filter-output-pre-dnat`: `firewall-check`) and at filter
priority (`filter-input`/`-forward`/`-output`: `service-endpoints-check`,
`nodeport-endpoints-check`, `cluster-ips-check`); verdict maps `service-ips` and
`service-nodeports` dispatch to `service-`/`external-` chains; `numgen random mod N vmap`
picks an `endpoint-` chain; `no-endpoint-services` / `no-endpoint-nodeports` reject or
drop; the `cluster-ips` set rejects a ClusterIP's undefined ports and the Service CIDR's
unallocated addresses are dropped; masquerading through `mark-for-masquerade` (mark
0x004000) and `masquerading`; ClientIP affinity through one dynamic timeout set per
endpoint. NodePorts answer on every local address but loopback (kube-proxy's
`--nodeport-addresses` unset; its `primary` default writes a `nodeport-ips` set instead).

Sync: the first sync of a node loads the whole table in one `nft -f` transaction (delete
and re-create). Every later sync diffs the new ruleset against the last one applied on
that node and sends only what changed (map elements, changed chains, new and stale chains
and sets) as one atomic transaction: a netlink batch (`nft_netlink.py`) when the node is a
namespace on this kernel, an `nft -f` script over the node's runner otherwise (VMs). The
batch skips nft's cache dump, which grows with the table; what is left is the kernel's
commit, which revalidates the whole table whenever a change adds a jump or goto.

Differences from kube-proxy: stale chains are deleted in the same transaction (kernels >=
6.2 allow it; kube-proxy waits a second for older ones).
"""

from __future__ import annotations

import ipaddress
import json
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import ClassVar

from kubelab import naming as n
from kubelab.dataplanes.reference.proxier.base import Proxier, ProxierContext
from kubelab.dataplanes.reference.proxier.nft_netlink import NETLINK_NETFILTER, Batch
from kubelab.errors import LabError
from kubelab.hosts import Runner
from kubelab.model import Categorized, Endpoint, Service, ServicePort, ServiceState, categorize

T = f"ip {n.NFT_TABLE}"
LOAD_TIMEOUT_S = 600.0  # a full load of 10,000 Services x 10 endpoints takes minutes here
MARK = n.NFT_MASQUERADE_MARK

# name -> (type, hook, priority), as kube-proxy writes them (dstnat=-100, filter=0, srcnat=100)
BASE_CHAINS: dict[str, tuple[str, str, int]] = {
    "filter-prerouting-pre-dnat": ("filter", "prerouting", -110),
    "filter-output-pre-dnat": ("filter", "output", -110),
    "filter-forward": ("filter", "forward", 0),
    "filter-input": ("filter", "input", 0),
    "filter-output": ("filter", "output", 0),
    "nat-output": ("nat", "output", -100),
    "nat-postrouting": ("nat", "postrouting", 100),
    "nat-prerouting": ("nat", "prerouting", -100),
}
# (source chain, condition, destination chain), in kube-proxy's order
JUMPS = (
    ("filter-prerouting-pre-dnat", "ct state new", "firewall-check"),
    ("filter-forward", "ct state new", "service-endpoints-check"),
    ("filter-forward", "ct state new", "cluster-ips-check"),
    ("filter-input", "ct state new", "nodeport-endpoints-check"),
    ("filter-input", "ct state new", "service-endpoints-check"),
    ("filter-output", "ct state new", "service-endpoints-check"),
    ("filter-output-pre-dnat", "ct state new", "firewall-check"),
    ("filter-output", "ct state new", "cluster-ips-check"),
    ("nat-output", "", "services"),
    ("nat-postrouting", "", "masquerading"),
    ("nat-prerouting", "", "services"),
)
# plain sets: name -> comment
SETS: dict[str, str] = {"cluster-ips": "Active ClusterIPs"}
MAPS: dict[str, tuple[str, str]] = {
    "no-endpoint-services": (
        "ipv4_addr . inet_proto . inet_service : verdict",
        "vmap to drop or reject packets to services with no endpoints",
    ),
    "no-endpoint-nodeports": (
        "inet_proto . inet_service : verdict",
        "vmap to drop or reject packets to service nodeports with no endpoints",
    ),
    "firewall-ips": (
        "ipv4_addr . inet_proto . inet_service : verdict",
        "destinations that are subject to LoadBalancerSourceRanges",
    ),
    "service-ips": (
        "ipv4_addr . inet_proto . inet_service : verdict",
        "ClusterIP, ExternalIP and LoadBalancer IP traffic",
    ),
    "service-nodeports": ("inet_proto . inet_service : verdict", "NodePort traffic"),
}


@dataclass
class NftRuleset:
    """The content of `table ip kube-proxy` for one node, as data that can be diffed."""

    chains: dict[str, list[str]] = field(default_factory=dict)
    # map or set -> key -> verdict ("" for a set's element)
    elements: dict[str, dict[str, str]] = field(
        default_factory=lambda: {name: {} for name in (*SETS, *MAPS)}
    )
    affinity_sets: dict[str, int] = field(default_factory=dict)  # name -> timeout seconds

    def rule(self, chain: str, text: str) -> None:
        self.chains.setdefault(chain, []).append(text)

    def element(self, map_name: str, key: str, value: str = "") -> None:
        self.elements[map_name][key] = value

    def merge(self, other: NftRuleset) -> None:
        """Add a disjoint fragment (one Service's chains, elements and sets)."""
        self.chains.update(other.chains)
        for name, elements in other.elements.items():
            self.elements[name].update(elements)
        self.affinity_sets.update(other.affinity_sets)


@dataclass(frozen=True)
class NftChange:
    """One step of a delta: written as an `nft -f` line, or into a netlink batch."""

    verb: str  # add set | add chain | flush chain | add rule | delete/add element | delete ...
    name: str  # the chain, set or map
    rule: str = ""
    elements: tuple[tuple[str, str], ...] = ()  # (key, verdict)
    timeout: int = 0  # seconds, for `add set`

    def text(self) -> str:
        if self.verb == "add set":
            return (
                f"add set {T} {self.name} {{ type ipv4_addr; flags dynamic,timeout; "
                f"timeout {self.timeout}s; }}"
            )
        if self.verb == "add rule":
            return f"add rule {T} {self.name} {self.rule}"
        if self.verb == "delete element":
            keys = ", ".join(k.split(" comment ")[0] for k, _ in self.elements)
            return f"delete element {T} {self.name} {{ {keys} }}"
        if self.verb == "add element":
            return f"add element {T} {self.name} {{ {_element_list(self.elements)} }}"
        return f"{self.verb} {T} {self.name}"

    def into(self, batch: Batch) -> None:
        if self.verb == "add set":
            batch.add_affinity_set(self.name, self.timeout)
        elif self.verb == "add chain":
            batch.add_chain(self.name)
        elif self.verb == "flush chain":
            batch.flush_chain(self.name)
        elif self.verb == "add rule":
            batch.add_rule(self.name, self.rule)
        elif self.verb == "delete element":
            batch.delete_elements(self.name, [k for k, _ in self.elements])
        elif self.verb == "add element":
            batch.add_elements(self.name, dict(self.elements))
        elif self.verb == "delete chain":
            batch.delete_chain(self.name)
        elif self.verb == "delete set":
            batch.delete_set(self.name)
        else:
            raise ValueError(self.verb)


@dataclass(frozen=True)
class _Fragment:
    """One Service rendered for one node, and the state it was rendered from."""

    source: ServiceState
    rules: NftRuleset


def _chain_header(name: str) -> str:
    kind, hook, prio = BASE_CHAINS[name]
    return f"type {kind} hook {hook} priority {prio}; policy accept;"


def _element_list(elements: Iterable[tuple[str, str]]) -> str:
    """`key : verdict, ...` for a map, `key, ...` for a set (whose values are "")."""
    return ", ".join(f"{k} : {v}" if v else k for k, v in elements)


class NftablesProxier(Proxier):
    mode: ClassVar[str] = "nftables"
    layout: ClassVar[str] = "kube-proxy v1.36 pkg/proxy/nftables"

    tools: ClassVar[tuple[str, ...]] = ("nft", "conntrack")
    packages: ClassVar[str] = "nftables conntrack"
    dump_command: ClassVar[tuple[str, ...]] = ("nft", "-j", "list", "ruleset")

    def __init__(self, scheduler: str = "rr", node_ips: dict[str, str] | None = None) -> None:
        super().__init__(scheduler, node_ips)
        # node -> Service key -> the fragment last loaded there
        self._applied: dict[str, dict[str, _Fragment]] = {}

    # --- render -------------------------------------------------------------------------------

    def ruleset(self, services: list[ServiceState], ctx: ProxierContext) -> NftRuleset:
        rs = self.base(ctx)
        for state in services:
            rs.merge(self.fragment(state, ctx))
        return rs

    def fragment(self, state: ServiceState, ctx: ProxierContext) -> NftRuleset:
        """The chains, map elements and sets of one Service; fragments never overlap."""
        rs = NftRuleset()
        if not state.service.headless:
            for port in state.service.ports:
                self._service_port(rs, state.service, port, state.endpoints_for(port), ctx)
        return rs

    @staticmethod
    def base(ctx: ProxierContext) -> NftRuleset:
        """Everything that does not depend on the Services."""
        rs = NftRuleset()
        for name in BASE_CHAINS:
            rs.chains[name] = []
        for src, cond, dst in JUMPS:
            rs.chains.setdefault(dst, [])
            rs.rule(src, f"{cond} jump {dst}".strip())
        rs.rule(
            "cluster-ips-check",
            'ip daddr @cluster-ips reject comment "Reject traffic to invalid ports of ClusterIPs"',
        )
        if ctx.service_cidr is not None:
            rs.rule(
                "cluster-ips-check",
                f"ip daddr {{ {ctx.service_cidr} }} drop "
                'comment "Drop traffic to unallocated ClusterIPs"',
            )
        rs.rule("mark-for-masquerade", f"mark set mark or {MARK}")
        rs.rule("masquerading", f"mark and {MARK} == 0 return")
        rs.rule("masquerading", f"mark set mark xor {MARK}")
        rs.rule("masquerading", "masquerade fully-random")
        rs.rule("reject-chain", "reject")
        no_local = "ip daddr != 127.0.0.0/8"
        rs.rule(
            "service-endpoints-check",
            "ip daddr . meta l4proto . th dport vmap @no-endpoint-services",
        )
        rs.rule(
            "nodeport-endpoints-check",
            f"{no_local} meta l4proto . th dport vmap @no-endpoint-nodeports",
        )
        rs.rule("firewall-check", "ip daddr . meta l4proto . th dport vmap @firewall-ips")
        rs.rule("services", "ip daddr . meta l4proto . th dport vmap @service-ips")
        rs.rule(
            "services",
            f"fib daddr type local {no_local} meta l4proto . th dport vmap @service-nodeports",
        )
        return rs

    def _names(self, svc: Service, port: ServicePort) -> tuple[str, str, str, str]:
        """The service port's cluster, local, external and firewall chains."""
        base = n.nft_service_base(svc.namespace, svc.name, port.protocol, port.name)
        return f"service-{base}", f"local-{base}", f"external-{base}", f"firewall-{base}"

    def _endpoint_names(self, svc: Service, port: ServicePort, ep: Endpoint) -> tuple[str, str]:
        base = n.nft_endpoint_base(
            svc.namespace, svc.name, port.protocol, port.name, str(ep.ip), ep.port
        )
        return f"endpoint-{base}", f"affinity-{base}"

    def _service_port(
        self,
        rs: NftRuleset,
        svc: Service,
        port: ServicePort,
        endpoints: tuple[Endpoint, ...],
        ctx: ProxierContext,
    ) -> None:
        proto = port.protocol.lower()
        port_name = svc.port_name(port)
        cat: Categorized = categorize(svc, endpoints, ctx.node)
        cluster_chain, local_chain, external_chain, fw_chain = self._names(svc, port)
        external_local = cat.external_local
        has_internal, has_external = cat.has_internal, cat.has_external
        internal_chain = local_chain if cat.internal_local else cluster_chain
        external_policy_chain = local_chain if external_local else cluster_chain
        externally = port.node_port is not None or bool(svc.external_addresses)
        uses_ext = cat.has_any and externally
        uses_fw = bool(svc.load_balancer_ips and svc.load_balancer_source_ranges)
        verdict = "goto reject-chain" if not cat.has_any else "drop"
        key = f"{svc.cluster_ip} . {proto} . {port.port}"

        rs.element("cluster-ips", str(svc.cluster_ip))
        if has_internal:
            rs.element("service-ips", key, f"goto {internal_chain}")
            rs.rule(
                internal_chain,
                f"ip daddr {svc.cluster_ip} ip saddr != {ctx.cluster_cidr} "
                "jump mark-for-masquerade",
            )
        else:
            rs.element("no-endpoint-services", f'{key} comment "{port_name}"', verdict)
        for kind, ip in svc.external_addresses:
            ext_key = f"{ip} . {proto} . {port.port}"
            if cat.has_any:
                rs.element("service-ips", ext_key, f"goto {external_chain}")
            if kind == "loadbalancer" and uses_fw:
                rs.element("firewall-ips", ext_key, f"goto {fw_chain}")
            if not has_external:
                rs.element("no-endpoint-services", f'{ext_key} comment "{port_name}"', verdict)
        if uses_fw:
            allowed = [str(r) for r in svc.load_balancer_source_ranges]
            node_ip = self.node_ips.get(ctx.node)
            if node_ip and any(
                ipaddress.IPv4Address(node_ip) in r for r in svc.load_balancer_source_ranges
            ):
                allowed += [str(ip) for ip in svc.load_balancer_ips]  # the node's own calls
            rs.rule(fw_chain, f"ip saddr != {{ {', '.join(allowed)} }} drop")
        if port.node_port is not None:
            np_key = f"{proto} . {port.node_port}"
            if uses_ext:
                rs.element("service-nodeports", np_key, f"goto {external_chain}")
            if not has_external:
                rs.element("no-endpoint-nodeports", f'{np_key} comment "{port_name}"', verdict)
        if uses_ext:
            rs.chains.setdefault(external_chain, [])
            if not external_local:
                rs.rule(external_chain, "jump mark-for-masquerade")
            else:
                rs.rule(
                    external_chain,
                    f"ip saddr {ctx.cluster_cidr} goto {cluster_chain} "
                    'comment "short-circuit pod traffic"',
                )
                rs.rule(
                    external_chain,
                    "fib saddr type local jump mark-for-masquerade "
                    'comment "masquerade local traffic"',
                )
                rs.rule(
                    external_chain,
                    f"fib saddr type local goto {cluster_chain} "
                    'comment "short-circuit local traffic"',
                )
            if has_external:
                rs.rule(external_chain, f"goto {external_policy_chain}")

        affinity = svc.affinity_seconds
        if affinity is not None:
            for ep in cat.reachable:
                rs.affinity_sets[self._endpoint_names(svc, port, ep)[1]] = affinity
        if cat.cluster:
            self._to_endpoints(rs, cluster_chain, svc, port, cat.cluster)
        if cat.local:
            self._to_endpoints(rs, local_chain, svc, port, cat.local)
        for ep in cat.reachable:
            chain, aff = self._endpoint_names(svc, port, ep)
            rs.rule(chain, f"ip saddr {ep.ip} jump mark-for-masquerade")
            if affinity is not None:
                rs.rule(chain, f"update @{aff} {{ ip saddr }}")
            rs.rule(chain, f"meta l4proto {proto} dnat to {ep.address}")

    def _to_endpoints(
        self,
        rs: NftRuleset,
        chain: str,
        svc: Service,
        port: ServicePort,
        endpoints: tuple[Endpoint, ...],
    ) -> None:
        names = [self._endpoint_names(svc, port, ep) for ep in endpoints]
        if svc.affinity_seconds is not None:
            for ep_chain, aff in names:
                rs.rule(chain, f"ip saddr @{aff} goto {ep_chain}")
        vmap = ", ".join(f"{i} : goto {ep_chain}" for i, (ep_chain, _) in enumerate(names))
        rs.rule(chain, f"numgen random mod {len(endpoints)} vmap {{ {vmap} }}")

    # --- text ---------------------------------------------------------------------------------

    @staticmethod
    def full_script(rs: NftRuleset) -> str:
        """Replace the whole table in one transaction (the table may or may not exist)."""
        lines = [
            f"add table {T}",
            f"delete table {T}",
            f"table {T} {{",
            '\tcomment "rules for kube-proxy"',
        ]
        for name, timeout in sorted(rs.affinity_sets.items()):
            lines.append(
                f"\tset {name} {{ type ipv4_addr; flags dynamic,timeout; timeout {timeout}s; }}"
            )
        for name, comment in SETS.items():
            lines.append(f'\tset {name} {{ type ipv4_addr; comment "{comment}"; }}')
        for name, (kind, comment) in MAPS.items():
            lines.append(f'\tmap {name} {{ type {kind}; comment "{comment}"; }}')
        for name, rules in rs.chains.items():
            header = [_chain_header(name)] if name in BASE_CHAINS else []
            if name == "reject-chain":
                header.append(
                    'comment "helper for @no-endpoint-services / @no-endpoint-nodeports";'
                )
            lines.append(f"\tchain {name} {{")
            lines += [f"\t\t{h}" for h in header] + [f"\t\t{r}" for r in rules]
            lines.append("\t}")
        lines.append("}")
        for map_name, elements in rs.elements.items():
            if elements:
                lines.append(f"add element {T} {map_name} {{ {_element_list(elements.items())} }}")
        return "\n".join(lines) + "\n"

    @staticmethod
    def delta(old: NftRuleset, new: NftRuleset) -> list[NftChange]:
        """Only what changed from `old` to `new`, in an order the kernel accepts in one
        transaction: new sets and chains, rewritten chains, map elements, then stale chains
        and sets."""
        out: list[NftChange] = []
        for name, timeout in sorted(new.affinity_sets.items()):
            if name not in old.affinity_sets:
                out.append(NftChange("add set", name, timeout=timeout))
        # every new chain exists before any rule may jump to it
        out += [NftChange("add chain", name) for name in new.chains if name not in old.chains]
        for name, rules in new.chains.items():
            if name in old.chains:
                if old.chains[name] == rules:
                    continue
                out.append(NftChange("flush chain", name))
            out += [NftChange("add rule", name, rule=r) for r in rules]
        for map_name, elements in new.elements.items():
            before = old.elements.get(map_name, {})
            gone = tuple((k, v) for k, v in before.items() if elements.get(k) != v)
            if gone:
                out.append(NftChange("delete element", map_name, elements=gone))
            added = tuple((k, v) for k, v in elements.items() if before.get(k) != v)
            if added:
                out.append(NftChange("add element", map_name, elements=added))
        stale = [name for name in old.chains if name not in new.chains]
        out += [NftChange("flush chain", name) for name in stale]
        out += [NftChange("delete chain", name) for name in stale]
        out += [
            NftChange("delete set", name)
            for name in old.affinity_sets
            if name not in new.affinity_sets
        ]
        return out

    @classmethod
    def delta_script(cls, old: NftRuleset, new: NftRuleset) -> str:
        """The delta as an `nft -f` script."""
        return cls._script(cls.delta(old, new))

    @staticmethod
    def _script(changes: list[NftChange]) -> str:
        return "".join(change.text() + "\n" for change in changes)

    def render(self, services: list[ServiceState], ctx: ProxierContext) -> str:
        return self.full_script(self.ruleset(services, ctx))

    def apply(self, runner: Runner, text: str) -> None:
        if text.strip():
            runner.run(["nft", "-f", "-"], input=text, timeout=LOAD_TIMEOUT_S)

    def sync(self, runner: Runner, services: list[ServiceState], ctx: ProxierContext) -> str:
        """Re-render only the Services whose state changed since this node's last sync and
        send only their difference; the first sync (or after `forget`) loads everything."""
        old = self._applied.get(ctx.node)
        new: dict[str, _Fragment] = {}
        for state in services:
            previous = old.get(state.service.key) if old is not None else None
            if previous is not None and previous.source == state:
                new[state.service.key] = previous
            else:
                new[state.service.key] = _Fragment(state, self.fragment(state, ctx))
        changes: list[NftChange] | None = None
        if old is None:
            whole = self.base(ctx)
            for fragment in new.values():
                whole.merge(fragment.rules)
            text = self.full_script(whole)
        else:
            before, after = NftRuleset(), NftRuleset()
            for key in old.keys() | new.keys():
                if old.get(key) is not new.get(key):
                    if key in old:
                        before.merge(old[key].rules)
                    if key in new:
                        after.merge(new[key].rules)
            changes = self.delta(before, after)
            text = self._script(changes)
        started = time.perf_counter()
        sock = runner.netlink(NETLINK_NETFILTER) if changes else None
        batch = self._batch(changes) if changes and sock is not None else None
        if batch is not None and sock is not None:
            # a delta to a node reachable over netlink: one batch, without nft's cache dump
            batch.send(sock, runner.name)
        else:
            self.apply(runner, text)
        self.last_apply_seconds = time.perf_counter() - started
        self._applied[ctx.node] = new
        return text

    @staticmethod
    def _batch(changes: list[NftChange]) -> Batch | None:
        """The delta as one netlink batch; None when a rule is outside what nft_netlink
        compiles (a firewall chain with several source ranges: an anonymous interval set),
        and the delta then goes as an `nft -f` script."""
        batch = Batch(n.NFT_TABLE)
        try:
            for change in changes:
                change.into(batch)
        except LabError:
            return None
        return batch

    def forget(self) -> None:
        """The lab went down, or a benchmark wants a full load: the next sync of every node
        loads the whole table."""
        self._applied.clear()

    def count_rules(self, runner: Runner) -> dict[str, int]:
        doc = json.loads(self.dump(runner))["nftables"]
        return {
            "rules": sum(1 for o in doc if "rule" in o),
            "chains": sum(1 for o in doc if "chain" in o),
            "map_elements": sum(len(o["map"].get("elem", [])) for o in doc if "map" in o),
        }

    def save_host_rules(self, runner: Runner, folder: str) -> None:
        """The table is kube-proxy's own: nothing of the host's needs keeping."""

    def restore_host_rules(self, runner: Runner, folder: str) -> None:
        runner.run(["nft", "delete", "table", *T.split()], check=False)
