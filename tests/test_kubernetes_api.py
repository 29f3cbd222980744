"""The kubernetes dataplane's API calls, as the official client sends them: paths, verbs,
query parameters, patch types and bodies, against a recording stand-in on loopback
(api_recorder.py). No API server runs here; these tests prove the requests, and the
objects read back are the shapes kubelab's fixtures hold."""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from api_recorder import ApiRecorder, kubeconfig, serving
from conftest import DATA, ROOT
from kubelab.dataplanes.kubernetes import manifests
from kubelab.dataplanes.kubernetes.api import MERGE, STRATEGIC_MERGE, ClusterApi
from kubelab.dataplanes.kubernetes.endpoint_waits import Wanted, wait_for_endpoints
from kubelab.errors import LabError
from kubelab.rules.expected import expected_table
from kubelab.spec import load_spec
from kubelab.spec_common import WorkloadSpec

LAB = "apitest"
CORE = "/api/v1/namespaces/default"
APPS = "/apis/apps/v1/namespaces/default"


@pytest.fixture
def recorder() -> Iterator[ApiRecorder]:
    with serving() as rec:
        yield rec


@pytest.fixture
def api(recorder: ApiRecorder, tmp_path: Path) -> ClusterApi:
    return ClusterApi.from_kubeconfig(kubeconfig(tmp_path, recorder.url), LAB)


def local_objects() -> list[dict]:
    spec = load_spec(ROOT / "labs" / "local.yaml")
    return manifests.lab_objects(LAB, spec.workloads, spec.services, [n.name for n in spec.nodes])


def test_up_creates_each_object_where_the_api_keeps_it(
    api: ClusterApi, recorder: ApiRecorder
) -> None:
    objects = local_objects()
    for obj in objects:
        api.apply(obj)
    posts = recorder.made("POST")
    want = [
        f"{APPS}/deployments" if o["kind"] == "Deployment" else f"{CORE}/services" for o in objects
    ]
    assert [r.path for r in posts] == want
    assert [r.body for r in posts] == objects  # the client sends what manifests render
    assert all(r.query == {} for r in posts)


def test_a_rerun_updates_what_exists_with_a_strategic_merge_patch(
    api: ClusterApi, recorder: ApiRecorder
) -> None:
    service = next(o for o in local_objects() if o["kind"] == "Service")
    api.apply(service)
    changed = copy.deepcopy(service)
    changed["spec"]["sessionAffinity"] = "ClientIP"
    api.apply(changed)
    (patch,) = recorder.made("PATCH")
    name = service["metadata"]["name"]
    assert (patch.path, patch.content_type) == (f"{CORE}/services/{name}", STRATEGIC_MERGE)
    assert recorder.objects[f"{CORE}/services/{name}"]["spec"]["sessionAffinity"] == "ClientIP"


def test_namespaces_are_cluster_scoped(api: ClusterApi, recorder: ApiRecorder) -> None:
    api.apply(manifests.namespace("shop", LAB))
    assert recorder.made("POST")[0].path == "/api/v1/namespaces"


def test_service_changes_scaling_and_deletes(api: ClusterApi, recorder: ApiRecorder) -> None:
    for obj in local_objects():
        api.apply(obj)
    deployment = next(o for o in local_objects() if o["kind"] == "Deployment")
    name = deployment["metadata"]["name"]
    api.patch_service("default", "echo", {"externalTrafficPolicy": "Local"})
    api.scale("default", name, 4)
    recorder.seed(CORE + "/pods", {"metadata": {"name": "echo-x", "labels": {}}})
    api.delete_pod("default", "echo-x", grace_s=0)
    api.delete_pod("default", "echo-gone", grace_s=2)  # already gone: not an error

    svc, scale = recorder.made("PATCH")[-2:]
    assert (svc.path, svc.content_type) == (f"{CORE}/services/echo", STRATEGIC_MERGE)
    assert svc.body == {"spec": {"externalTrafficPolicy": "Local"}}
    assert (scale.path, scale.content_type) == (f"{APPS}/deployments/{name}/scale", MERGE)
    assert scale.body == {"spec": {"replicas": 4}}
    forced, graceful = recorder.made("DELETE")
    assert (forced.path, forced.query) == (f"{CORE}/pods/echo-x", {"gracePeriodSeconds": "0"})
    assert graceful.query == {"gracePeriodSeconds": "2"}
    assert f"{CORE}/pods/echo-x" not in recorder.objects


def test_readiness_is_the_pods_gate_and_new_pods_are_admitted(
    api: ClusterApi, recorder: ApiRecorder
) -> None:
    spec = load_spec(ROOT / "labs" / "local.yaml")
    template = manifests.pod_template(spec.workloads[0], LAB, "node1")
    assert template["spec"]["readinessGates"] == [{"conditionType": manifests.READINESS_GATE}]
    gate = {"type": manifests.READINESS_GATE, "status": "True"}
    for name, conditions in (("old", [gate]), ("new", [{"type": "Ready", "status": "False"}])):
        pod = copy.deepcopy(template)
        pod["metadata"]["name"] = name
        pod["status"] = {"conditions": conditions}
        recorder.seed(CORE + "/pods", pod)

    assert api.admit_pods("default", spec.workloads[0].name) == ["new"]
    api.set_pod_ready("default", "old", False)
    admitted, failed = recorder.made("PATCH")
    assert (admitted.path, admitted.content_type) == (f"{CORE}/pods/new/status", STRATEGIC_MERGE)
    assert failed.body == {"status": {"conditions": [{**gate, "status": "False"}]}}
    lists = recorder.made("GET")
    assert lists[0].query["labelSelector"] == (
        f"{manifests.LAB_LABEL}={LAB},{manifests.WORKLOAD_LABEL}={spec.workloads[0].name}"
    )
    conditions = recorder.objects[f"{CORE}/pods/new"]["status"]["conditions"]
    assert {c["type"]: c["status"] for c in conditions} == {
        "Ready": "False",
        manifests.READINESS_GATE: "True",
    }


def test_waits_read_the_services_slices_through_the_api(
    api: ClusterApi, recorder: ApiRecorder
) -> None:
    doc = json.loads((DATA / "objects-echo.json").read_text())
    for item in doc["items"]:
        if item["kind"] == "EndpointSlice":
            recorder.seed("/apis/discovery.k8s.io/v1/namespaces/default/endpointslices", item)
    shown = wait_for_endpoints(
        lambda: api.endpoint_slices("default", "echo"), "default", "echo", Wanted(ready=6),
        timeout=5,
    )  # fmt: skip
    assert len(shown) == 6
    (get,) = recorder.made("GET")
    assert get.path == "/apis/discovery.k8s.io/v1/namespaces/default/endpointslices"
    assert get.query == {"labelSelector": "kubernetes.io/service-name=echo"}


def test_down_deletes_by_the_labs_label_and_leaves_the_rest(
    api: ClusterApi, recorder: ApiRecorder
) -> None:
    for obj in local_objects():
        api.apply(obj)
    api.apply(manifests.namespace("shop", LAB))
    other = manifests.namespace("theirs", "someone-else")
    api.apply(other)
    api.delete_lab(["default"])
    collection_deletes = [r for r in recorder.made("DELETE") if r.path.endswith("s")]
    by_label = {"labelSelector": f"{manifests.LAB_LABEL}={LAB}"}
    assert [(r.path, r.query) for r in collection_deletes[:4]] == [
        (f"{CORE}/services", by_label),
        ("/apis/networking.k8s.io/v1/namespaces/default/networkpolicies", by_label),
        (f"{APPS}/deployments", {**by_label, "propagationPolicy": "Foreground"}),
        (f"{APPS}/statefulsets", {**by_label, "propagationPolicy": "Foreground"}),
    ]
    assert sorted(recorder.objects) == ["/api/v1/namespaces/theirs"]


def test_an_api_error_is_one_line_with_the_servers_message(api: ClusterApi) -> None:
    with pytest.raises(LabError) as err:
        api.patch_service("default", "nosuch", {"sessionAffinity": "ClientIP"})
    message = str(err.value)
    assert message.startswith("Kubernetes API: change Service default/nosuch: 404 ")
    assert "not found" in message and "\n" not in message


def test_a_broken_kubeconfig_is_one_line(tmp_path: Path) -> None:
    bad = tmp_path / "kubeconfig"
    bad.write_text("apiVersion: v1\nkind: Config\nclusters: []\n")
    with pytest.raises(LabError) as err:
        ClusterApi.from_kubeconfig(bad, LAB)
    assert str(err.value).startswith(f"{bad}: ") and "\n" not in str(err.value)


def test_a_network_policy_goes_where_the_api_keeps_it(
    api: ClusterApi, recorder: ApiRecorder
) -> None:
    spec = {"podSelector": {"matchLabels": {manifests.WORKLOAD_LABEL: "echo"}},
            "policyTypes": ["Ingress"], "ingress": []}  # fmt: skip
    api.apply(manifests.network_policy("default", "deny-all", spec, LAB))
    (post,) = recorder.made("POST")
    assert post.path == "/apis/networking.k8s.io/v1/namespaces/default/networkpolicies"
    assert post.body["spec"] == spec and post.body["metadata"]["labels"] == {
        manifests.LAB_LABEL: LAB
    }
    api.delete_network_policy("default", "deny-all")
    assert recorder.made("DELETE")[0].path.endswith("/networkpolicies/deny-all")


def test_a_stateful_set_goes_where_the_api_keeps_it_and_down_takes_it(
    api: ClusterApi, recorder: ApiRecorder
) -> None:
    web = WorkloadSpec(name="web", replicas=2)
    api.apply(manifests.headless_service(web, "default", LAB))
    api.apply(manifests.stateful_set(web, "default", LAB))
    assert [r.path for r in recorder.made("POST")] == [f"{CORE}/services", f"{APPS}/statefulsets"]
    api.delete_lab(["default"])
    assert recorder.objects == {}


def test_real_objects_read_back_through_the_client_as_kubectl_shows_them(
    api: ClusterApi, recorder: ApiRecorder
) -> None:
    """Objects real API servers wrote (tests/data/kubernetes/SOURCES.md), served as list
    items without kind or apiVersion the way kube-apiserver serves them, each labelled as
    kubelab labels what it sends: they come back whole, with their kinds, and the auditor
    reads them."""
    real = DATA / "kubernetes"
    lab = {manifests.LAB_LABEL: LAB, manifests.WORKLOAD_LABEL: "nginx"}
    for service in json.loads((real / "services-kind-metallb-2026.json").read_text())["items"]:
        labelled = copy.deepcopy(service)
        labelled["metadata"].setdefault("labels", {}).update(lab)
        namespace = labelled["metadata"]["namespace"]
        recorder.seed(f"/api/v1/namespaces/{namespace}/services", labelled)
    slices = json.loads((real / "endpointslices-gke-terminating.json").read_text())["items"]
    recorder.seed("/apis/discovery.k8s.io/v1/namespaces/default/endpointslices", slices[0])
    pod = json.loads((real / "pod-gke-2019.json").read_text())
    pod["metadata"]["labels"].update(lab)
    recorder.seed(f"{CORE}/pods", pod)

    services = api.services("kubelb")
    assert [s["kind"] for s in services] == ["Service", "Service"]
    assert {s["status"]["loadBalancer"]["ingress"][0]["ip"] for s in services} == {
        "172.18.255.205", "172.18.255.208"
    }  # fmt: skip
    (read_slice,) = api.endpoint_slices("default", "nginx-service")
    assert read_slice == slices[0]  # every field as the API server wrote it
    (read_pod,) = api.pods("default", "nginx")
    assert read_pod == pod
    table = expected_table({"kind": "List", "items": services}, "n1", "iptables")
    assert {(f.kind, f.vip) for f in table.frontends} >= {
        ("clusterip", "10.96.234.211"), ("loadbalancer", "172.18.255.205")
    }  # fmt: skip
