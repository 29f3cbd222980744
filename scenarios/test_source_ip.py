"""Claim: a NodePort with externalTrafficPolicy=Cluster SNATs, so pods never see the client's
IP but every pod in the cluster answers; with Local, only the target node's pods answer and
each sees the client's real IP.

Mirrors upstream e2e (test/e2e/network/loadbalancer.go, "should preserve source IP ...").
Each probe is one new TCP connection from the external client to node 1's NodePort, and
each is checked against a trace of its packet through node 1's rules (the pod that
answered and the address it saw must be what the trace allows).
The rules are dumped on every node through testinfra (the same way on VMs), read by the
rule auditor in any proxy mode, and compared with the table the Services and endpoints
call for; the claim's own part (masquerade or not, local endpoints only) is checked on top.
"""

from __future__ import annotations

from typing import Any

from kubelab.checks import audit_nodes, crosscheck_probes, external_policy_in_rules
from kubelab.lab import Lab
from kubelab.pytest_plugin import CaseRecord, Resources, Traffic
from scenario_helpers import SERVICE, get_from

PROBES = 300  # 6 pods: P(some pod never answers | uniform) = 6 * (5/6)^300 < 1e-22


def _probe_nodeport(lab: Lab, traffic: Traffic, record: CaseRecord) -> tuple[Any, str]:
    target = lab.topology.nodes[0]
    host, port = lab.nodeport_target(SERVICE, target.name)
    stale = lab.clear_time_wait(port)
    record.metric(
        "stale_time_wait_entries_cleared",
        stale,
        "count",
        "reused 5-tuples would keep an older NAT decision",
    )
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


def _crosscheck(lab: Lab, hosts: dict[str, Any], record: CaseRecord, ok: Any, node: str) -> None:
    host, port = lab.nodeport_target(SERVICE, node)
    seen = list(zip(ok["pod"], ok["client_ip"], strict=True))
    crosscheck_probes(lab, hosts[node], node, record, seen, str(lab.topology.client.ip),
                      host, port, "echo")  # fmt: skip


def _described(samples: Any, started: float) -> str:
    """The first few probes as pod, seen client address and time into the step."""
    return ", ".join(
        f"{r.pod} saw {r.client_ip}:{r.client_port} (user {r.user}, +{r.t - started:.2f}s)"
        for r in samples.head(3).itertuples()
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
        seen <= node_side, f"pods saw addresses {sorted(seen - node_side)}, not {target}'s"
    )
    _crosscheck(lab, hosts, record, ok, target)
    for node, table in audit_nodes(lab, hosts, record).items():
        policy, _ = external_policy_in_rules(lab, hosts[node], table, SERVICE)
        record.expect(
            policy == "Cluster",
            f"{node}: the NodePort does not mark external traffic for masquerade",
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
    _crosscheck(lab, hosts, record, ok, target)
    for node, table in audit_nodes(lab, hosts, record).items():
        policy, endpoints = external_policy_in_rules(lab, hosts[node], table, SERVICE)
        local = sorted(f"{p.ip}:{p.port}" for p in lab.running_pods("echo", node))
        record.expect(
            policy == "Local" and endpoints == local,
            f"{node}: the NodePort should reach only this node's endpoints {local}",
        )
    record.verdict()


def test_health_check_node_port_is_200_only_where_endpoints_are(
    lab: Lab, resources: Resources, record: CaseRecord
) -> None:
    """kube-proxy answers a Local LoadBalancer's healthCheckNodePort so load balancers skip
    nodes without endpoints: 200 with local endpoints, 503 without. (The API server gives
    a NodePort Service none: upstream's NeedsHealthCheck is LoadBalancer + Local only.)"""
    with_pods = [n.name for n in lab.topology.nodes][:-1]
    resources.workload("web", replicas=len(with_pods), nodes=with_pods)
    key = resources.service(
        name="web-local",
        workload="web",
        type="LoadBalancer",
        external_traffic_policy="Local",
        ports=[{"name": "http", "port": 80, "target_port": 8080, "node_port": 30090}],
    )
    port = lab.service(key).health_check_node_port
    for node in lab.topology.nodes:
        result = get_from(lab, lab.topology.client.name, f"http://{node.ip}:{port}/healthz")[0]
        status = 200 if result["ok"] else (result.get("status") or 0)
        want = 200 if node.name in with_pods else 503
        record.metric(f"health_{node.name}", status, "http status", f"port {port}")
        record.expect(
            status == want,
            f"{node.name}: healthCheckNodePort {port} answered "
            f"{status or result.get('error')}, expected {want}",
        )
    record.verdict()


def test_switching_policy_at_run_time_changes_what_pods_see(
    lab: Lab, traffic: Traffic, record: CaseRecord
) -> None:
    client = str(lab.topology.client.ip)
    host, port = lab.nodeport_target(SERVICE, lab.topology.nodes[0].name)
    for step, policy in enumerate(("Local", "Cluster", "Local")):
        latency = lab.update_service(SERVICE, external_traffic_policy=policy)
        stale = lab.clear_time_wait(port)
        record.metric(f"step{step}_stale_time_wait_entries_cleared", stale, "count")
        # every state: once in about ten full runs, the first probe after a switch to Local
        # met an older flow's NAT (another node's pod answered, masqueraded)
        lingering = lab.clear_time_wait(port, every_state=True)
        record.metric(
            f"step{step}_other_flows_cleared",
            lingering,
            "count",
            "entries of earlier connections in any other state: a reused 5-tuple keeps its NAT",
        )
        run = traffic.probe(host, port, max_probes=60, users=4)
        ok = run.samples[run.samples["ok"]]
        kept = float((ok["client_ip"] == client).mean()) if len(ok) else 0.0
        record.metric(f"step{step}_{policy}_client_ip_kept", kept, "ratio")
        record.metric(f"step{step}_{policy}_programming_latency", latency, "s")
        want = 1.0 if policy == "Local" else 0.0
        record.expect(len(ok) == 60, f"step {step} ({policy}): {60 - len(ok)} probes failed")
        odd = ok[(ok["client_ip"] == client) != (policy == "Local")]
        record.expect(
            kept == want,
            f"step {step} ({policy}): {kept:.0%} of probes kept the client IP, expected "
            f"{want:.0%}; first unexpected: {_described(odd, float(run.samples['t'].min()))}",
        )
    lab.update_service(SERVICE, external_traffic_policy="Cluster")
    record.verdict()
