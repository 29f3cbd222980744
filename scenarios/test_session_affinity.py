"""Claim: sessionAffinity ClientIP pins a client to one pod (upstream e2e: of 16 requests
the last 15 reach one pod); None spreads; the timeout expires the stickiness; in IPVS mode
it is a persistent virtual server.

Found on real kernels: in IPVS mode the timeout does not expire the stickiness while the
client keeps coming back. IPVS keeps a persistence template alive as long as connections
it placed are in IPVS's own connection table (the template is re-armed for 60 s at a time
meanwhile), and closed connections stay there in TIME_WAIT for the tcpfin timeout (120 s by
default), so rounds a few seconds apart stay on one pod. The iptables and nftables modes
expire it on time."""

from __future__ import annotations

import time
from typing import Any

import pytest

from kubelab.checks import audit_nodes
from kubelab.lab import Lab
from kubelab.pytest_plugin import CaseRecord, Resources
from scenario_helpers import answers, failures, get_from

TIMEOUT_S = 2
ROUNDS = 5  # 6 pods: P(every round re-picks the same pod | expiry works) = (1/6)^4


def _sticky(resources: Resources, affinity: str) -> str:
    return resources.service(
        name=f"sticky-{affinity.lower()}",
        workload="echo",
        type="NodePort",
        session_affinity=affinity,
        session_affinity_timeout_s=TIMEOUT_S,
        ports=[
            {
                "name": "http",
                "port": 80,
                "target_port": 8080,
                "node_port": 30091 if affinity == "ClientIP" else 30092,
            }
        ],
    )


def _url(lab: Lab, key: str) -> str:
    host, port = lab.nodeport_target(key, lab.topology.nodes[1].name)
    return f"http://{host}:{port}/hostname"


def test_client_ip_pins_and_the_timeout_expires(
    lab: Lab, resources: Resources, hosts: dict[str, Any], record: CaseRecord
) -> None:
    key = _sticky(resources, "ClientIP")
    firsts = []
    for i in range(ROUNDS):
        results = get_from(lab, lab.topology.client.name, _url(lab, key), 16)
        names = answers(results)
        record.expect(not failures(results), f"round {i}: {len(failures(results))} failed")
        pinned = len(set(names[1:])) == 1
        record.expect(
            pinned,
            f"round {i}: the last 15 of 16 requests reached "
            f"{len(set(names[1:]))} pods, expected 1: {sorted(set(names))}",
        )
        firsts.append(names[0] if names else "")
        time.sleep(TIMEOUT_S + 0.6)
    record.metric(
        "distinct_pods_after_expiry",
        len(set(firsts)),
        "pods",
        f"first answer of {ROUNDS} rounds, {TIMEOUT_S}s timeout between",
    )
    if lab.dataplane.proxy_mode == "ipvs":
        node = lab.topology.nodes[1].name
        connections = hosts[node].check_output("ipvsadm -L -n -c")
        # a persistence template is the entry whose source port is 0
        rows = [line.split() for line in connections.splitlines()]
        templates = sum(len(r) >= 6 and r[0] == "TCP" and r[3].endswith(":0") for r in rows)
        record.metric("ipvs_persistence_templates", templates, "entries", f"on {node}")
        record.expect(
            len(set(firsts)) == 1 and templates >= 1,
            f"IPVS: expected the persistence template to outlive its {TIMEOUT_S}s timeout "
            f"while closed connections linger; first answers {firsts}, {templates} templates",
        )
    else:
        record.expect(
            len(set(firsts)) >= 2,
            f"stickiness never expired: {ROUNDS} rounds {TIMEOUT_S + 0.6}s apart all "
            f"went to {firsts[0]}",
        )
    for node, table in audit_nodes(lab, hosts, record).items():
        port = lab.service(key).ports[0]
        front = table.find("nodeport", None, "tcp", port.node_port or 0)
        record.expect(
            front is not None and front.affinity_seconds == TIMEOUT_S,
            f"{node}: the rules show no {TIMEOUT_S}s affinity for {key}",
        )
    record.verdict()


def test_none_spreads(lab: Lab, resources: Resources, record: CaseRecord) -> None:
    key = _sticky(resources, "None")
    names = answers(get_from(lab, lab.topology.client.name, _url(lab, key), 16))
    record.metric("distinct_pods", len(set(names)), "pods", "of 16 requests")
    record.expect(len(set(names)) > 1, "without affinity all 16 requests reached one pod")
    record.verdict()


@pytest.mark.kubelab_requires(proxy_modes=["ipvs"], reason="persistence is an IPVS notion")
def test_ipvs_shows_a_persistent_virtual_server(
    lab: Lab, resources: Resources, hosts: dict[str, Any], record: CaseRecord
) -> None:
    key = _sticky(resources, "ClientIP")
    vip = str(lab.service(key).cluster_ip)
    for node, host in hosts.items():
        listing = host.check_output("ipvsadm -Ln")
        line = next((x for x in listing.splitlines() if f"{vip}:80" in x), "")
        record.expect(
            f"persistent {TIMEOUT_S}" in line,
            f"{node}: virtual server {vip}:80 is not persistent: {line!r}",
        )
    record.verdict()
