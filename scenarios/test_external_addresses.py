"""Claim: a LoadBalancer IP (handed out on the node network, as MetalLB's L2 mode does) and
an external IP are forwarded like a NodePort: policy Cluster reaches every pod and SNATs
the client, policy Local reaches only the announcing node's pods and keeps the client's IP,
and loadBalancerSourceRanges drop every other source.

Mirrors upstream e2e (test/e2e/network/loadbalancer.go: "should be able to create
LoadBalancer Service", "should only allow access from service loadbalancer source ranges",
"should work for type=LoadBalancer" with externalTrafficPolicy Local) and kube-proxy's
TestLoadBalancer / TestExternalIPs packet-flow tables. The client reaches each address
through the node the lab announces it from (see the README's limits). Every node's rules
are audited against the table the Services call for, kinds and source ranges included, and
every probe is checked against a trace of its packet through the announcing node's rules.
"""

from __future__ import annotations

from typing import Any

from kubelab.checks import audit_nodes, crosscheck_probes
from kubelab.lab import Lab
from kubelab.pytest_plugin import CaseRecord, Resources, Traffic
from scenario_helpers import probe_from

PROBES = 120  # 6 pods: P(some pod never answers | uniform) = 6 * (5/6)^120 < 1e-9
PORT = {"name": "http", "port": 80, "target_port": 8080}


def _probe(lab: Lab, traffic: Traffic, record: CaseRecord, address: str) -> Any:
    run = traffic.probe(address, 80, max_probes=PROBES, new_connection=True, users=6)
    frame = run.samples
    failed = int((~frame["ok"]).sum())
    record.metric("probes", len(frame), "count", f"new connection per probe to {address}:80")
    record.metric("failed_probes", failed, "count")
    record.expect(
        len(frame) == PROBES and failed == 0,
        f"{failed} of {len(frame)} probes to {address}:80 failed (of {PROBES}): "
        f"{frame.loc[~frame['ok'], 'error'].head(1).tolist()}",
    )
    return frame[frame["ok"]]


def _crosscheck(lab: Lab, hosts: dict[str, Any], record: CaseRecord, ok: Any, address: str) -> None:
    """Each probe against the trace of its packet through the announcing node's rules."""
    node = _announced_by(lab, address)
    pairs = list(zip(ok["pod"], ok["client_ip"], strict=True))
    crosscheck_probes(lab, hosts[node], node, record, pairs, str(lab.topology.client.ip),
                      address, 80, "echo")  # fmt: skip


def _announced_by(lab: Lab, address: str) -> str:
    """The node the client's route for `address` leads to."""
    out = lab.runner(lab.topology.client.name).run(["ip", "route", "get", address]).stdout
    via = out.split(" via ")[1].split()[0] if " via " in out else ""
    node = next((n.name for n in lab.topology.nodes if str(n.ip) == via), None)
    assert node is not None, f"{address} is not routed to a node: {out.strip()}"
    return node


def _every_pod_and_snat(
    lab: Lab, traffic: Traffic, hosts: dict[str, Any], record: CaseRecord, address: str
) -> None:
    """Policy Cluster at an external address: every pod answers, none sees the client's
    IP, every probe agrees with the trace, every node's rules with the Services."""
    ok = _probe(lab, traffic, record, address)
    client_ip = str(lab.topology.client.ip)
    everyone = {p.name for p in lab.running_pods("echo")}
    record.metric("pods_answered", ok["pod"].nunique(), "pods", f"of {len(everyone)}")
    record.expect(
        set(ok["pod"]) == everyone,
        f"pods that never answered at {address}: {sorted(everyone - set(ok['pod']))}",
    )
    record.expect(
        client_ip not in set(ok["client_ip"]),
        f"pods saw the client's IP {client_ip} through {address}: policy Cluster must SNAT",
    )
    _crosscheck(lab, hosts, record, ok, address)
    audit_nodes(lab, hosts, record)
    record.verdict()


def test_load_balancer_ip_answers_from_the_client(
    lab: Lab, traffic: Traffic, hosts: dict[str, Any], resources: Resources, record: CaseRecord
) -> None:
    key = resources.service(
        name="echo-lb", workload="echo", type="LoadBalancer",
        ports=[PORT | {"node_port": 30180}],
    )  # fmt: skip
    address = str(lab.service(key).load_balancer_ips[0])
    record.metric("load_balancer_ip", 0, "", f"{address} from {lab.spec.network.lb_pool}")
    _every_pod_and_snat(lab, traffic, hosts, record, address)


def test_local_policy_keeps_client_ip_at_the_load_balancer_ip(
    lab: Lab, traffic: Traffic, hosts: dict[str, Any], resources: Resources, record: CaseRecord
) -> None:
    key = resources.service(
        name="echo-lb-local", workload="echo", type="LoadBalancer",
        external_traffic_policy="Local", ports=[PORT | {"node_port": 30181}],
    )  # fmt: skip
    address = str(lab.service(key).load_balancer_ips[0])
    node = _announced_by(lab, address)
    ok = _probe(lab, traffic, record, address)
    client_ip = str(lab.topology.client.ip)
    local = {p.name for p in lab.running_pods("echo", node)}
    record.metric("pods_answered", ok["pod"].nunique(), "pods", f"{len(local)} on {node}")
    record.metric("client_ip_seen_fraction", (ok["client_ip"] == client_ip).mean(), "ratio")
    record.expect(
        set(ok["pod"]) == local,
        f"answered {sorted(set(ok['pod']))}, expected only {node}'s pods {sorted(local)}",
    )
    record.expect(
        set(ok["client_ip"]) == {client_ip},
        f"pods saw {sorted(set(ok['client_ip']) - {client_ip})} instead of the client's "
        f"IP {client_ip} at {address}: traffic was SNATed",
    )
    _crosscheck(lab, hosts, record, ok, address)
    audit_nodes(lab, hosts, record)
    record.verdict()


def test_a_source_outside_the_ranges_is_refused(
    lab: Lab, hosts: dict[str, Any], resources: Resources, record: CaseRecord
) -> None:
    """The client's /32 is outside the first Service's ranges and inside the second's:
    the first drops every probe, the second answers every one."""
    client = lab.topology.client
    halves = list(lab.spec.network.node_cidr.subnets(prefixlen_diff=1))
    outside = next(str(h) for h in halves if client.ip not in h)
    inside = next(str(h) for h in halves if client.ip in h)
    shut = resources.service(
        name="echo-lb-shut", workload="echo", type="LoadBalancer",
        load_balancer_source_ranges=[outside], ports=[PORT | {"node_port": 30182}],
    )  # fmt: skip
    open_ = resources.service(
        name="echo-lb-open", workload="echo", type="LoadBalancer",
        load_balancer_source_ranges=[inside], ports=[PORT | {"node_port": 30183}],
    )  # fmt: skip
    for key, allowed, ranges in ((shut, False, outside), (open_, True, inside)):
        address = str(lab.service(key).load_balancer_ips[0])
        results = probe_from(lab, client.name, address, 80, count=5)
        answered = sum(1 for r in results if r["ok"])
        record.metric(f"{key.split('/')[1]}_answered", answered, "of 5", f"ranges {ranges}")
        record.expect(
            answered == (5 if allowed else 0),
            f"{address} (loadBalancerSourceRanges {ranges}) answered {answered} of 5 probes "
            f"from {client.ip}: expected {'all' if allowed else 'none'}",
        )
    audit_nodes(lab, hosts, record)
    record.verdict()


def test_an_external_ip_is_forwarded_like_a_nodeport(
    lab: Lab, traffic: Traffic, hosts: dict[str, Any], resources: Resources, record: CaseRecord
) -> None:
    """spec.externalIPs with policy Cluster: every pod answers and the client is SNATed
    (KUBE-EXT- marks it, as for a NodePort)."""
    pool = lab.spec.network.lb_pool
    address = str(pool.network_address - 8)  # a free address of the node network
    resources.service(name="echo-ext", workload="echo", external_ips=[address], ports=[PORT])
    _every_pod_and_snat(lab, traffic, hosts, record, address)
