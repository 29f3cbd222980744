"""Every Service behaviour of the reference dataplane, shown by real requests, per proxy mode.

The lab: 4 nodes; workloads with 1, 3 and 7 replicas spread round-robin (so node4 has no
`three` pod); Services for ClusterIP/NodePort, both traffic policies, affinity, no
endpoints, several ports with UDP, headless. IPVS runs only where the kernel has ip_vs.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from conftest import local_spec_data
from helpers import bodies, http_get, udp_ask
from kubelab.lab import Lab
from kubelab.rules.audit import audit
from kubelab.rules.expected import diff_tables, expected_table
from kubelab.spec import ServiceSpec, parse_spec
from kubelab.traffic.outcomes import Outcome

pytestmark = [pytest.mark.root, pytest.mark.lab]

AFFINITY_TIMEOUT = 2


def behaviour_spec(mode: str, pod_network: str) -> dict[str, Any]:
    def port(
        name: str, number: int, node_port: int | None = None, proto: str = "TCP", target: int = 8080
    ) -> dict[str, Any]:
        p = {"name": name, "protocol": proto, "port": number, "target_port": target}
        return p | ({"node_port": node_port} if node_port else {})

    data = local_spec_data(name="klbeh")
    data["dataplane"] = {
        "kind": "reference",
        "proxy_mode": mode,
        "pod_network": pod_network,
        "endpoint_detection_delay_s": 0.5,
    }
    data["nodes"] = [{"name": f"node{i}"} for i in range(1, 5)]
    data["workloads"] = [
        {"name": "one", "replicas": 1},
        {"name": "three", "replicas": 3},
        {"name": "seven", "replicas": 7},
        {"name": "none", "replicas": 0},
        {"name": "churn", "replicas": 4},
    ]
    data["services"] = [
        {"name": "one", "workload": "one", "type": "NodePort", "ports": [port("http", 80, 30101)]},
        {
            "name": "three-local",
            "workload": "three",
            "type": "LoadBalancer",  # a healthCheckNodePort: only a LoadBalancer gets one
            "external_traffic_policy": "Local",
            "ports": [port("http", 80, 30103)],
        },
        {
            "name": "seven",
            "workload": "seven",
            "type": "NodePort",
            "ports": [port("http", 80, 30107)],
        },
        {
            "name": "itp-local",
            "workload": "three",
            "internal_traffic_policy": "Local",
            "ports": [port("http", 80)],
        },
        {
            "name": "sticky",
            "workload": "seven",
            "type": "NodePort",
            "session_affinity": "ClientIP",
            "session_affinity_timeout_s": AFFINITY_TIMEOUT,
            "ports": [port("http", 80, 30110)],
        },
        {
            "name": "empty",
            "workload": "none",
            "type": "NodePort",
            "ports": [port("http", 80, 30111)],
        },
        {
            "name": "multi",
            "workload": "seven",
            "ports": [
                port("http", 80),
                port("alt", 8000),
                port("dns", 53, proto="UDP", target=8081),
            ],
        },
        {
            "name": "headless",
            "workload": "three",
            "cluster_ip": "None",
            "ports": [port("http", 80)],
        },
        {
            "name": "churn",
            "workload": "churn",
            "type": "NodePort",
            "ports": [port("http", 80, 30120), port("dns", 53, 30121, proto="UDP", target=8081)],
        },
    ]
    return data


LABS = [
    pytest.param(("iptables", "host-gw"), id="iptables-hostgw"),
    pytest.param(("nftables", "vxlan"), id="nftables-vxlan"),
    pytest.param(("iptables", "vxlan"), id="iptables-vxlan"),
    pytest.param(
        ("ipvs", "host-gw"),
        id="ipvs-hostgw",
        marks=pytest.mark.skipif(
            not Path("/proc/net/ip_vs").exists(),
            reason="IPVS: the kernel has no ip_vs (no /proc/net/ip_vs); runs in VM labs",
        ),
    ),
]


@pytest.fixture(scope="module", params=LABS)
def lab(request: pytest.FixtureRequest) -> Iterator[Lab]:
    mode, pod_network = request.param
    lab = Lab(parse_spec(behaviour_spec(mode, pod_network), "behaviours"))
    lab.up()
    try:
        yield lab
    finally:
        lab.down()


def url(lab: Lab, key: str, path: str = "/hostname", port: str | None = None) -> str:
    host, number = lab.clusterip_target(key, port)
    return f"http://{host}:{number}{path}"


def pods_of(lab: Lab, workload: str, node: str | None = None) -> set[str]:
    return {p.name for p in lab.running_pods(workload, node)}


def a_pod_on(lab: Lab, node: str) -> str:
    """Any running pod on `node` to send requests from."""
    return next(p.name for w in lab.spec.workloads for p in lab.running_pods(w.name, node))


def audit_nodes(lab: Lab) -> None:
    """Every node's rules, read by the auditor in each format the mode has, equal exactly
    the table the Services and endpoints call for."""
    mode = lab.dataplane.proxy_mode
    objects = lab.objects()
    for node in lab.topology.nodes:
        table = audit(lab.dump_rules(node.name), node.name)
        assert diff_tables(expected_table(objects, node.name, mode), table) == [], node.name
        assert table.warnings == [], node.name
        if mode == "nftables":
            as_json = audit(lab.exec(node.name, ["nft", "-j", "list", "ruleset"]).stdout)
            assert as_json.to_json() == table.to_json()
        if mode == "iptables":
            dash_s = lab.exec(node.name, ["iptables", "-S"]).stdout
            dash_s += lab.exec(node.name, ["iptables", "-t", "nat", "-S"]).stdout
            assert audit(dash_s).to_json() == table.to_json()


def test_the_auditor_reads_every_nodes_rules_as_expected(lab: Lab) -> None:
    audit_nodes(lab)


def test_clusterip_from_a_pod_and_a_node_on_every_node_reaches_every_endpoint(lab: Lab) -> None:
    for node in lab.topology.nodes:
        for member in (node.name, a_pod_on(lab, node.name)):
            names = bodies(http_get(lab, member, url(lab, "default/seven"), count=150))
            assert set(names) == pods_of(lab, "seven"), (member, sorted(set(names)))
        assert bodies(http_get(lab, node.name, url(lab, "default/one"))) == ["one-node1-0"]


def test_clusterip_is_on_no_interface(lab: Lab) -> None:
    vip = str(lab.service("default/seven").cluster_ip)
    for node in lab.topology.nodes:
        addrs = lab.exec(node.name, ["ip", "-o", "addr"]).stdout
        if lab.dataplane.proxy_mode == "ipvs":
            assert all("kube-ipvs0" in line for line in addrs.splitlines() if f" {vip}/" in line)
        else:
            assert f" {vip}/" not in addrs


def test_nodeport_on_every_node_reaches_pods_on_other_nodes(lab: Lab) -> None:
    for node in lab.topology.nodes:
        host, port = lab.nodeport_target("default/seven", node.name)
        results = http_get(lab, "client", f"http://{host}:{port}/hostname", count=150)
        assert set(bodies(results)) == pods_of(lab, "seven")


def test_external_local_keeps_client_ip_and_drops_without_local_endpoints(lab: Lab) -> None:
    client = str(lab.topology.client.ip)
    for node in lab.topology.nodes:
        host, port = lab.nodeport_target("default/three-local", node.name)
        local = pods_of(lab, "three", node.name)
        results = http_get(lab, "client", f"http://{host}:{port}/clientip", count=6, timeout=1)
        if local:
            assert {b.rsplit(":", 1)[0] for b in bodies(results)} == {client}
            names = bodies(http_get(lab, "client", f"http://{host}:{port}/hostname", count=6))
            assert set(names) == local
        else:  # DROP: no answer at all, the request times out
            assert not any(r["ok"] for r in results)
            assert all(r["outcome"] == Outcome.TIMEOUT for r in results), results


def test_health_check_node_port_answers_200_only_with_local_endpoints(lab: Lab) -> None:
    hc = lab.service("default/three-local").health_check_node_port
    assert hc is not None
    for node in lab.topology.nodes:
        result = http_get(lab, "client", f"http://{node.ip}:{hc}/healthz")[0]
        if pods_of(lab, "three", node.name):
            assert result["ok"] and '"localEndpoints": 1' in result["body"], result
        else:
            assert not result["ok"] and result["status"] == 503, result


def test_internal_traffic_policy_local(lab: Lab) -> None:
    for node in lab.topology.nodes:
        caller = a_pod_on(lab, node.name)
        results = http_get(lab, caller, url(lab, "default/itp-local"), count=10, timeout=1)
        local = pods_of(lab, "three", node.name)
        if local:
            assert set(bodies(results)) == local
        else:
            assert not any(r["ok"] for r in results)


def test_session_affinity_pins_a_client_and_expires(lab: Lab) -> None:
    host, port = lab.nodeport_target("default/sticky", "node2")
    first_choices = []
    for _ in range(5):
        names = bodies(http_get(lab, "client", f"http://{host}:{port}/hostname", count=16))
        assert len(set(names[1:])) == 1, names  # upstream: the last 15 reach one pod
        first_choices.append(names[0])
        time.sleep(AFFINITY_TIMEOUT + 0.6)
    assert len(set(first_choices)) >= 2, f"stickiness never expired: {first_choices}"
    # without affinity the same client spreads
    names = bodies(http_get(lab, "client", f"http://{host}:30107/hostname", count=40))
    assert len(set(names)) >= 4


def test_no_endpoints_rejects_at_once(lab: Lab) -> None:
    caller = a_pod_on(lab, "node1")
    results = http_get(lab, caller, url(lab, "default/empty"), count=3, timeout=3)
    assert all(r["outcome"] == Outcome.REFUSED for r in results), results
    assert max(r["s"] for r in results) < 1.0
    host, port = lab.nodeport_target("default/empty", "node3")
    results = http_get(lab, "client", f"http://{host}:{port}/", count=2, timeout=3)
    assert all(r["outcome"] == Outcome.REFUSED for r in results), results


def test_hairpin_a_pod_reaches_itself_through_its_service(lab: Lab) -> None:
    pod = lab.running_pods("seven", "node4")[0]
    names = bodies(http_get(lab, pod.name, url(lab, "default/seven"), count=60))
    assert pod.name in names


def test_several_ports_and_udp(lab: Lab) -> None:
    caller = a_pod_on(lab, "node2")
    assert set(
        bodies(http_get(lab, caller, url(lab, "default/multi", port="alt"), count=60))
    ) <= pods_of(lab, "seven")
    vip, dns = lab.clusterip_target("default/multi", "dns")
    answers = udp_ask(lab, caller, vip, dns, "hostname", count=1)
    assert answers[0] in pods_of(lab, "seven")
    assert udp_ask(lab, caller, vip, dns, "echo hi")[0] == "hi"


def test_headless_service_has_no_rules(lab: Lab) -> None:
    assert lab.service("default/headless").cluster_ip is None
    headless = next(s for s in lab.service_states() if s.service.key == "default/headless")
    assert len(headless.endpoints) == 3
    for node in lab.topology.nodes:
        assert "headless" not in lab.dump_rules(node.name)


def test_many_services_at_once(lab: Lab) -> None:
    specs = [
        ServiceSpec.model_validate(
            {
                "name": f"bulk{i}",
                "workload": "seven",
                "ports": [{"name": "http", "port": 80 + i, "target_port": 8080}],
            }
        )
        for i in range(200)
    ]
    created = lab.create_services(specs)
    caller = a_pod_on(lab, "node3")
    for i in (0, 17, 199):
        assert bodies(http_get(lab, caller, url(lab, f"default/bulk{i}")))[0] in pods_of(
            lab, "seven"
        )
    one_more = lab.create_service(specs[0].model_copy(update={"name": "bulk200"}))
    lab.delete_services([f"default/bulk{i}" for i in range(201)])
    assert created.seconds < 30 and one_more.seconds < 10
    assert "bulk" not in lab.dump_rules("node1")


def test_service_update_changes_ports(lab: Lab) -> None:
    svc = lab.service("default/one")
    moved = tuple(
        p.__class__(p.name, p.protocol, 8888, p.target_port, p.node_port) for p in svc.ports
    )
    lab.update_service("default/one", ports=moved)
    caller = a_pod_on(lab, "node2")
    try:
        vip = svc.cluster_ip
        assert bodies(http_get(lab, caller, f"http://{vip}:8888/hostname")) == ["one-node1-0"]
        old = http_get(lab, caller, f"http://{vip}:80/hostname", timeout=1)[0]
        assert not old["ok"]
    finally:
        lab.update_service("default/one", ports=svc.ports)


def test_scale_up_and_down(lab: Lab) -> None:
    before = pods_of(lab, "churn")
    lab.scale("churn", 6)
    after = pods_of(lab, "churn")
    assert len(after) == 6 and before < after
    names = bodies(http_get(lab, "node1", url(lab, "default/churn"), count=150))
    assert set(names) == after
    lab.scale("churn", 4)
    lab.settle()
    assert len(pods_of(lab, "churn")) == 4
    names = bodies(http_get(lab, "node1", url(lab, "default/churn"), count=80))
    assert set(names) == pods_of(lab, "churn")


def test_kill_pod_fails_its_connections_until_detected(lab: Lab) -> None:
    victim = lab.running_pods("churn", "node2")[0]
    lab.kill_pod(victim.name)
    # before the endpoints controller notices, the dead endpoint still gets new connections
    early = http_get(lab, "node1", url(lab, "default/churn"), count=40, timeout=1)
    assert any(not r["ok"] for r in early), "no request reached the dead pod"
    lab.settle()
    late = bodies(http_get(lab, "node1", url(lab, "default/churn"), count=60))
    assert victim.name not in late
    event = next(e for e in lab.programming if e.change == f"pod {victim.name} died")
    assert 0 <= event.seconds < 5
    lab.scale("churn", 4)


def test_graceful_delete_loses_no_request(lab: Lab) -> None:
    import threading

    victim = lab.running_pods("churn", "node3")[0]
    results: list[dict] = []

    def load() -> None:
        results.extend(
            http_get(
                lab,
                "client",
                "http://{}:{}/hostname".format(*lab.nodeport_target("default/churn", "node1")),
                count=300,
                timeout=2,
            )
        )

    thread = threading.Thread(target=load)
    thread.start()
    time.sleep(0.3)
    lab.delete_pod(victim.name, grace_s=0.5)
    thread.join()
    assert all(r["ok"] for r in results), [r for r in results if not r["ok"]][:3]
    assert victim.name not in pods_of(lab, "churn")
    lab.scale("churn", 4)


def test_stale_udp_conntrack_is_cleared_when_an_endpoint_leaves(lab: Lab) -> None:
    caller = a_pod_on(lab, "node1")
    vip, dns = lab.clusterip_target("default/churn", "dns")
    first = udp_ask(lab, caller, vip, dns, "hostname", sport=41000)[0]
    assert first in pods_of(lab, "churn")
    lab.kill_pod(first)
    lab.settle()
    # the same 5-tuple again: without the conntrack cleanup it would still go to the dead pod
    after = udp_ask(lab, caller, vip, dns, "hostname", sport=41000, count=3, pause=0.2)
    assert after[-1] is not None and after[-1] != first, after
    lab.scale("churn", 4)


def test_node_failure_and_heal(lab: Lab) -> None:
    host, port = lab.nodeport_target("default/seven", "node1")
    on_node4 = pods_of(lab, "seven", "node4")
    lab.fail_node("node4")
    lab.settle()
    names = bodies(http_get(lab, "client", f"http://{host}:{port}/hostname", count=80))
    assert not set(names) & on_node4
    assert any(e.change == "node node4 not ready" for e in lab.programming)
    lab.heal_node("node4")
    lab.settle()
    names = bodies(http_get(lab, "client", f"http://{host}:{port}/hostname", count=150))
    assert on_node4 <= set(names)


def test_after_all_the_churn_the_rules_are_still_exactly_as_expected(lab: Lab) -> None:
    lab.settle()
    audit_nodes(lab)


def test_every_change_recorded_its_programming_latency(lab: Lab) -> None:
    assert len(lab.programming) >= 10
    assert all(0 <= e.seconds < 10 for e in lab.programming)
    socket.gethostname()  # keep the import honest for readers: nothing else here is networked
