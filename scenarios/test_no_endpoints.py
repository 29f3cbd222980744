"""Claim: a Service with no endpoints refuses connections at once (REJECT), while a Local
NodePort on a node without local endpoints drops them (the client times out). Both
timings are recorded.

In IPVS mode the Local NodePort refuses too (seen on real kernels): the node keeps a
virtual server with no real server, and IPVS answers a connection it cannot schedule with
ICMP port unreachable."""

from __future__ import annotations

from kubelab.lab import Lab
from kubelab.pytest_plugin import CaseRecord, Resources
from kubelab.traffic.outcomes import Outcome
from scenario_helpers import clusterip_url, failures, get_from

REFUSE_WITHIN_S = 1.0
CLIENT_TIMEOUT_S = 1.5


def test_no_endpoints_is_refused_at_once(
    lab: Lab, resources: Resources, record: CaseRecord
) -> None:
    resources.workload("nobody", replicas=0)
    key = resources.service(
        name="empty",
        workload="nobody",
        type="NodePort",
        ports=[{"name": "http", "port": 80, "target_port": 8080, "node_port": 30093}],
    )
    caller = lab.running_pods("echo")[0].name
    for member, url in (
        (caller, clusterip_url(lab, key)),
        (
            lab.topology.client.name,
            "http://{}:{}/".format(*lab.nodeport_target(key, lab.topology.nodes[0].name)),
        ),
    ):
        results = get_from(lab, member, url, 3, timeout=3.0)
        slowest = max(r["s"] for r in results)
        record.metric(f"refusal_time_from_{member}", slowest, "s")
        refused = [r for r in results if r["outcome"] == Outcome.REFUSED]
        record.expect(
            len(refused) == 3,
            f"{member}: expected 3 refused connections to {url}, "
            f"got {[r.get('error', r.get('body')) for r in results]}",
        )
        record.expect(
            slowest < REFUSE_WITHIN_S,
            f"{member}: a refusal took {slowest:.2f}s (REJECT answers at once)",
        )
    record.verdict()


def test_local_without_local_endpoints_drops(
    lab: Lab, resources: Resources, record: CaseRecord
) -> None:
    nodes = [n.name for n in lab.topology.nodes]
    resources.workload("web", replicas=1, nodes=nodes[:1])
    key = resources.service(
        name="web-local",
        workload="web",
        type="NodePort",
        external_traffic_policy="Local",
        ports=[{"name": "http", "port": 80, "target_port": 8080, "node_port": 30094}],
    )
    host, port = lab.nodeport_target(key, nodes[-1])
    results = get_from(
        lab, lab.topology.client.name, f"http://{host}:{port}/", 2, timeout=CLIENT_TIMEOUT_S
    )
    record.metric(
        "drop_wait", max(r["s"] for r in results), "s", f"client timeout {CLIENT_TIMEOUT_S}s"
    )
    ipvs = lab.dataplane.proxy_mode == "ipvs"
    expected = Outcome.REFUSED if ipvs else Outcome.TIMEOUT
    record.expect(
        [r["outcome"] for r in results] == [expected] * 2,
        f"{nodes[-1]} has no local endpoint: expected {expected.value}s "
        f"({'ICMP from IPVS' if ipvs else 'DROP'}), got "
        f"{[r.get('error', r.get('body')) for r in results]}",
    )
    host, port = lab.nodeport_target(key, nodes[0])
    record.expect(
        not failures(get_from(lab, lab.topology.client.name, f"http://{host}:{port}/hostname")),
        f"{nodes[0]} has the endpoint but its NodePort failed",
    )
    record.verdict()
