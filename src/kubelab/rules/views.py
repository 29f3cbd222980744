"""What one node does for one Service port, read from its rules in any proxy mode.

A small, mode-independent view scenarios can assert on: which endpoints cluster traffic
may reach and with which share, which endpoints Local traffic may reach, and whether
external traffic is masqueraded unconditionally. (The full ForwardingTable and the rule
auditor build on the same parsers.)
"""

from __future__ import annotations

from dataclasses import dataclass

from kubelab import naming
from kubelab.rules.iptables_save import effective_weights, parse_rules
from kubelab.rules.nft import NftDump, load_nft_json


@dataclass(frozen=True)
class ServicePortView:
    cluster: tuple[str, ...]  # "ip:port" in the order the rules try them
    cluster_weights: tuple[float, ...]
    probabilities: tuple[str | None, ...]  # as printed (iptables); empty for nftables
    local: tuple[str, ...]
    external_masquerades_all: bool


def _sep_target(rules: list, chain: str) -> str | None:  # type: ignore[type-arg]
    for r in rules:
        if r.chain == chain and r.target == "DNAT":
            return str(r.target_args[r.target_args.index("--to-destination") + 1])
    return None


def view_iptables(save_text: str, port_name: str, protocol: str) -> ServicePortView:
    """From `iptables-save` (nat table) of a node."""
    rules = parse_rules(save_text)

    def chain_backends(chain: str) -> tuple[list[str], list[str | None], list[float]]:
        jumps = [
            r
            for r in rules
            if r.chain == chain
            and (r.target or "").startswith(naming.SEP_PREFIX)
            and "--rcheck" not in r.args  # affinity checks come before the real choice
        ]
        targets = [_sep_target(rules, r.target or "") or "?" for r in jumps]
        probs = [r.probability_text for r in jumps]
        return targets, probs, effective_weights([r.probability for r in jumps])

    cluster, probs, weights = chain_backends(naming.svc_chain(port_name, protocol))
    local, _, _ = chain_backends(naming.svl_chain(port_name, protocol))
    ext = [r for r in rules if r.chain == naming.ext_chain(port_name, protocol)]
    masq_all = any(r.target == naming.KUBE_MARK_MASQ and not r.conditions for r in ext)
    return ServicePortView(tuple(cluster), tuple(weights), tuple(probs), tuple(local), masq_all)


def _dnat_of(dump: NftDump, chain: str) -> str:
    return next((d for r in dump.rules(chain) if (d := r.dnat()) is not None), "?")


def view_nftables(
    json_text: str, namespace: str, name: str, protocol: str, port: str | None
) -> ServicePortView:
    """From `nft -j list ruleset` of a node."""
    dump: NftDump = load_nft_json(json_text)
    base = naming.nft_service_base(namespace, name, protocol, port)

    def backends(chain: str) -> list[str]:
        for rule in dump.rules(chain):
            targets = rule.numgen_targets()
            if targets is not None:
                return [_dnat_of(dump, t) for t in targets]
        return []

    cluster = backends(f"service-{base}")
    local = backends(f"local-{base}")
    ext = dump.rules(f"external-{base}")
    masq_all = any(
        r.unconditional
        and r.verdict() == ("jump", "mark-for-masquerade")
        and not any("fib" in str(e) for e in r.expr)
        for r in ext
    )
    weights = tuple(1.0 / len(cluster) for _ in cluster)
    return ServicePortView(tuple(cluster), weights, (), tuple(local), masq_all)
