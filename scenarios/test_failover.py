"""Claim: endpoints fail over when pods die. Under Locust load on a NodePort, with a new
connection per probe and with keep-alive: kill a pod, delete a pod gracefully, fail a
node. Measured from per-probe samples: failed probes, the blackout window (first to last
failure) and the recovery time (change to last failure). A graceful delete must lose
nothing; after every change the load must run clean again before it ends."""

from __future__ import annotations

import time

import pytest

from kubelab.checks import failover_timeline, record_failover
from kubelab.lab import Lab
from kubelab.pytest_plugin import CaseRecord, Traffic
from scenario_helpers import SERVICE

LOAD_S = 6.0
CHANGE_AFTER_S = 1.0


def _act(lab: Lab, action: str) -> str:
    nodes = [n.name for n in lab.topology.nodes]
    if action == "kill_pod":
        victim = lab.running_pods("echo", nodes[1])[0].name
        lab.kill_pod(victim)
        return victim
    if action == "delete_pod":
        victim = lab.running_pods("echo", nodes[1])[0].name
        lab.delete_pod(victim, grace_s=1.0, wait=False)
        return victim
    lab.fail_node(nodes[-1])
    return nodes[-1]


def _restore(lab: Lab, action: str, victim: str) -> None:
    lab.settle()
    if action == "fail_node":
        lab.heal_node(victim)
        lab.settle()
    else:
        lab.scale("echo", len(lab.topology.nodes) * 2)


@pytest.mark.parametrize("connection", ["new", "keepalive"])
# graceful deletes run first: after two pod kills a later case has shown one timed-out probe
# in ~6,500 that the delete did not cause (not yet explained; see the README's limits)
@pytest.mark.parametrize("action", ["delete_pod", "kill_pod", "fail_node"])
def test_failover_under_load(
    lab: Lab, traffic: Traffic, record: CaseRecord, action: str, connection: str
) -> None:
    lab.update_service(SERVICE, external_traffic_policy="Cluster")
    host, port = lab.nodeport_target(SERVICE, lab.topology.nodes[0].name)
    # earlier load leaves thousands of TIME_WAIT entries; a probe reusing one of those
    # 5-tuples would keep its old DNAT target (possibly the victim) and blur the measurement
    record.metric("stale_time_wait_entries_cleared", lab.clear_time_wait(port), "count")
    load = traffic.start(
        host,
        port,
        max_probes=50_000,
        users=5,
        duration_s=LOAD_S,
        new_connection=connection == "new",
    )
    time.sleep(CHANGE_AFTER_S + 1.0)  # Locust needs about a second to start
    change_at = time.time()
    victim = _act(lab, action)
    try:
        run = load.wait()
    finally:
        _restore(lab, action, victim)
    outcome = failover_timeline(run.samples, change_at)
    record_failover(record, outcome)
    record.metric("change_at", change_at, "epoch s", "when the change was made")
    # the reference dataplane's own setting; on a real cluster the kubelet and the node
    # lifecycle controller decide, and the samples show it
    delay = getattr(lab.spec.dataplane, "endpoint_detection_delay_s", None)
    if delay is not None:
        record.metric("detection_delay", delay, "s", f"{action} {victim}")
    before = outcome.per_second[outcome.per_second["second"] < 0]
    record.expect(
        not before.empty and before["probes"].sum() > 0,
        "no load ran before the change; the measurement is empty",
    )
    if action == "delete_pod":
        record.expect(
            outcome.failed == 0,
            f"a graceful delete of {victim} lost {outcome.failed} of {outcome.probes} "
            "probes; it must lose none",
        )
    last = outcome.per_second.iloc[-1] if len(outcome.per_second) else None
    record.expect(
        last is not None and int(last["failed"]) == 0,
        f"{action} {victim}: the load was still failing in its last second "
        f"({outcome.failed} failed, recovery {outcome.recovery_s:.1f}s)",
    )
    record.verdict()
