"""What kubelab sends to a real API server, and what it reads back, checked against
Kubernetes 1.35's own OpenAPI schemas (kubernetes-validate, strict: an unknown or
misspelt field fails): the Deployments and Services of every shipped lab, and the
`kubectl get -o json` objects the rule auditor reads (the reference dataplane exports the
same shapes). A Service kubelab sends reads back, through the auditor's parser, as the
Service its spec describes."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest

from conftest import DATA, ROOT
from kubelab.dataplanes.kubernetes import manifests
from kubelab.dataplanes.reference.cluster import ClusterState
from kubelab.rules.expected import service_from_object
from kubelab.spec import LabSpec, load_spec
from kubelab.spec_common import WorkloadSpec
from kubelab.substrates.netns import NetnsSubstrate
from kubelab.topology import Topology

KUBERNETES = "1.35.0"  # the schemas of the minor release the playbooks install
LABS = sorted(p for p in (ROOT / "labs").glob("*.yaml") if not p.stem.startswith("matrix"))


def invalid(obj: dict[str, Any]) -> str | None:
    try:
        kubernetes_validate.validate(obj, KUBERNETES, strict=True)
    except kubernetes_validate.ValidationError as exc:
        return f"{obj['kind']} {obj['metadata'].get('name')}: {str(exc).splitlines()[0]}"
    return None


def objects_of(spec: LabSpec) -> list[dict[str, Any]]:
    return manifests.lab_objects(
        spec.lab_id, spec.workloads, spec.services, [n.name for n in spec.nodes]
    )


@pytest.mark.parametrize("path", LABS, ids=lambda p: p.stem)
def test_every_object_kubelab_sends_is_valid_for_kubernetes_1_35(path: Path) -> None:
    objects = objects_of(load_spec(path))
    assert {o["kind"] for o in objects} >= {"Deployment", "Service"}
    assert [e for o in objects if (e := invalid(o))] == []
    assert all(o["metadata"]["labels"][manifests.LAB_LABEL] for o in objects)  # down's label


def test_the_schema_check_names_a_misspelt_field() -> None:
    service = objects_of(load_spec(ROOT / "labs" / "local.yaml"))[-1]
    service["spec"]["externalTrafficPolicey"] = service["spec"].pop("externalTrafficPolicy")
    assert "'externalTrafficPolicey' was unexpected" in (invalid(service) or "")


@pytest.mark.parametrize("path", LABS, ids=lambda p: p.stem)
def test_a_service_sent_reads_back_as_its_spec(path: Path) -> None:
    spec = load_spec(path)
    for svc in spec.services:
        read, external_ips, _ = service_from_object(manifests.service(svc, spec.lab_id))
        assert (read.namespace, read.name) == (svc.namespace, svc.name)
        assert read.type == ("ClusterIP" if svc.type == "ClusterIP" else "NodePort")
        assert [(p.name, p.protocol, p.port, p.target_port, p.node_port) for p in read.ports] == [
            (p.name, p.protocol, p.port, p.target_port, p.node_port) for p in svc.ports
        ]
        assert read.external_traffic_policy == svc.external_traffic_policy
        assert read.internal_traffic_policy == svc.internal_traffic_policy
        assert (read.session_affinity, read.session_affinity_timeout_s) == (
            svc.session_affinity,
            svc.session_affinity_timeout_s,
        )
        assert external_ips == [str(ip) for ip in svc.external_ips]


@pytest.mark.parametrize("path", LABS, ids=lambda p: p.stem)
def test_the_deployments_place_pods_as_the_reference_dataplane_does(path: Path) -> None:
    spec = load_spec(path)
    placed: Counter[tuple[str, str]] = Counter()
    for obj in objects_of(spec):
        if obj["kind"] == "Deployment":
            labels = obj["spec"]["template"]["metadata"]["labels"]
            node = obj["spec"]["template"]["spec"]["nodeSelector"][manifests.NODE_LABEL]
            placed[(labels[manifests.WORKLOAD_LABEL], node)] += obj["spec"]["replicas"]
    cluster = ClusterState(spec, Topology(spec, NetnsSubstrate(spec, Path("/none")).inventory()))
    reference = Counter((r.info.workload, r.info.node) for r in cluster.pods.values())
    assert +placed == reference


def test_a_service_selects_only_its_workloads_pods_of_this_lab() -> None:
    spec = load_spec(ROOT / "labs" / "local-vxlan.yaml")
    objects = objects_of(spec)
    for svc in (o for o in objects if o["kind"] == "Service"):
        selector = svc["spec"]["selector"]
        chosen = [
            o for o in objects if o["kind"] == "Deployment"
            and selector.items() <= o["spec"]["template"]["metadata"]["labels"].items()
            and o["metadata"]["namespace"] == svc["metadata"]["namespace"]
        ]  # fmt: skip
        wanted = next(s.workload for s in spec.services if s.name == svc["metadata"]["name"])
        assert chosen and {o["metadata"]["labels"][manifests.WORKLOAD_LABEL] for o in chosen} == {
            wanted
        }


@pytest.mark.parametrize("name", ["objects-echo.json", "objects-upstream-overall.json"])
def test_the_objects_the_auditor_reads_have_the_apis_shapes(name: str) -> None:
    import json

    items = json.loads((DATA / name).read_text())["items"]
    assert [e for o in items if (e := invalid(o))] == []


def test_the_reference_dataplanes_exported_objects_have_the_apis_shapes() -> None:
    spec = load_spec(ROOT / "labs" / "local-vxlan.yaml")
    cluster = ClusterState(spec, Topology(spec, NetnsSubstrate(spec, Path("/none")).inventory()))
    items = cluster.objects()["items"]
    assert {o["kind"] for o in items} == {"Service", "EndpointSlice", "Pod", "Node"}
    assert [e for o in items if (e := invalid(o))] == []


def test_a_network_policy_kubelab_sends_is_valid() -> None:
    policy = manifests.network_policy("default", "echo-from-allowed", {
        "podSelector": {"matchLabels": {manifests.WORKLOAD_LABEL: "echo"}},
        "policyTypes": ["Ingress"],
        "ingress": [{"from": [{"podSelector": {"matchLabels": {manifests.WORKLOAD_LABEL: "a"}}}]}],
    }, "lab")  # fmt: skip
    assert invalid(policy) is None


def test_the_dns_scenarios_objects_are_valid() -> None:
    web = WorkloadSpec(name="web", replicas=2)
    stateful_set = manifests.stateful_set(web, "default", "lab")
    governing = manifests.headless_service(web, "default", "lab")
    alias = manifests.external_name_service("default", "echo-alias", "echo.default.svc.x.", "lab")
    assert [e for o in (stateful_set, governing, alias) if (e := invalid(o))] == []
    # the StatefulSet's pods are its governing Service's: same selector, its name
    assert stateful_set["spec"]["serviceName"] == governing["metadata"]["name"]
    assert governing["spec"]["selector"] == stateful_set["spec"]["selector"]["matchLabels"]
    assert governing["spec"]["clusterIP"] == "None"
    # no node, no readiness gate: Ready by the probe, where the scheduler puts them
    assert "readinessGates" not in stateful_set["spec"]["template"]["spec"]
    assert "nodeSelector" not in stateful_set["spec"]["template"]["spec"]
