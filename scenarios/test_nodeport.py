"""Claim: a NodePort answers on every node and reaches pods on other nodes; its path is
NodePort -> service chain -> endpoint (read from the rules); under policy Cluster the pods
see a node-side address, never the client's. Every probe is also checked against a trace of
its packet through the node's rules."""

from __future__ import annotations

from typing import Any

from kubelab.checks import audit_nodes, crosscheck_probes
from kubelab.lab import Lab
from kubelab.pytest_plugin import CaseRecord, Traffic
from scenario_helpers import SERVICE

PROBES_PER_NODE = 120  # 6 pods: P(one never answers) = 6 * (5/6)^120 < 1e-8


def test_every_node_answers_and_reaches_other_nodes(
    lab: Lab, traffic: Traffic, hosts: dict[str, Any], record: CaseRecord
) -> None:
    lab.update_service(SERVICE, external_traffic_policy="Cluster")
    endpoints = {p.name: p.node for p in lab.running_pods("echo")}
    client = str(lab.topology.client.ip)
    for node in lab.topology.nodes:
        host, port = lab.nodeport_target(SERVICE, node.name)
        run = traffic.probe(host, port, max_probes=PROBES_PER_NODE, users=4)
        ok = run.samples[run.samples["ok"]]
        answered = set(ok["pod"])
        remote = {p for p in answered if endpoints.get(p) != node.name}
        record.metric(f"pods_answered_via_{node.name}", len(answered), "pods")
        record.expect(
            len(ok) == PROBES_PER_NODE,
            f"{node.name}: {PROBES_PER_NODE - len(ok)} probes to {host}:{port} failed",
        )
        record.expect(
            answered == set(endpoints),
            f"{node.name}: pods that never answered: {sorted(set(endpoints) - answered)}",
        )
        record.expect(bool(remote), f"{node.name}: the NodePort reached no pod on another node")
        pairs = list(zip(ok["pod"], ok["client_ip"], strict=True))
        crosscheck_probes(lab, hosts[node.name], node.name, record, pairs, client, host, port,
                          "echo")  # fmt: skip
        seen = set(ok["client_ip"])
        record.expect(
            client not in seen and seen <= lab.node_addresses(node.name),
            f"{node.name}: pods saw {sorted(seen)}, expected only "
            f"{sorted(lab.node_addresses(node.name))}",
        )
    # the path, read from the rules: NodePort -> service -> every endpoint
    svc_port = lab.service(SERVICE).ports[0]
    for node, table in audit_nodes(lab, hosts, record).items():
        front = table.find("nodeport", None, svc_port.protocol.lower(), svc_port.node_port or 0)
        record.expect(
            front is not None and len(front.endpoints) == len(endpoints),
            f"{node}: the rules do not take NodePort {svc_port.node_port} to the "
            f"{len(endpoints)} endpoints",
        )
    record.verdict()
