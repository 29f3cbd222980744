"""`kubelab diagnose`: each cause the embedded lab can produce, made on purpose on a running
lab, is named as the first failure with its fix; a healthy Service passes every applicable
step. The causes that need a real cluster (labels, NetworkPolicy) are checked on real
object shapes, and the firewall reader on dumps taken from this kernel."""

from __future__ import annotations

import json
import shlex
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from conftest import DATA, ROOT, TEST_LAB, local_spec_data
from helpers import kubelab
from kubelab.diagnose.checklist import Step, dns_from_objects
from kubelab.diagnose.firewall import foreign_drops
from kubelab.diagnose.view import allows_ingress, service_view
from kubelab.lab import Lab
from kubelab.spec import parse_spec
from kubelab.spec_common import ServiceSpec, WorkloadSpec

ECHO = "default/echo"

# --- without a lab --------------------------------------------------------------------------


def test_firewall_rules_that_drop_a_port_are_found_in_real_dumps() -> None:
    saved = (DATA / "firewall" / "node.iptables-save").read_text()
    ruleset = (DATA / "firewall" / "node.nft.json").read_text()
    found = foreign_drops(saved, ruleset, 30080, "TCP")
    assert found[0] == "iptables -t raw -A PREROUTING -p tcp -m tcp --dport 30080 -j DROP"
    assert any("--dports 80,30000:30100 -j REJECT" in f for f in found)  # a multiport range
    assert any("! --dport 22 -j DROP" in f for f in found)  # drops all but 22: 30080 too
    assert not any("KUBE-" in f or "kube-proxy" in f for f in found)  # kube-proxy's own: no
    assert foreign_drops(saved, ruleset, 22, "TCP") == []
    assert foreign_drops(saved, ruleset, 31550, "TCP")[-1].startswith("nft rule in inet site")
    assert foreign_drops(saved, ruleset, 30053, "UDP") == [
        "nft rule in inet site pre (handle 4): udp dport 30053 reject"
    ]


def _objects(pod_labels: dict[str, str], policies: list[dict[str, Any]]) -> dict[str, Any]:
    """A Service, its EndpointSlice, a pod and policies, as `kubectl get -o json` prints."""
    return {
        "kind": "List",
        "items": [
            {
                "kind": "Service",
                "metadata": {"namespace": "shop", "name": "web"},
                "spec": {
                    "type": "ClusterIP",
                    "clusterIP": "10.96.0.50",
                    "selector": {"app": "web"},
                    "ports": [{"port": 80, "targetPort": 8080, "protocol": "TCP"}],
                },
            },
            {
                "kind": "Pod",
                "metadata": {"namespace": "shop", "name": "web-7d9f-abcde", "labels": pod_labels},
                "spec": {
                    "nodeName": "worker-1",
                    "containers": [{"name": "web", "ports": [{"containerPort": 8080}]}],
                },
                "status": {
                    "phase": "Running",
                    "podIP": "10.244.1.7",
                    "conditions": [{"type": "Ready", "status": "True"}],
                },
            },
            *policies,
        ],
    }


DENY_ALL = {
    "apiVersion": "networking.k8s.io/v1",
    "kind": "NetworkPolicy",
    "metadata": {"namespace": "shop", "name": "default-deny-ingress"},
    "spec": {"podSelector": {}, "policyTypes": ["Ingress"]},
}
ALLOW_FRONTEND = {
    "apiVersion": "networking.k8s.io/v1",
    "kind": "NetworkPolicy",
    "metadata": {"namespace": "shop", "name": "web-from-frontend"},
    "spec": {
        "podSelector": {"matchLabels": {"app": "web"}},
        "ingress": [{"from": [{"podSelector": {"matchLabels": {"role": "frontend"}}}]}],
    },
}


def test_a_selector_that_matches_no_pod_names_the_labels_pods_carry() -> None:
    view = service_view(_objects({"app": "web-v2"}, []), "shop/web")
    assert view is not None and view.selected == []
    assert [p.labels for p in view.namespace_pods] == [{"app": "web-v2"}]
    good = service_view(_objects({"app": "web"}, []), "shop/web")
    assert good is not None and [p.name for p in good.selected] == ["web-7d9f-abcde"]
    assert good.selected[0].container_ports == ((8080, "TCP"),) and good.selected[0].ready


def test_network_policies_selecting_the_pods_and_whether_they_let_anything_in() -> None:
    view = service_view(_objects({"app": "web"}, [DENY_ALL, ALLOW_FRONTEND]), "shop/web")
    assert view is not None
    names = [p["metadata"]["name"] for p in view.policies]
    assert names == ["default-deny-ingress", "web-from-frontend"]
    assert not allows_ingress(DENY_ALL) and allows_ingress(ALLOW_FRONTEND)
    other = service_view(_objects({"app": "db"}, [ALLOW_FRONTEND]), "shop/web")
    assert other is not None and other.policies == []


def _coredns(ready: bool) -> dict[str, Any]:
    return {
        "kind": "Pod",
        "metadata": {
            "namespace": "kube-system",
            "name": "coredns-5d78c9869d-x7v2k",
            "labels": {"k8s-app": "kube-dns", "pod-template-hash": "5d78c9869d"},
        },
        "spec": {"nodeName": "control-plane", "containers": [{"name": "coredns"}]},
        "status": {
            "phase": "Running",
            "podIP": "10.244.0.3",
            "conditions": [{"type": "Ready", "status": "True" if ready else "False"}],
        },
    }


def test_cluster_dns_down_is_named_from_the_coredns_pods() -> None:
    down = dns_from_objects(Step("dns", ""), {"items": [_coredns(False)]})
    assert down.verdict == "fail" and "cluster DNS is down" in down.cause
    assert "k8s-app=kube-dns" in down.fix and down.evidence == [
        "0 of 1 CoreDNS pods (k8s-app=kube-dns) ready"
    ]
    up = dns_from_objects(Step("dns", ""), {"items": [_coredns(True), _coredns(False)]})
    assert up.verdict == "pass" and up.evidence == ["1 of 2 CoreDNS pods (k8s-app=kube-dns) ready"]
    assert dns_from_objects(Step("dns", ""), {"items": []}).verdict == "fail"


# --- on a running lab, through the command line ----------------------------------------------


@pytest.fixture(scope="module")
def spec_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("diagnose") / f"{TEST_LAB}.yaml"
    path.write_text(yaml.safe_dump(local_spec_data()))
    return path


@pytest.fixture(scope="module")
def lab(spec_file: Path) -> Iterator[Lab]:
    lab = Lab(parse_spec(yaml.safe_load(spec_file.read_text()), "test"))
    lab.up()
    try:
        yield lab
    finally:
        lab.down()


def diagnosed(spec_file: Path, service: str, *extra: str) -> dict[str, Any]:
    proc = kubelab("diagnose", str(spec_file), service, "--format", "json", *extra)
    assert proc.returncode in (0, 1), proc.stderr
    data: dict[str, Any] = json.loads(proc.stdout)
    assert proc.returncode == (0 if data["ok"] else 1)
    return data


def first_failure(data: dict[str, Any], step: str, *cause: str, fix: str) -> None:
    assert data["first_failure"] == step, json.dumps(data["steps"], indent=1)[:4000]
    for needle in cause:
        assert needle in data["cause"], data["cause"]
    assert fix in data["fix"], data["fix"]


def nat_rules(lab: Lab, node: str, pattern: str) -> list[str]:
    out = lab.exec(node, ["iptables", "-t", "nat", "-S"]).stdout
    return [line for line in out.splitlines() if line.startswith("-A ") and pattern in line]


def delete_rules(lab: Lab, node: str, rules: list[str]) -> None:
    assert rules, "nothing to delete: the break would prove nothing"
    for rule in rules:
        argv = ["iptables", "-t", "nat", "-D", *shlex.split(rule)[1:]]
        assert lab.exec(node, argv).ok, rule


@pytest.fixture
def restart_proxies(lab: Lab) -> Iterator[None]:
    """After a break of the rules: restart every node's proxier, as the fix says."""
    yield
    for node in lab.topology.nodes:
        lab.set_proxy_running(node.name, True)


def test_a_healthy_service_passes_every_applicable_step(lab: Lab, spec_file: Path) -> None:
    data = diagnosed(spec_file, "echo")
    verdicts = {s["name"]: s["verdict"] for s in data["steps"]}
    assert data["ok"] and data["service"] == ECHO
    assert {n for n, v in verdicts.items() if v == "skip"} == {"network_policy", "dns"}
    assert set(verdicts) >= {"service", "endpoints", "readiness", "ports", "endpoint_probe",
                             "proxy", "rules", "clusterip", "nodeport"}  # fmt: skip
    table = kubelab("diagnose", str(spec_file), "echo")
    assert table.returncode == 0 and "every applicable step passed" in table.stderr
    # probes from one member of choice, on a named port
    chosen = diagnosed(spec_file, "default/echo", "--from", "node2", "--port", "http")
    assert chosen["ok"] and chosen["port"] == "http"
    steps = {s["name"]: s for s in chosen["steps"]}
    assert [e.split(":")[0] for e in steps["clusterip"]["evidence"]] == ["from node2"]
    assert all("from node2:" in e for e in steps["nodeport"]["evidence"])


def test_bad_input_gets_one_line_and_exit_2(lab: Lab, spec_file: Path) -> None:
    for args, says in (
        (["echo", "--port", "nope"], "--port nope: default/echo has no such port"),
        (["echo", "--from", "nobody"], "--from nobody: no such member"),
    ):
        proc = kubelab("diagnose", str(spec_file), *args)
        assert proc.returncode == 2 and says in proc.stderr, proc.stderr
        assert len(proc.stderr.strip().splitlines()) == 1
    missing = diagnosed(spec_file, "nosuch")
    first_failure(missing, "service", "there is no Service default/nosuch", fix="create it")


def test_a_service_whose_workload_has_no_pods(lab: Lab, spec_file: Path) -> None:
    lab.create_workload(WorkloadSpec(name="nopods", replicas=0))
    ports = [{"port": 80, "target_port": 8080}]
    lab.create_service(ServiceSpec(name="nopods", workload="nopods", ports=ports))
    try:
        first_failure(
            diagnosed(spec_file, "nopods"),
            "endpoints",
            "no endpoints: the selector app=nopods matches no pod",
            fix="scale the workload up, or make the Service's selector match",
        )
    finally:
        lab.delete_services(["default/nopods"])
        lab.delete_workload("nopods")


def test_pods_that_are_not_ready(lab: Lab, spec_file: Path) -> None:
    lab.create_workload(WorkloadSpec(name="unready", replicas=2))
    ports = [{"port": 80, "target_port": 8080}]
    lab.create_service(ServiceSpec(name="unready", workload="unready", ports=ports))
    try:
        for pod in lab.running_pods("unready"):
            lab.set_pod_ready(pod.name, False)
        lab.settle()
        first_failure(
            diagnosed(spec_file, "unready"),
            "readiness",
            "2 of 2 pods are not ready",
            fix="check the pods' readiness probes",
        )
    finally:
        lab.delete_services(["default/unready"])
        lab.delete_workload("unready")


def test_the_services_rules_missing_on_one_node(
    lab: Lab, spec_file: Path, restart_proxies: None
) -> None:
    entry = ("-A KUBE-SERVICES ", "-A KUBE-NODEPORTS ")  # the Service's ways in, gone
    delete_rules(lab, "node2", [r for r in nat_rules(lab, "node2", ECHO) if r.startswith(entry)])
    first_failure(
        diagnosed(spec_file, "echo"),
        "rules",
        "node2 has no rules for the Service",
        "missing frontend",
        fix="restart kube-proxy on node2",
    )


def test_one_endpoint_missing_from_the_rules(
    lab: Lab, spec_file: Path, restart_proxies: None
) -> None:
    jumps = [r for r in nat_rules(lab, "node1", "-j KUBE-SEP-") if r.startswith("-A KUBE-SVC-")]
    delete_rules(lab, "node1", [next(r for r in jumps if f"{ECHO}:http" in r)])
    first_failure(
        diagnosed(spec_file, "echo"),
        "rules",
        "node1's rules leave out an endpoint",
        "missing endpoint 10.244.",
        fix="restart kube-proxy on node1",
    )


def test_the_proxy_stopped_on_a_node_while_the_service_changes(
    lab: Lab, spec_file: Path, restart_proxies: None
) -> None:
    lab.set_proxy_running("node3", False)
    lab.scale("echo", 7)  # a new endpoint node3's rules never hear of
    try:
        first_failure(
            diagnosed(spec_file, "echo"),
            "proxy",
            "the proxy on node3 is not running",
            "stale rules",
            fix="start kube-proxy on node3",
        )
    finally:
        lab.scale("echo", 6)
        lab.settle()


def test_a_nodeport_dropped_by_a_firewall_rule_on_one_node(lab: Lab, spec_file: Path) -> None:
    rule = ["PREROUTING", "-p", "tcp", "--dport", "30080", "-j", "DROP"]
    assert lab.exec("node2", ["iptables", "-t", "raw", "-I", *rule]).ok
    try:
        data = diagnosed(spec_file, "echo")
    finally:
        assert lab.exec("node2", ["iptables", "-t", "raw", "-D", *rule]).ok
    first_failure(
        data,
        "nodeport",
        "a firewall rule on node2 drops NodePort 30080",
        "-A PREROUTING -p tcp -m tcp --dport 30080 -j DROP",
        fix="allow the NodePort range",
    )
    nodeport = next(s for s in data["steps"] if s["name"] == "nodeport")
    assert any("node2 192.168.56.12 from client: 3 timeout" in e for e in nodeport["evidence"])


def test_a_target_port_no_pod_listens_on(lab: Lab, spec_file: Path) -> None:
    ports = [{"port": 80, "target_port": 9999}]
    lab.create_service(ServiceSpec(name="deaf", workload="echo", ports=ports))
    try:
        first_failure(
            diagnosed(spec_file, "deaf"),
            "ports",
            "nothing listens on targetPort 9999/TCP",
            "8080/TCP",
            fix="set the Service's targetPort to the port the container listens on",
        )
    finally:
        lab.delete_services(["default/deaf"])


def test_masquerade_missing_under_cluster_policy(
    lab: Lab, spec_file: Path, restart_proxies: None
) -> None:
    masq = [r for r in nat_rules(lab, "node1", "-j KUBE-MARK-MASQ") if r.startswith("-A KUBE-EXT-")]
    delete_rules(lab, "node1", [r for r in masq if ECHO in r])
    first_failure(
        diagnosed(spec_file, "echo"),
        "rules",
        "node1's rules do not masquerade",
        fix="restart kube-proxy on node1",
    )


def test_after_the_breaks_the_service_is_healthy_again(lab: Lab, spec_file: Path) -> None:
    assert diagnosed(spec_file, "echo")["ok"]


def test_a_failing_cases_report_section_shows_its_diagnosis(tmp_path: Path) -> None:
    from conftest import test_spec
    from kubelab.diagnose.checklist import Diagnosis, Step
    from kubelab.diagnose.rows import diagnosis_as_rows
    from kubelab.report.html import render
    from kubelab.results import ResultRow, Verdict
    from kubelab.runs import open_run

    run = open_run("kltest", test_spec(), "labs/kltest.yaml", tmp_path)
    steps = [
        Step("endpoints", "the Service has endpoints", evidence=["6 endpoints, 6 ready"]),
        Step("rules", "every node's rules carry the Service", evidence=["node2: missing"]).fail(
            "node2 has no rules for the Service", "restart kube-proxy on node2"
        ),
    ]
    rows = diagnosis_as_rows(
        "nodeport", "every_node_answers", Diagnosis("kltest", ECHO, "http", steps)
    )
    run.writer.add_rows(
        [*rows, ResultRow("nodeport", "every_node_answers", "verdict", 0.0, "", Verdict.FAIL, "x")]
    )
    html = render(run.run_dir).read_text()
    assert "kubelab diagnose default/echo: FAIL" in html
    assert "node2 has no rules for the Service -&gt; fix: restart kube-proxy on node2" in html
    assert "nodeport / every_node_answers: FAIL" in html  # the case's verdict, not a step's


@pytest.mark.parametrize("lab_file", ["local-nftables.yaml", "local-vxlan.yaml"])
def test_a_healthy_service_passes_in_the_other_modes(tmp_path: Path, lab_file: str) -> None:
    data = yaml.safe_load((ROOT / "labs" / lab_file).read_text())
    data["name"] = "kldiag"
    spec_file = tmp_path / "kldiag.yaml"
    spec_file.write_text(yaml.safe_dump(data))
    assert kubelab("up", str(spec_file)).returncode == 0
    try:
        result = diagnosed(spec_file, "echo")
        assert result["ok"], json.dumps(result["steps"], indent=1)[:3000]
    finally:
        assert kubelab("down", str(spec_file)).returncode == 0
