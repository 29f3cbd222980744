"""Claim: a pod reaches itself through its own Service (hairpin). The endpoint chain
masquerades such traffic, so when the pod answers itself it sees its node's bridge
address, not its own IP."""

from __future__ import annotations

from kubelab.lab import Lab
from kubelab.pytest_plugin import CaseRecord
from scenario_helpers import SERVICE, probe_from


def test_a_pod_reaches_itself_through_its_service(lab: Lab, record: CaseRecord) -> None:
    pod = lab.running_pods("echo")[0]
    count = 20 * len(lab.running_pods("echo"))  # P(never hitting itself) = (5/6)^120 < 1e-9
    host, port = lab.clusterip_target(SERVICE)
    results = probe_from(lab, pod.name, host, port, count)
    failed = [r["error"] for r in results if not r["ok"]]
    selves = [r for r in results if r["ok"] and r["pod"] == pod.name]
    gateway = str(lab.topology.node(pod.node).pod_gateway)
    record.metric("self_answers", len(selves), "count", f"of {count} probes from {pod.name}")
    record.expect(
        not failed, f"{len(failed)} of {count} probes failed (hairpin off?): {failed[:1]}"
    )
    record.expect(bool(selves), f"{pod.name} never reached itself through {SERVICE}")
    seen = {r["client_ip"] for r in selves}
    record.expect(
        seen <= {gateway},
        f"reaching itself, {pod.name} saw {sorted(seen)}; the "
        f"hairpin masquerade should show the bridge {gateway}",
    )
    record.verdict()
