"""Claim: a ClusterIP reaches every endpoint from every pod and every node, picks endpoints
uniformly at random (iptables: 1/n probabilities; nftables: numgen; IPVS: the scheduler),
and lives on no interface (iptables, nftables) or only on kube-ipvs0 (IPVS)."""

from __future__ import annotations

from typing import Any

from kubelab.checks import crosscheck_probes, uniform_spread
from kubelab.lab import Lab
from kubelab.pytest_plugin import CaseRecord
from scenario_helpers import SERVICE, a_pod_on, answers, clusterip_url, failures, get_from

PER_ENDPOINT = 200  # requests per endpoint for the chi-square test


def test_reachable_from_every_pod_and_node(lab: Lab, record: CaseRecord) -> None:
    url = clusterip_url(lab, SERVICE)
    endpoints = {p.name for p in lab.running_pods("echo")}
    count = 20 * len(endpoints)  # P(an endpoint never answers) < n * (1 - 1/n)^count
    for node in lab.topology.nodes:
        for member in (a_pod_on(lab, node.name), node.name):
            results = get_from(lab, member, url, count)
            seen = set(answers(results))
            record.metric(
                f"endpoints_seen_from_{member}", len(seen), "pods", f"of {len(endpoints)}"
            )
            record.expect(
                not failures(results),
                f"{member}: {len(failures(results))} requests failed: {failures(results)[:1]}",
            )
            record.expect(
                seen == endpoints,
                f"{member}: endpoints that never answered: {sorted(endpoints - seen)}",
            )
    record.verdict()


def test_spread_is_uniform(lab: Lab, hosts: dict[str, Any], record: CaseRecord) -> None:
    """...and each answer is one the trace of the request's packet through the caller's
    node allows."""
    endpoints = {p.name for p in lab.running_pods("echo")}
    n = PER_ENDPOINT * len(endpoints)
    node = lab.topology.nodes[0].name
    caller = a_pod_on(lab, node)
    results = get_from(lab, caller, clusterip_url(lab, SERVICE), n)
    record.metric("requests", n, "count", f"new connection each, from {caller}")
    record.expect(not failures(results), f"{len(failures(results))} requests failed")
    uniform_spread(answers(results), endpoints, record)
    source = next(p for p in lab.running_pods("echo", node) if p.name == caller)
    host, port = lab.clusterip_target(SERVICE)
    pairs = [(pod, None) for pod in answers(results)]
    crosscheck_probes(lab, hosts[node], node, record, pairs, str(source.ip), host, port, "echo")
    record.verdict()


def test_clusterip_is_on_no_interface(lab: Lab, record: CaseRecord) -> None:
    vip = str(lab.service(SERVICE).cluster_ip)
    for node in lab.topology.nodes:
        lines = [
            line
            for line in lab.exec(node.name, ["ip", "-o", "addr"]).stdout.splitlines()
            if f" {vip}/" in line
        ]
        if lab.dataplane.proxy_mode == "ipvs":
            record.expect(
                bool(lines) and all(" kube-ipvs0 " in f" {x} " for x in lines),
                f"{node.name}: the ClusterIP {vip} is not (only) on kube-ipvs0: {lines}",
            )
        else:
            record.expect(
                not lines, f"{node.name}: the ClusterIP {vip} is on an interface: {lines}"
            )
    record.verdict()
