"""Claim: in IPVS mode the scheduler decides the spread. rr hands new connections to the
real servers in turn, so one client's sequential connections reach every endpoint equally
often (give or take one); sh (source hashing) sends every connection from one client
address to the same real server, whatever its source port, and different addresses may
land on different ones.

kube-proxy takes the scheduler from its configuration (`--ipvs-scheduler`), so switching
it is a kube-proxy restart: the virtual servers are edited in place. IPVS mode only."""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest

from kubelab.checks import audit_nodes
from kubelab.lab import Lab
from kubelab.pytest_plugin import CaseRecord
from scenario_helpers import SERVICE, a_pod_on, answers, failures, get_from

pytestmark = pytest.mark.kubelab_requires(
    proxy_modes=["ipvs"], reason="IPVS schedulers exist only in proxy mode ipvs"
)
ROUNDS = 10  # connections per endpoint


def _nodeport_url(lab: Lab) -> str:
    host, port = lab.nodeport_target(SERVICE, lab.topology.nodes[0].name)
    return f"http://{host}:{port}/hostname"


def _schedulers_in_rules(lab: Lab, hosts: dict[str, Any], record: CaseRecord) -> set[str]:
    tables = audit_nodes(lab, hosts, record)
    return {f.scheduler for t in tables.values() for f in t.frontends if f.scheduler}


def test_rr_hands_new_connections_out_in_turn(
    lab: Lab, hosts: dict[str, Any], record: CaseRecord
) -> None:
    event = lab.dataplane.restart_proxy("rr")
    record.metric("network_programming_latency", event.seconds, "s", "kube-proxy restart")
    endpoints = {p.name for p in lab.running_pods("echo")}
    results = get_from(lab, lab.topology.client.name, _nodeport_url(lab), ROUNDS * len(endpoints))
    counts = Counter(answers(results))
    for pod in sorted(endpoints):
        record.metric(f"connections_to_{pod}", counts[pod], "count", "rr, one client")
    record.expect(not failures(results), f"{len(failures(results))} requests failed")
    record.expect(
        set(counts) == endpoints and max(counts.values()) - min(counts.values()) <= 1,
        f"rr should hand {ROUNDS} connections to each endpoint in turn, got {dict(counts)}",
    )
    record.expect(_schedulers_in_rules(lab, hosts, record) == {"rr"}, "the rules do not all say rr")
    record.verdict()


def test_sh_pins_each_source_address_to_one_endpoint(
    lab: Lab, hosts: dict[str, Any], record: CaseRecord
) -> None:
    try:
        event = lab.dataplane.restart_proxy("sh")
        record.metric("network_programming_latency", event.seconds, "s", "kube-proxy restart")
        record.expect(
            _schedulers_in_rules(lab, hosts, record) == {"sh"}, "the rules do not all say sh"
        )
        url = _nodeport_url(lab)
        callers = [lab.topology.client.name] + [a_pod_on(lab, n.name) for n in lab.topology.nodes]
        for caller in callers:
            results = get_from(lab, caller, url, 30)
            reached = set(answers(results))
            record.metric(f"endpoints_reached_from_{caller}", len(reached), "pods", "30 conns")
            record.expect(not failures(results), f"{caller}: {len(failures(results))} failed")
            record.expect(
                len(reached) == 1,
                f"{caller}: sh should pin one source address to one endpoint, got {reached}",
            )
    finally:
        lab.dataplane.restart_proxy(getattr(lab.spec.dataplane, "scheduler", "rr"))
    record.verdict()
