"""The kubernetes dataplane's verbs on an existing cluster (a kubeconfig), request by
request, against the recording API stand-in on loopback (api_recorder.py): what each
verb sends, and what it reads back from objects in the API's shape.

The stand-in runs no controllers, so each test seeds what a cluster's controllers would
make (Nodes, Pods, EndpointSlices). The lab runs Cilium's replacement (proxy_mode none):
no kube-proxy to scrape, so no verb reaches a node; in the one IPVS case the metrics
scrape tries, and the inventory's hosts are 127.0.0.1 port 1, where nothing listens.
"""

from __future__ import annotations

import copy
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from api_recorder import ApiRecorder, kubeconfig, serving
from conftest import ROOT
from helpers import kubelab
from kubelab.dataplanes.kubernetes import dataplane as dataplane_module
from kubelab.dataplanes.kubernetes import manifests
from kubelab.dataplanes.kubernetes.dataplane import KubernetesDataplane
from kubelab.errors import LabError
from kubelab.rules.expected import diff_tables, expected_table
from kubelab.spec import LabSpec, parse_spec
from kubelab.spec_common import ServicePortSpec, ServiceSpec
from kubelab.substrates.existing import ExistingSubstrate

CORE = "/api/v1/namespaces/default"
APPS = "/apis/apps/v1/namespaces/default"
SLICES = "/apis/discovery.k8s.io/v1/namespaces/default/endpointslices"
NODES = ("n1", "n2")


@pytest.fixture
def recorder() -> Iterator[ApiRecorder]:
    with serving() as rec:
        yield rec


def spec_data(tmp_path: Path, kubeconfig: Path, **dataplane: Any) -> dict[str, Any]:
    hosts = tmp_path / "hosts.ini"
    hosts.write_text(
        "[nodes]\n"
        "n1 ansible_host=127.0.0.1 ansible_port=1 node_ip=192.0.2.11\n"
        "n2 ansible_host=127.0.0.1 ansible_port=1 node_ip=192.0.2.12\n"
        "[client]\nc1 ansible_host=127.0.0.1 ansible_port=1 node_ip=192.0.2.100\n"
    )
    return {
        "name": "kdp",
        "substrate": {"kind": "existing", "inventory": str(hosts)},
        "network": {"node_cidr": "192.0.2.0/24"},
        "dataplane": {"kind": "kubernetes", "proxy_mode": "none", "cni": "cilium",
                      "kubeconfig": str(kubeconfig), **dataplane},
        "workloads": [{"name": "echo", "pods_per_node": 1}],
        "services": [{"name": "echo", "workload": "echo", "type": "NodePort",
                      "ports": [{"name": "http", "port": 80, "target_port": 8080,
                                 "node_port": 30080}]}],
    }  # fmt: skip


def make(spec: LabSpec, tmp_path: Path) -> KubernetesDataplane:
    return KubernetesDataplane(spec, ExistingSubstrate(spec, tmp_path / "state"))


@pytest.fixture
def dataplane(recorder: ApiRecorder, tmp_path: Path) -> KubernetesDataplane:
    spec = parse_spec(spec_data(tmp_path, kubeconfig(tmp_path, recorder.url)), base_dir=tmp_path)
    return make(spec, tmp_path)


def node(name: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Node", "metadata": {"name": name},
            "status": {"conditions": [{"type": "Ready", "status": "True"}]}}  # fmt: skip


def pod(name: str, node_name: str, ip: str, ready: bool = True) -> dict[str, Any]:
    """A pod of workload echo as the API returns it once it runs."""
    return {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": "default",
                     "labels": {manifests.LAB_LABEL: "kdp", manifests.WORKLOAD_LABEL: "echo"}},
        "spec": {"nodeName": node_name},
        "status": {"phase": "Running", "podIP": ip, "conditions": [
            {"type": manifests.READINESS_GATE, "status": "True" if ready else "False"}]},
    }  # fmt: skip


def endpoint_slice(endpoints: list[tuple[str, str, str]]) -> dict[str, Any]:
    """echo's slice: (pod, node, ip) each ready."""
    return {
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice", "addressType": "IPv4",
        "metadata": {"name": "echo-abcde", "namespace": "default",
                     "labels": {"kubernetes.io/service-name": "echo"}},
        "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
        "endpoints": [{"addresses": [ip], "conditions": {"ready": True, "serving": True,
                                                         "terminating": False},
                       "nodeName": n, "targetRef": {"kind": "Pod", "name": p}}
                      for p, n, ip in endpoints],
    }  # fmt: skip


PODS = [("echo-n1-a", "n1", "10.244.1.5"), ("echo-n2-a", "n2", "10.244.2.5")]


def seed_cluster(recorder: ApiRecorder, pods: list[tuple[str, str, str]] = PODS) -> None:
    for name in NODES:
        recorder.seed("/api/v1/nodes", node(name))
    for name, node_name, ip in pods:
        recorder.seed(CORE + "/pods", pod(name, node_name, ip))
    recorder.seed(SLICES, endpoint_slice(pods))


def test_up_creates_the_labs_objects_and_waits_on_the_slices(
    dataplane: KubernetesDataplane, recorder: ApiRecorder
) -> None:
    seed_cluster(recorder)
    dataplane.up(lambda _: None)
    posts = [(r.path, r.body["metadata"]["name"]) for r in recorder.made("POST")]
    assert posts == [
        (f"{APPS}/deployments", "echo-n1"),
        (f"{APPS}/deployments", "echo-n2"),
        (f"{CORE}/services", "echo"),
    ]
    deployment = recorder.made("POST")[0].body
    assert deployment["spec"]["replicas"] == 1
    assert deployment["spec"]["template"]["spec"]["nodeSelector"] == {
        "kubernetes.io/hostname": "n1"
    }
    (event,) = dataplane.programming
    assert event.change == "lab up" and event.per_node == {}  # no kube-proxy: observed time
    slice_reads = [r for r in recorder.made("GET") if r.path == SLICES]
    assert slice_reads and slice_reads[-1].query == {
        "labelSelector": "kubernetes.io/service-name=echo"
    }


def test_a_wait_that_the_cluster_never_meets_names_what_is_missing(
    dataplane: KubernetesDataplane, recorder: ApiRecorder
) -> None:
    seed_cluster(recorder, PODS[:1])  # one of the two pods never comes up
    for obj in dataplane._lab_objects():
        dataplane.api.apply(obj)
    dataplane.services["default/echo"] = dataplane.spec.services[0]
    with pytest.raises(LabError) as err:
        dataplane._wait_workloads(timeout=0.5)
    assert "default/echo: after 0s its EndpointSlices show 1 ready endpoints, want 2" in str(
        err.value
    )


def test_service_verbs_send_the_changed_spec(
    dataplane: KubernetesDataplane, recorder: ApiRecorder
) -> None:
    seed_cluster(recorder)
    dataplane.up(lambda _: None)
    stored = recorder.objects[f"{CORE}/services/echo"]
    stored["spec"].update(clusterIP="10.96.0.42", healthCheckNodePort=31999)
    stored["spec"]["ports"][0]["nodePort"] = 30080  # as the API server allocates them
    svc = dataplane.service("default/echo")
    assert (str(svc.cluster_ip), svc.ports[0].node_port, svc.type) == ("10.96.0.42", 30080,
                                                                       "NodePort")  # fmt: skip

    dataplane.update_service("default/echo", external_traffic_policy="Local")
    patch = recorder.made("PATCH")[-1]
    assert patch.path == f"{CORE}/services/echo"
    assert patch.body["spec"]["externalTrafficPolicy"] == "Local"
    assert dataplane.service("default/echo").external_traffic_policy == "Local"

    (state,) = dataplane.service_states()
    assert sorted(e.address for e in state.endpoints) == ["10.244.1.5:8080", "10.244.2.5:8080"]

    dataplane.delete_services(["default/echo"])
    assert recorder.made("DELETE")[-1].path == f"{CORE}/services/echo"
    assert dataplane.service_states() == []


def test_pod_verbs(dataplane: KubernetesDataplane, recorder: ApiRecorder) -> None:
    seed_cluster(recorder)
    dataplane.up(lambda _: None)
    assert [p.name for p in dataplane.running_pods("echo")] == ["echo-n1-a", "echo-n2-a"]
    (on_n2,) = dataplane.running_pods("echo", "n2")
    assert (str(on_n2.ip), on_n2.port, on_n2.node) == ("10.244.2.5", 8080, "n2")

    dataplane.set_pod_ready("echo-n1-a", False)
    ready = recorder.made("PATCH")[-1]
    assert ready.path == f"{CORE}/pods/echo-n1-a/status"
    assert ready.body["status"]["conditions"] == [
        {"type": manifests.READINESS_GATE, "status": "False"}
    ]
    dataplane.delete_pod("echo-n2-a", grace_s=3, wait=False)
    deleted = recorder.made("DELETE")[-1]
    assert (deleted.path, deleted.query) == (f"{CORE}/pods/echo-n2-a", {"gracePeriodSeconds": "3"})
    assert not dataplane.has_pod("echo-n2-a")
    # a kill happens on the pod's node (test_kubernetes_node_ops.py), not through the API
    with pytest.raises(LabError, match="no pod 'nosuch' of this lab"):
        dataplane.kill_pod("nosuch")


def test_scaling_spreads_over_the_nodes_deployments(
    dataplane: KubernetesDataplane, recorder: ApiRecorder
) -> None:
    seed_cluster(recorder)
    dataplane.up(lambda _: None)
    more = [*PODS, ("echo-n1-b", "n1", "10.244.1.6")]
    recorder.seed(SLICES, endpoint_slice(more))
    dataplane.scale("echo", 3)
    scales = [(r.path, r.body) for r in recorder.made("PATCH") if r.path.endswith("/scale")]
    assert scales == [
        (f"{APPS}/deployments/echo-n1/scale", {"spec": {"replicas": 2}}),
        (f"{APPS}/deployments/echo-n2/scale", {"spec": {"replicas": 1}}),
    ]


def test_down_deletes_by_label_and_objects_are_kubectl_shaped(
    dataplane: KubernetesDataplane, recorder: ApiRecorder
) -> None:
    seed_cluster(recorder)
    dataplane.up(lambda _: None)
    kinds = [i.get("kind") for i in dataplane.objects()["items"]]
    assert {"Service", "EndpointSlice", "Pod", "Node"} <= set(kinds)
    dataplane.down()
    deletes = [(r.path, r.query.get("labelSelector")) for r in recorder.made("DELETE")]
    assert (f"{CORE}/services", f"{manifests.LAB_LABEL}=kdp") in deletes
    assert (f"{APPS}/deployments", f"{manifests.LAB_LABEL}=kdp") in deletes
    assert not [k for k in recorder.objects if "/services/" in k or "/deployments/" in k]


def test_what_a_real_cluster_cannot_do_on_demand_is_refused(
    dataplane: KubernetesDataplane,
) -> None:
    with pytest.raises(LabError, match="kube-proxy is a DaemonSet"):
        dataplane.set_proxy_running("n1", False)


def test_a_missing_kubeconfig_is_the_first_line_before_up(
    recorder: ApiRecorder, tmp_path: Path
) -> None:
    spec = parse_spec(spec_data(tmp_path, tmp_path / "nowhere"), base_dir=tmp_path)
    assert make(spec, tmp_path).check_host() == [
        f"dataplane.kubeconfig: {tmp_path / 'nowhere'} does not exist"
    ]


@pytest.mark.parametrize(
    "change, message",
    [
        ({"kubeconfig": "kube/config"}, "dataplane.kubeconfig: 'kube/config' is relative"),
        ({"kubeconfig": None, "context": "x"}, "dataplane.context: read only with kubeconfig"),
    ],
)
def test_kubeconfig_refusals(tmp_path: Path, change: dict[str, Any], message: str) -> None:
    data = spec_data(tmp_path, tmp_path / "kubeconfig")
    data["dataplane"].update(change)
    with pytest.raises(Exception, match=message):
        parse_spec(data, base_dir=tmp_path)


def test_a_vm_lab_with_a_kubeconfig_is_refused(tmp_path: Path) -> None:
    data = yaml.safe_load((ROOT / "labs" / "vm-kubernetes.yaml").read_text())
    data["dataplane"]["kubeconfig"] = "/etc/kubernetes/admin.conf"
    with pytest.raises(Exception, match="a vagrant lab's cluster is built by kubelab"):
        parse_spec(copy.deepcopy(data), base_dir=tmp_path)


def test_plan_of_an_existing_cluster_lists_what_kubelab_creates(
    recorder: ApiRecorder, tmp_path: Path
) -> None:
    spec_file = tmp_path / "kdp.yaml"
    spec_file.write_text(yaml.safe_dump(spec_data(tmp_path, kubeconfig(tmp_path, recorder.url))))
    proc = kubelab("plan", str(spec_file))
    assert proc.returncode == 0, proc.stderr
    assert "existing, through" in proc.stdout
    assert "Deployment default/echo-n1" in proc.stdout and "Service default/echo" in proc.stdout
    assert recorder.requests == []  # a plan contacts nothing


def test_status_shows_the_cluster_and_a_process_not_connected_asks_nothing(
    dataplane: KubernetesDataplane, recorder: ApiRecorder, tmp_path: Path
) -> None:
    fresh = make(dataplane.spec, tmp_path)
    assert fresh.status() == {"pods": [], "services": [], "proxies": {}}
    assert fresh.objects()["items"] == [] and recorder.requests == []
    seed_cluster(recorder)
    dataplane.up(lambda _: None)
    shown = dataplane.status()
    assert [(p["name"], p["node"], p["ip"], p["phase"]) for p in shown["pods"]] == [
        ("echo-n1-a", "n1", "10.244.1.5", "Running"),
        ("echo-n2-a", "n2", "10.244.2.5", "Running"),
    ]
    (service,) = shown["services"]
    assert service["name"] == "default/echo" and len(service["endpoints"]) == 2
    assert set(shown["proxies"]) == set(NODES)  # Cilium's replacement: no kube-proxy to ask
    assert not any(p["running"] for p in shown["proxies"].values())


def test_a_kube_proxy_restart_with_another_scheduler(recorder: ApiRecorder, tmp_path: Path) -> None:
    """kubeadm keeps kube-proxy's configuration in kube-system/kube-proxy (config.conf):
    the scheduler is changed there and the DaemonSet restarted as `kubectl rollout
    restart` does; the change is recorded once every node runs the new template."""
    from kubelab.dataplanes.kubernetes.kubeadm import kube_proxy_configuration

    data = spec_data(tmp_path, kubeconfig(tmp_path, recorder.url), proxy_mode="ipvs",
                     cni="flannel")  # fmt: skip
    spec = parse_spec(data, base_dir=tmp_path)
    dataplane = make(spec, tmp_path)
    conf = kube_proxy_configuration(spec.dataplane, spec.network)  # type: ignore[arg-type]
    system = "/api/v1/namespaces/kube-system"
    recorder.seed(f"{system}/configmaps", {
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": "kube-proxy", "namespace": "kube-system"},
        "data": {"config.conf": yaml.safe_dump(conf), "kubeconfig.conf": "..."},
    })  # fmt: skip
    recorder.seed("/apis/apps/v1/namespaces/kube-system/daemonsets", {
        "apiVersion": "apps/v1", "kind": "DaemonSet",
        "metadata": {"name": "kube-proxy", "namespace": "kube-system", "generation": 2},
        "status": {"observedGeneration": 2, "desiredNumberScheduled": 2,
                   "updatedNumberScheduled": 2, "numberAvailable": 2},
    })  # fmt: skip
    event = dataplane.restart_proxy("sh")
    assert event.change == "kube-proxy restarted with --ipvs-scheduler=sh"
    config_patch, restart = recorder.made("PATCH")
    assert config_patch.path == f"{system}/configmaps/kube-proxy"
    written = yaml.safe_load(config_patch.body["data"]["config.conf"])
    assert written["ipvs"]["scheduler"] == "sh" and written["mode"] == "ipvs"
    assert restart.path == "/apis/apps/v1/namespaces/kube-system/daemonsets/kube-proxy"
    annotations = restart.body["spec"]["template"]["metadata"]["annotations"]
    assert set(annotations) == {"kubectl.kubernetes.io/restartedAt"}
    with pytest.raises(LabError, match="means nothing in proxy mode none"):
        make(parse_spec(spec_data(tmp_path, tmp_path / "kubeconfig"), base_dir=tmp_path),
             tmp_path).restart_proxy("sh")  # fmt: skip


def test_a_deleted_workload_goes_with_its_deployments_and_is_waited_for_as_none(
    dataplane: KubernetesDataplane, recorder: ApiRecorder
) -> None:
    seed_cluster(recorder)
    dataplane.up(lambda _: None)
    dataplane.delete_workload("echo")
    deletes = [(r.path, r.query) for r in recorder.made("DELETE")]
    assert deletes == [
        (f"{APPS}/deployments/echo-n1", {"propagationPolicy": "Foreground"}),
        (f"{APPS}/deployments/echo-n2", {"propagationPolicy": "Foreground"}),
    ]
    recorder.seed(SLICES, endpoint_slice([]))  # the endpoints controller's part
    dataplane.settle(timeout=1)  # the Service that selected it now expects no pod


def test_the_dns_scenarios_objects_are_made_waited_for_and_deleted(
    dataplane: KubernetesDataplane, recorder: ApiRecorder
) -> None:
    seed_cluster(recorder)
    dataplane.up(lambda _: None)
    before = expected_table(dataplane.objects(), "n1", "iptables")
    for i, ip in enumerate(("10.244.1.9", "10.244.2.9")):  # what the StatefulSet controller makes
        web = pod(f"web-{i}", NODES[i], ip)
        web["metadata"]["labels"][manifests.WORKLOAD_LABEL] = "web"
        web["status"]["conditions"] = [{"type": "Ready", "status": "True"}]
        recorder.seed(CORE + "/pods", web)
    assert dataplane.create_stateful_set("web", 2) == {"web-0": "10.244.1.9", "web-1": "10.244.2.9"}
    dataplane.create_external_name("default", "echo-alias", "echo.default.svc.cluster.local")
    posts = [(r.path, r.body["metadata"]["name"]) for r in recorder.made("POST")][-3:]
    assert posts == [
        (f"{CORE}/services", "web"), (f"{APPS}/statefulsets", "web"),
        (f"{CORE}/services", "echo-alias"),
    ]  # fmt: skip
    # the headless Service and the alias add nothing to what the proxy is to program
    assert diff_tables(before, expected_table(dataplane.objects(), "n1", "iptables")) == []
    dataplane.delete_stateful_set("web")
    dataplane.delete_external_name("default", "echo-alias")
    assert [r.path for r in recorder.made("DELETE")][-3:] == [
        f"{APPS}/statefulsets/web", f"{CORE}/services/web", f"{CORE}/services/echo-alias",
    ]  # fmt: skip
    with pytest.raises(LabError, match="workload 'echo' exists"):
        dataplane.create_stateful_set("echo", 1)


def test_a_policy_client_lives_in_its_namespace_with_its_labels(
    dataplane: KubernetesDataplane, recorder: ApiRecorder
) -> None:
    seed_cluster(recorder)
    dataplane.up(lambda _: None)
    client = pod("np-out-a-x", "n1", "10.244.1.20")
    client["metadata"]["namespace"] = "np-other"
    client["metadata"]["labels"] |= {manifests.WORKLOAD_LABEL: "np-out-a", "role": "allowed"}
    recorder.seed("/api/v1/namespaces/np-other/pods", client)
    made = dataplane.create_client("np-out-a", "np-other", {"role": "allowed"})
    assert (made.name, str(made.ip), made.node) == ("np-out-a-x", "10.244.1.20", "n1")
    posts = [(r.path, r.body) for r in recorder.made("POST")][-3:]
    assert [path for path, _ in posts] == [
        "/api/v1/namespaces",
        "/apis/apps/v1/namespaces/np-other/deployments",
        "/apis/apps/v1/namespaces/np-other/deployments",
    ]
    assert [body["spec"]["replicas"] for _, body in posts[1:]] == [1, 0]  # one pod, on n1
    labels = posts[1][1]["spec"]["template"]["metadata"]["labels"]
    assert labels["role"] == "allowed" and labels[manifests.LAB_LABEL] == "kdp"
    dataplane.delete_workload("np-out-a")
    assert [r.path for r in recorder.made("DELETE")][-2:] == [
        "/apis/apps/v1/namespaces/np-other/deployments/np-out-a-n1",
        "/apis/apps/v1/namespaces/np-other/deployments/np-out-a-n2",
    ]
    dataplane.down()  # the namespace the lab made goes by its label
    assert "/api/v1/namespaces/np-other" not in recorder.objects


def metallb_controller(recorder: ApiRecorder, service: str, ip: str, after_s: float) -> None:
    """What MetalLB's controller does a moment after the API server stored the Service."""

    def assign() -> None:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            stored = recorder.objects.get(f"{CORE}/services/{service}")
            if stored is not None:
                time.sleep(after_s)
                stored["status"] = {"loadBalancer": {"ingress": [{"ip": ip, "ipMode": "VIP"}]}}
                return
            time.sleep(0.05)

    threading.Thread(target=assign, daemon=True).start()


LB = ServiceSpec(
    name="web", workload="echo", type="LoadBalancer", external_traffic_policy="Local",
    ports=[ServicePortSpec(name="http", port=80, target_port=8080, node_port=30081)],
)  # fmt: skip


def test_a_load_balancer_is_ready_once_it_has_its_address(
    dataplane: KubernetesDataplane, recorder: ApiRecorder
) -> None:
    seed_cluster(recorder)
    dataplane.up(lambda _: None)
    web_slice = endpoint_slice(PODS)
    web_slice["metadata"].update(name="web-abcde", labels={"kubernetes.io/service-name": "web"})
    recorder.seed(SLICES, web_slice)
    metallb_controller(recorder, "web", "192.0.2.230", after_s=1.0)
    dataplane.create_services([LB])  # returns once the address is there, not before
    assert [str(ip) for ip in dataplane.service("default/web").load_balancer_ips] == ["192.0.2.230"]


def test_a_load_balancer_that_gets_no_address_is_named(
    dataplane: KubernetesDataplane, recorder: ApiRecorder, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(dataplane_module, "ADDRESS_TIMEOUT_S", 1.0)
    seed_cluster(recorder)
    dataplane.up(lambda _: None)
    web_slice = endpoint_slice(PODS)
    web_slice["metadata"].update(name="web-abcde", labels={"kubernetes.io/service-name": "web"})
    recorder.seed(SLICES, web_slice)
    with pytest.raises(LabError, match="default/web: no LoadBalancer IP after 1s; MetalLB"):
        dataplane.create_services([LB])
