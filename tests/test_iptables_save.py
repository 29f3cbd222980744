"""The iptables-save rule parser, on real dumps captured from lab nodes (tests/data)."""

from __future__ import annotations

from conftest import DATA
from kubelab import naming
from kubelab.rules.iptables_save import parse_rule, parse_rules
from kubelab.rules.table import effective_weights

SVC = naming.svc_chain("default/echo:http", "TCP")
SVL = naming.svl_chain("default/echo:http", "TCP")


def test_reads_the_probability_chain_of_a_real_dump() -> None:
    rules = parse_rules((DATA / "lab-node1-local.iptables-save").read_text())
    jumps = [r for r in rules if r.chain == SVC and (r.target or "").startswith("KUBE-SEP-")]
    assert [r.probability_text for r in jumps] == [
        "0.16666666651",
        "0.20000000019",
        "0.25000000000",
        "0.33333333349",
        "0.50000000000",
        None,
    ]
    assert jumps[0].comment == "default/echo:http -> 10.244.1.2:8080"
    weights = effective_weights([r.probability for r in jumps])
    assert max(abs(w - 1 / 6) for w in weights) < 1e-8


def test_local_chain_holds_only_the_nodes_own_endpoints() -> None:
    for node, first in (("node1", "10.244.1.2"), ("node2", "10.244.2.2")):
        rules = parse_rules((DATA / f"lab-{node}-local.iptables-save").read_text())
        svl = [r for r in rules if r.chain == SVL]
        assert len(svl) == 2
        assert svl[0].comment == f"default/echo:http -> {first}:8080"
        assert svl[0].probability_text == "0.50000000000" and svl[1].probability is None


def test_conditions_exclude_comment_and_target() -> None:
    rule = parse_rule('-A KUBE-EXT-X -m comment --comment "masquerade traffic" -j KUBE-MARK-MASQ')
    assert rule is not None and rule.conditions == () and rule.target == "KUBE-MARK-MASQ"
    rule = parse_rule("-A KUBE-EXT-X -m comment --comment x -m addrtype --src-type LOCAL -j Y")
    assert rule is not None and rule.conditions == ("-m", "addrtype", "--src-type", "LOCAL")
    assert rule.has("--src-type", "LOCAL")


def test_counters_and_non_rule_lines() -> None:
    assert parse_rule("[12:720] -A KUBE-SERVICES -j KUBE-NODEPORTS").target == "KUBE-NODEPORTS"  # type: ignore[union-attr]
    for line in (":KUBE-SERVICES - [0:0]", "*nat", "COMMIT", "# comment", "-N X", ""):
        assert parse_rule(line) is None
