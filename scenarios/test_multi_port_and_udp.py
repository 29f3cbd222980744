"""Claim: a Service with several ports forwards each to its own target port, UDP as well
as TCP."""

from __future__ import annotations

from kubelab.lab import Lab
from kubelab.pytest_plugin import CaseRecord, Resources
from scenario_helpers import a_pod_on, answers, clusterip_url, failures, get_from, udp_from


def test_every_port_and_protocol_answers(
    lab: Lab, resources: Resources, record: CaseRecord
) -> None:
    key = resources.service(
        name="multi",
        workload="echo",
        ports=[
            {"name": "http", "port": 80, "target_port": 8080},
            {"name": "alt", "port": 8000, "target_port": 8080},
            {"name": "dns", "protocol": "UDP", "port": 53, "target_port": 8081},
        ],
    )
    endpoints = {p.name for p in lab.running_pods("echo")}
    caller = a_pod_on(lab, lab.topology.nodes[-1].name)
    for port in ("http", "alt"):
        results = get_from(lab, caller, clusterip_url(lab, key, port=port), 30)
        record.expect(
            not failures(results) and set(answers(results)) <= endpoints,
            f"TCP port {port}: {failures(results)[:1] or 'answers from non-endpoints'}",
        )
    vip, dns = lab.clusterip_target(key, "dns")
    replies = udp_from(lab, caller, vip, dns, "hostname", count=5, sport=0)
    record.metric("udp_answered", sum(r is not None for r in replies), "count", "of 5")
    record.expect(
        all(r in endpoints for r in replies),
        f"UDP {vip}:{dns}: answers {replies}, expected pod names",
    )
    echo = udp_from(lab, caller, vip, dns, "echo kubelab", sport=0)
    record.expect(echo == ["kubelab"], f"UDP echo answered {echo}")
    record.verdict()
