"""The kubernetes dataplane's and the auditor's readers on real API objects: `kubectl get
-o json` output of real clusters (kind with MetalLB in 2026, GKE, AKS, EKS), each stored
with its source in tests/data/kubernetes/SOURCES.md. What a cluster built here would
return cannot be captured on this machine; these are the shapes real API servers wrote."""

from __future__ import annotations

import copy
import ipaddress
import json
from typing import Any

import kubernetes_validate
import pytest

from conftest import DATA
from kubelab.dataplanes.kubernetes.api_objects import (
    is_ready,
    pod_info,
    service_from_api,
    typed_items,
)
from kubelab.dataplanes.kubernetes.endpoint_waits import (
    Wanted,
    service_endpoints,
    wait_for_endpoints,
)
from kubelab.errors import LabError
from kubelab.rules.expected import expected_table, service_from_object
from kubelab.spec_common import ServicePortSpec, ServiceSpec, WorkloadSpec

REAL = DATA / "kubernetes"
KUBERNETES = "1.35.0"
GRPC_GW = "envoy-tenant-primary-default-grpc-gw-dd1e96ff"  # LoadBalancer, Local, TCP
UDP_GW = "envoy-tenant-primary-default-udp-gw-296515a9"  # LoadBalancer, Local, UDP
GOING = "nginx-deployment-7768647bf9-b4b9s"  # deleted, still terminating in its slice
NEW = "nginx-deployment-7768647bf9-rkxlw"  # its replacement, ready


def document(name: str) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads((REAL / name).read_text())
    return doc


def items(name: str) -> list[dict[str, Any]]:
    """The file's objects, as the dataplane reads a list."""
    doc = document(name)
    return typed_items(doc) if "items" in doc else [doc]


def named(objects: list[dict[str, Any]], name: str) -> dict[str, Any]:
    return next(o for o in objects if o["metadata"]["name"] == name)


SERVICES = items("services-kind-metallb-2026.json")
GKE_SLICES = items("endpointslices-gke-terminating.json")
POD = items("pod-gke-2019.json")[0]


def test_every_stored_object_is_what_the_api_of_1_35_accepts_but_one_v1beta1_slice() -> None:
    """The fixtures are API objects, not look-alikes: strict validation against the
    schemas of the release the playbooks install. VictoriaMetrics' kind slice of 2020 is
    labelled discovery.k8s.io/v1 but carries v1beta1's `topology`, which v1 refuses."""
    refused = {}
    for name in sorted(p.name for p in REAL.glob("*.json")):
        for obj in items(name):
            try:
                kubernetes_validate.validate(obj, KUBERNETES, strict=True)
            except kubernetes_validate.ValidationError as exc:
                refused[obj["metadata"]["name"]] = str(exc).splitlines()[0]
    assert list(refused) == ["kube-dns-22mvb"]
    assert "'topology' was unexpected" in refused["kube-dns-22mvb"]


def test_a_raw_list_responses_items_get_the_lists_kind_back() -> None:
    """kube-apiserver's list items carry no kind or apiVersion (kubernetes/kubernetes#3030;
    VictoriaMetrics stored this list as its API server answered): the dataplane gives each
    the list's, as kubectl does, or the auditor would find no Service or slice in it."""
    raw = document("endpointslices-kind-2020.json")
    assert all("kind" not in i and "apiVersion" not in i for i in raw["items"])
    typed = typed_items(raw)
    assert {(i["apiVersion"], i["kind"]) for i in typed} == {
        ("discovery.k8s.io/v1", "EndpointSlice")
    }
    assert [i["metadata"]["name"] for i in typed] == ["kubernetes", "kube-dns-22mvb"]
    # kubectl's List already names each item's kind: kept
    assert [i["kind"] for i in typed_items(document("services-kind-metallb-2026.json"))] == [
        "Service"
    ] * 4


@pytest.mark.parametrize(
    ("name", "protocol", "port", "node_port", "cluster_ip", "health_port", "lb_ip"),
    [
        (GRPC_GW, "TCP", 80, 30391, "10.96.234.211", 32751, "172.18.255.205"),
        (UDP_GW, "UDP", 5300, 30519, "10.96.91.35", 31739, "172.18.255.208"),
    ],
)
def test_a_load_balancer_reads_with_what_the_api_server_and_metallb_allocated(
    name: str, protocol: str, port: int, node_port: int, cluster_ip: str, health_port: int,
    lb_ip: str,
) -> None:  # fmt: skip
    obj = named(SERVICES, name)
    target = obj["spec"]["ports"][0]["targetPort"]
    sent = ServiceSpec(
        name=name, namespace="kubelb", workload="envoy", type="LoadBalancer",
        external_traffic_policy="Local",
        ports=[ServicePortSpec(name=obj["spec"]["ports"][0]["name"], protocol=protocol,
                               port=port, target_port=target, node_port=node_port)],
    )  # fmt: skip
    svc = service_from_api(sent, obj)
    assert svc.cluster_ip == ipaddress.IPv4Address(cluster_ip)
    assert svc.health_check_node_port == health_port  # allocated: the spec named none
    assert svc.load_balancer_ips == (ipaddress.IPv4Address(lb_ip),)  # ingress ip, ipMode VIP
    (read,) = svc.ports
    assert (read.protocol, read.port, read.node_port) == (protocol, port, node_port)


def test_the_auditor_reads_real_services() -> None:
    read = {o["metadata"]["name"]: service_from_object(o) for o in SERVICES}
    kubernetes, _, _ = read["kubernetes"]
    assert (str(kubernetes.cluster_ip), kubernetes.type) == ("10.96.0.1", "ClusterIP")
    assert [(p.name, p.port, p.target_port) for p in kubernetes.ports] == [("https", 443, 6443)]
    dns, _, _ = read["kube-dns"]
    assert [(p.name, p.protocol, p.port) for p in dns.ports] == [
        ("dns", "UDP", 53), ("dns-tcp", "TCP", 53), ("metrics", "TCP", 9153)
    ]  # fmt: skip
    grpc, external_ips, lb_ips = read[GRPC_GW]
    assert grpc.external_traffic_policy == "Local" and grpc.health_check_node_port == 32751
    assert (external_ips, lb_ips) == ([], ["172.18.255.205"])
    assert [p.node_port for p in grpc.ports] == [30391]


@pytest.mark.parametrize(("mode", "lb_kind"), [("iptables", "loadbalancer"),
                                               ("nftables", "external")])  # fmt: skip
def test_what_a_node_should_forward_for_real_services_without_endpoints(
    mode: str, lb_kind: str
) -> None:
    """No slices were captured with these Services: every frontend rejects, and the
    Local LoadBalancer's node port and address are local-only."""
    table = expected_table({"kind": "List", "items": SERVICES}, "any-node", mode)
    frontends = {(f.kind, f.vip, f.port, f.protocol): f for f in table.frontends}
    assert len(frontends) == 1 + 3 + 3 + 3  # ClusterIPs, plus node port and address each
    assert all(f.no_endpoints == "reject" and not f.endpoints for f in frontends.values())
    udp = [frontends[("nodeport", None, 30519, "udp")],
           frontends[(lb_kind, "172.18.255.208", 5300, "udp")]]  # fmt: skip
    assert all(f.local_only for f in udp)
    assert not frontends[("clusterip", "10.96.91.35", 5300, "udp")].local_only


def test_a_terminating_endpoint_in_a_real_slice() -> None:
    by_pod = {e.pod: e for e in service_endpoints(GKE_SLICES, "default", "nginx-service")}
    assert set(by_pod) == {GOING, NEW}
    going = by_pod[GOING]
    assert (going.ready, going.serving, going.terminating) == (False, True, True)
    assert going.node == "gke-main-default-pool-dca1511c-d17b"
    assert by_pod[NEW].ready and not by_pod[NEW].terminating
    assert service_endpoints(GKE_SLICES, "default", "other") == []


def test_waits_on_a_real_slice_say_what_is_not_so_yet() -> None:
    def slices() -> list[dict[str, Any]]:
        return GKE_SLICES

    graceful_delete = Wanted(ready=1, ready_pods=frozenset({NEW}),
                             terminating_pods=frozenset({GOING}))  # fmt: skip
    assert len(wait_for_endpoints(slices, "default", "nginx-service", graceful_delete)) == 2
    with pytest.raises(LabError, match=f"{GOING} still listed"):
        wait_for_endpoints(slices, "default", "nginx-service",
                           Wanted(gone_pods=frozenset({GOING})), timeout=0.3, poll=0.1)  # fmt: skip
    assert Wanted(ready_pods=frozenset({GOING})).unmet(
        service_endpoints(GKE_SLICES, "default", "nginx-service")
    ) == [f"{GOING} not ready yet"]


def test_the_api_servers_own_slice_sets_ready_alone() -> None:
    """kube-apiserver writes the `kubernetes` Service's slice with `ready` only and no
    target: serving defers to ready, as the API documents."""
    (endpoint,) = service_endpoints(items("endpointslices-kind-2020.json"), "default", "kubernetes")
    assert (endpoint.address, endpoint.pod) == ("172.18.0.2", None)
    assert (endpoint.ready, endpoint.serving, endpoint.terminating) == (True, True, False)


def test_a_real_running_pod_and_what_is_not_one() -> None:
    nginx = WorkloadSpec(name="nginx", pods_per_node=1)
    info = pod_info(POD, nginx)
    assert info is not None and is_ready(POD)
    assert (info.name, info.node, str(info.ip)) == (
        "nginx-7fb78fb6d8-2w75j", "gke-k9s-default-pool-0fa2fb89-lbtf", "10.44.0.229"
    )  # fmt: skip
    deleted = copy.deepcopy(POD)
    deleted["metadata"]["deletionTimestamp"] = "2019-12-31T19:40:00Z"
    assert pod_info(deleted, nginx) is None  # terminating: no longer one of the workload's
    pending = copy.deepcopy(POD)
    pending["status"].update(phase="Pending")
    del pending["status"]["podIP"]
    assert pod_info(pending, nginx) is None
    unready = copy.deepcopy(POD)
    named_ready = next(c for c in unready["status"]["conditions"] if c["type"] == "Ready")
    named_ready["status"] = "False"
    assert not is_ready(unready) and pod_info(unready, nginx) is not None


def test_real_nodes_are_ready() -> None:
    assert all(is_ready(n) for n in items("nodes-aks-eks.json"))
