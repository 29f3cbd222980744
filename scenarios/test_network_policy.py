"""Claim: a NetworkPolicy that admits one client label stops Service traffic from every
other pod to the selected pods, and lifting it lets them through again. Needs a
policy-enforcing CNI (Calico, Cilium; flannel enforces none), which only a real cluster
runs.

Each client pod dials the Service itself (agnhost netexec's `/dial`, asked from the
pod's node), so the source is the client pod, as the policy's `from` sees it. Enforcement
is asynchronous: the check waits, bounded, for the denied client to stop getting through.
"""

from __future__ import annotations

import json
import time
from urllib.parse import urlencode

import pytest

from kubelab.dataplanes.kubernetes.manifests import WORKLOAD_LABEL
from kubelab.lab import Lab
from kubelab.pytest_plugin import CaseRecord, Resources
from scenario_helpers import SERVICE, answers, get_from

pytestmark = pytest.mark.kubelab_requires(
    dataplane="kubernetes",
    reason="NetworkPolicy needs a policy-enforcing CNI; the reference dataplane has none",
)

POLICY = "echo-from-allowed"
TRIES = 3
ENFORCED_WITHIN_S = 30.0


def dials(lab: Lab, client: str) -> tuple[int, int]:
    """(answered, failed) of TRIES dials from a pod of workload `client` to the Service."""
    pod = lab.running_pods(client)[0]
    host, port = lab.clusterip_target(SERVICE)
    query = urlencode({"request": "hostname", "protocol": "http", "host": host, "port": port,
                       "tries": TRIES})  # fmt: skip
    (result,) = get_from(lab, pod.node, f"http://{pod.ip}:{pod.port}/dial?{query}", timeout=60)
    if not result["ok"]:
        return 0, TRIES
    doc = json.loads(answers([result])[0])
    return len(doc.get("responses") or []), len(doc.get("errors") or [])


def test_ingress_only_from_the_admitted_label(
    lab: Lab, record: CaseRecord, resources: Resources
) -> None:
    clients = {
        "allowed": resources.workload("allowed", 1),
        "denied": resources.workload("denied", 1),
    }
    for name, workload in clients.items():
        answered, failed = dials(lab, workload)
        record.expect(
            answered == TRIES, f"before the policy, {name} got {failed} of {TRIES} failed"
        )
    lab.dataplane.apply_network_policy("default", POLICY, {
        "podSelector": {"matchLabels": {WORKLOAD_LABEL: "echo"}},
        "policyTypes": ["Ingress"],
        "ingress": [{"from": [{"podSelector": {"matchLabels": {WORKLOAD_LABEL: "allowed"}}}]}],
    })  # fmt: skip
    try:
        started = time.monotonic()
        while dials(lab, clients["denied"])[0] and time.monotonic() - started < ENFORCED_WITHIN_S:
            time.sleep(1)
        record.metric("enforced_after", time.monotonic() - started, "s", "bounded poll")
        answered, failed = dials(lab, clients["denied"])
        record.expect(answered == 0, f"under the policy, denied still got {answered} answers")
        answered, failed = dials(lab, clients["allowed"])
        record.expect(answered == TRIES, f"under the policy, allowed got {failed} failed")
    finally:
        lab.dataplane.delete_network_policy("default", POLICY)
    started = time.monotonic()
    while (
        dials(lab, clients["denied"])[0] < TRIES and time.monotonic() - started < ENFORCED_WITHIN_S
    ):
        time.sleep(1)
    answered, _ = dials(lab, clients["denied"])
    record.expect(answered == TRIES, "after the policy went, denied still could not get through")
    record.verdict()
