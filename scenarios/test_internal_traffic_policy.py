"""Claim: internalTrafficPolicy Local keeps ClusterIP traffic on the caller's node; a pod on
a node with no local endpoint gets nothing (upstream e2e)."""

from __future__ import annotations

from kubelab.lab import Lab
from kubelab.pytest_plugin import CaseRecord, Resources
from scenario_helpers import a_pod_on, answers, clusterip_url, failures, get_from


def test_only_local_endpoints_and_nothing_without(
    lab: Lab, resources: Resources, record: CaseRecord
) -> None:
    nodes = [n.name for n in lab.topology.nodes]
    resources.workload("web", replicas=len(nodes) - 1, nodes=nodes[:-1])
    key = resources.service(
        name="web-itp",
        workload="web",
        internal_traffic_policy="Local",
        ports=[{"name": "http", "port": 80, "target_port": 8080}],
    )
    url = clusterip_url(lab, key)
    for node in nodes:
        local = {p.name for p in lab.running_pods("web", node)}
        results = get_from(lab, a_pod_on(lab, node), url, 6, timeout=1.0)
        got = set(answers(results))
        if local:
            record.expect(
                got == local and not failures(results),
                f"{node}: answered by {sorted(got)}, expected only {sorted(local)}",
            )
        else:
            record.expect(
                not got and len(failures(results)) == 6,
                f"{node} has no local endpoint but got answers from {sorted(got)}",
            )
    record.verdict()
