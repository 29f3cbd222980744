"""The NetworkPolicy model (what a set of policies allows, pod to pod) on the model of
upstream e2e's truth tables (k/k test/e2e/network/netpol/network_policy.go: namespaces x,
y, z, each with pods a, b, c serving ports 80 and 81, named serve-80-tcp and serve-81-tcp):
each case's whole 9 x 9 reachability matrix, from every pod to every pod. The selector
cases are upstream's (default deny, PodSelector, NamespaceSelector with MatchExpressions,
PodSelector AND / OR NamespaceSelector, egress to another namespace, ports); ipBlock
exceptions, port ranges and the policyTypes default follow the API reference."""

from __future__ import annotations

import importlib
from typing import Any

import kubernetes_validate
import pytest

from conftest import ROOT
from kubelab.dataplanes.kubernetes import manifests
from kubelab.network_policy import Peer, allows, selects

NAMESPACES = ("x", "y", "z")
PODS = ("a", "b", "c")
LABELS = {ns: {"ns": ns} for ns in NAMESPACES}  # besides kubernetes.io/metadata.name
EVERYONE = [
    Peer(ns, {"pod": p}, f"192.0.2.{10 * (i + 1) + j}", {"serve-80-tcp": 80, "serve-81-tcp": 81})
    for i, ns in enumerate(NAMESPACES)
    for j, p in enumerate(PODS)
]


def name(peer: Peer) -> str:
    return f"{peer.namespace}/{peer.labels['pod']}"


def policy(namespace: str, **spec: Any) -> dict[str, Any]:
    return {"metadata": {"name": "p", "namespace": namespace}, "spec": spec}


def blocked(policies: list[dict[str, Any]], port: int = 80) -> set[tuple[str, str]]:
    """Every (from, to) pair the policies stop."""
    return {
        (name(s), name(d))
        for s in EVERYONE
        for d in EVERYONE
        if not allows(policies, LABELS, s, d, port)
    }


def into(target: str, only_from: set[str]) -> set[tuple[str, str]]:
    """Into `target`, everyone blocked but `only_from`."""
    return {(name(s), target) for s in EVERYONE if name(s) not in only_from}


X_A = {"matchLabels": {"pod": "a"}}


def test_no_policy_blocks_nothing() -> None:
    assert blocked([]) == set()


def test_a_default_deny_ingress_isolates_every_pod_of_its_namespace() -> None:
    deny = policy("x", podSelector={}, policyTypes=["Ingress"])
    assert blocked([deny]) == into("x/a", set()) | into("x/b", set()) | into("x/c", set())


def test_a_pod_selector_alone_admits_pods_of_the_policys_namespace_only() -> None:
    rule = policy("x", podSelector=X_A, ingress=[{"from": [{"podSelector": {"matchLabels": {
        "pod": "b"}}}]}])  # fmt: skip
    assert blocked([rule]) == into("x/a", {"x/b"})


def test_a_namespace_selector_with_match_expressions() -> None:
    rule = policy("x", podSelector=X_A, ingress=[{"from": [{"namespaceSelector": {
        "matchExpressions": [{"key": "ns", "operator": "In", "values": ["y"]}]}}]}])  # fmt: skip
    assert blocked([rule]) == into("x/a", {"y/a", "y/b", "y/c"})


def test_pod_and_namespace_selectors_in_one_peer_are_and() -> None:
    rule = policy("x", podSelector=X_A, ingress=[{"from": [{
        "namespaceSelector": {"matchExpressions": [{"key": "ns", "operator": "NotIn",
                                                    "values": ["x"]}]},
        "podSelector": {"matchLabels": {"pod": "b"}}}]}])  # fmt: skip
    assert blocked([rule]) == into("x/a", {"y/b", "z/b"})


def test_pod_and_namespace_selectors_in_two_peers_are_or() -> None:
    rule = policy("x", podSelector=X_A, ingress=[{"from": [
        {"namespaceSelector": {"matchExpressions": [{"key": "ns", "operator": "NotIn",
                                                     "values": ["x"]}]}},
        {"podSelector": {"matchLabels": {"pod": "b"}}}]}])  # fmt: skip
    assert blocked([rule]) == into("x/a", {"x/b", "y/a", "y/b", "y/c", "z/a", "z/b", "z/c"})


def test_policies_add_up_an_allowed_source_of_either_gets_through() -> None:
    from_b = policy("x", podSelector=X_A, ingress=[{"from": [{"podSelector": {"matchLabels": {
        "pod": "b"}}}]}])  # fmt: skip
    from_c = policy("x", podSelector=X_A, ingress=[{"from": [{"podSelector": {"matchLabels": {
        "pod": "c"}}}]}])  # fmt: skip
    assert blocked([from_b, from_c]) == into("x/a", {"x/b", "x/c"})


def test_a_default_deny_egress_stops_everything_its_pods_send() -> None:
    deny = policy("x", podSelector={}, policyTypes=["Egress"])
    x_pods = {f"x/{p}" for p in PODS}
    assert blocked([deny]) == {(s, d) for s in x_pods for d in map(name, EVERYONE)}


def test_egress_to_pod_and_namespace_of_another_namespace() -> None:
    rule = policy("x", podSelector=X_A, policyTypes=["Egress"], egress=[{"to": [{
        "namespaceSelector": {"matchLabels": {"ns": "y"}},
        "podSelector": {"matchLabels": {"pod": "a"}}}]}])  # fmt: skip
    assert blocked([rule]) == {("x/a", name(d)) for d in EVERYONE if name(d) != "y/a"}


def test_ports_by_number_and_by_name() -> None:
    on_81 = policy("x", podSelector=X_A, ingress=[{"ports": [{"port": 81, "protocol": "TCP"}]}])
    assert blocked([on_81], port=80) == into("x/a", set())
    assert blocked([on_81], port=81) == set()
    named = policy("x", podSelector=X_A, ingress=[{"ports": [{"port": "serve-80-tcp"}]}])
    assert blocked([named], port=80) == set()
    assert blocked([named], port=81) == into("x/a", set())
    ranged = policy("x", podSelector=X_A, ingress=[{"ports": [{"port": 79, "endPort": 80}]}])
    assert blocked([ranged], port=80) == set() and blocked([ranged], port=81)


def test_an_ip_block_with_an_exception() -> None:
    rule = policy("x", podSelector=X_A, ingress=[{"from": [{"ipBlock": {
        "cidr": "192.0.2.0/26", "except": ["192.0.2.20/30"]}}]}])  # fmt: skip
    # x's pods are .11-.13, z's .31-.33: inside; y's .21-.23: excepted
    assert blocked([rule]) == into("x/a", {"x/a", "x/b", "x/c", "z/a", "z/b", "z/c"})


def test_an_empty_ingress_rule_admits_everyone() -> None:
    assert blocked([policy("x", podSelector={}, ingress=[{}])]) == set()


def test_policy_types_default_as_the_api_server_sets_them() -> None:
    only_egress_rules = policy("x", podSelector=X_A, egress=[{"to": [{"podSelector": {}}]}])
    # no policyTypes: Ingress (no ingress rules: deny) and Egress (to x's pods only)
    outside = {name(d) for d in EVERYONE if d.namespace != "x"}
    assert blocked([only_egress_rules]) == into("x/a", set()) | {("x/a", d) for d in outside}


def test_an_unknown_operator_is_refused() -> None:
    with pytest.raises(ValueError, match="operator 'Maybe'"):
        selects({"matchExpressions": [{"key": "k", "operator": "Maybe"}]}, {})


def test_the_scenarios_cases_allow_what_their_names_say(monkeypatch: pytest.MonkeyPatch) -> None:
    """The NetworkPolicy scenario's own policies, through this model, give the tables its
    case names promise, and each policy is valid for the API (Kubernetes 1.35 schemas)."""
    monkeypatch.syspath_prepend(str(ROOT / "scenarios"))
    scenario = importlib.import_module("test_network_policy")
    target = Peer("default", {manifests.WORKLOAD_LABEL: "echo"}, "10.244.1.5", {"http": 8080})
    clients = {
        "in-a": Peer("default", {scenario.ROLE: "allowed"}, "10.244.1.10"),
        "in-d": Peer("default", {scenario.ROLE: "denied"}, "10.244.1.11"),
        "out-a": Peer(scenario.OTHER, {scenario.ROLE: "allowed"}, "10.244.2.10"),
        "out-d": Peer(scenario.OTHER, {scenario.ROLE: "denied"}, "10.244.2.11"),
    }
    through = {
        case: {n for n, c in clients.items() if allows(policies, {}, c, target, 8080)}
        for case, policies in scenario.cases("default").items()
    }
    everyone = set(clients)
    assert list(through.values()) == [everyone, {"in-a"}, {"out-a"}, everyone - {"out-d"}, everyone]
    for policies in scenario.cases("default").values():
        for p in policies:
            meta = p["metadata"]
            sent = manifests.network_policy(meta["namespace"], meta["name"], p["spec"], "lab")
            kubernetes_validate.validate(sent, "1.35.0", strict=True)
