"""Claim: a NodePort with externalTrafficPolicy=Cluster SNATs, so pods never see the client's
IP but every pod in the cluster answers; with Local, only the target node's pods answer and
each sees the client's real IP.

Mirrors upstream e2e (test/e2e/network/loadbalancer.go, "should preserve source IP ...").
Each probe is one new TCP connection from the external client to node 1's NodePort.
The rules are checked on every node through testinfra, the same way on VMs.
"""

from __future__ import annotations

from typing import Any

from kubelab import naming
from kubelab.lab import Lab
from kubelab.pytest_plugin import CaseRecord, Traffic
from kubelab.rules.iptables_save import parse_rules

SERVICE = "default/echo"
PROBES = 300  # 6 pods: P(some pod never answers | uniform) = 6 * (5/6)^300 < 1e-22


def _probe_nodeport(lab: Lab, traffic: Traffic, record: CaseRecord) -> tuple[Any, str]:
    target = lab.topology.nodes[0]
    host, port = lab.nodeport_target(SERVICE, target.name)
    run = traffic.probe(host, port, max_probes=PROBES, new_connection=True, users=10)
    frame = run.samples
    failed = int((~frame["ok"]).sum())
    record.metric("probes", len(frame), "count", f"new connection per probe to {host}:{port}")
    record.metric("failed_probes", failed, "count")
    record.metric("probe_rate", len(frame) / max(run.elapsed_s, 1e-9), "probes/s")
    record.metric("latency_p50", frame["latency_ms"].median(), "ms")
    record.expect(len(frame) == PROBES, f"only {len(frame)} of {PROBES} probes finished")
    record.expect(
        failed == 0,
        f"{failed} of {len(frame)} probes failed: "
        f"{frame.loc[~frame['ok'], 'error'].head(1).tolist()}",
    )
    return frame[frame["ok"]], target.name


def _rule_chains(host: Any, chain: str) -> list[Any]:
    return parse_rules("\n".join(host.iptables.rules("nat", chain)))


def _check_service_chain(hosts: dict[str, Any], lab: Lab, record: CaseRecord) -> None:
    """On every node: one KUBE-SEP jump per endpoint with kube-proxy's 1/(n-i) probabilities."""
    svc = lab.service(SERVICE)
    name = svc.port_name(svc.ports[0])
    endpoints = lab.service_state(SERVICE).endpoints
    n = len(endpoints)
    for node, host in hosts.items():
        rules = [
            r
            for r in _rule_chains(host, naming.svc_chain(name, "TCP"))
            if r.target and r.target.startswith(naming.SEP_PREFIX)
        ]
        record.expect(
            len(rules) == n, f"{node}: KUBE-SVC chain has {len(rules)} KUBE-SEP jumps, expected {n}"
        )
        for i, rule in enumerate(rules[:n]):
            want = None if i == n - 1 else 1.0 / (n - i)
            ok = (
                (rule.probability is None)
                if want is None
                else (rule.probability is not None and abs(rule.probability - want) < 1e-6)
            )
            record.expect(
                ok,
                f"{node}: endpoint {i} probability {rule.probability_text}, "
                f"expected {naming.probability(i, n) if want else 'none'}",
            )


def test_cluster_policy_snats(
    lab: Lab, traffic: Traffic, hosts: dict[str, Any], record: CaseRecord
) -> None:
    latency = lab.update_service(SERVICE, external_traffic_policy="Cluster")
    record.metric("network_programming_latency", latency, "s")
    ok, target = _probe_nodeport(lab, traffic, record)
    client_ip = str(lab.topology.client.ip)
    expected_pods = {p.name for p in lab.running_pods("echo")}
    answered = set(ok["pod"])
    seen = set(ok["client_ip"])
    node_side = lab.node_addresses(target)
    record.metric("pods_answered", len(answered), "pods", f"of {len(expected_pods)}")
    record.metric("client_ip_seen_fraction", (ok["client_ip"] == client_ip).mean(), "ratio")
    record.expect(
        answered == expected_pods, f"pods that never answered: {sorted(expected_pods - answered)}"
    )
    record.expect(
        client_ip not in seen,
        f"{int((ok['client_ip'] == client_ip).sum())} probes reached a pod with the "
        f"client's IP {client_ip}: traffic was not SNATed (masquerade missing)",
    )
    record.expect(
        seen <= node_side,
        f"pods saw addresses {sorted(seen - node_side)}, not {target}'s {sorted(node_side)}",
    )

    _check_service_chain(hosts, lab, record)
    svc = lab.service(SERVICE)
    name = svc.port_name(svc.ports[0])
    for node_name, host in hosts.items():
        ext = _rule_chains(host, naming.ext_chain(name, "TCP"))
        record.expect(
            any(r.target == naming.KUBE_MARK_MASQ and not r.conditions for r in ext),
            f"{node_name}: KUBE-EXT chain does not mark all external traffic for masquerade",
        )
    record.verdict()


def test_local_policy_keeps_client_ip(
    lab: Lab, traffic: Traffic, hosts: dict[str, Any], record: CaseRecord
) -> None:
    latency = lab.update_service(SERVICE, external_traffic_policy="Local")
    record.metric("network_programming_latency", latency, "s")
    ok, target = _probe_nodeport(lab, traffic, record)
    client_ip = str(lab.topology.client.ip)
    local_pods = {p.name for p in lab.running_pods("echo", target)}
    answered = set(ok["pod"])
    seen = set(ok["client_ip"])
    record.metric("pods_answered", len(answered), "pods", f"{len(local_pods)} on {target}")
    record.metric("client_ip_seen_fraction", (ok["client_ip"] == client_ip).mean(), "ratio")
    record.expect(
        answered == local_pods,
        f"answered {sorted(answered)}, expected only {target}'s pods {sorted(local_pods)}",
    )
    record.expect(
        seen == {client_ip},
        f"pods saw {sorted(seen - {client_ip})} instead of the client's IP {client_ip}: "
        "traffic was SNATed",
    )

    _check_service_chain(hosts, lab, record)
    svc = lab.service(SERVICE)
    name = svc.port_name(svc.ports[0])
    for node_name, host in hosts.items():
        local_eps = lab.running_pods("echo", node_name)
        svl = [
            r
            for r in _rule_chains(host, naming.svl_chain(name, "TCP"))
            if r.target and r.target.startswith(naming.SEP_PREFIX)
        ]
        record.expect(
            len(svl) == len(local_eps),
            f"{node_name}: KUBE-SVL chain has {len(svl)} endpoints, expected its "
            f"{len(local_eps)} local ones",
        )
        ext = _rule_chains(host, naming.ext_chain(name, "TCP"))
        unconditional_masq = [
            r for r in ext if r.target == naming.KUBE_MARK_MASQ and not r.conditions
        ]
        record.expect(
            not unconditional_masq,
            f"{node_name}: KUBE-EXT masquerades external traffic under Local policy",
        )
    record.verdict()
