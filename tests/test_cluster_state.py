"""The reference dataplane's control plane, as pure state: placement, endpoints, export."""

from __future__ import annotations

from pathlib import Path

from conftest import test_spec
from kubelab.dataplanes.reference.cluster import ClusterState, PodRecord
from kubelab.spec_common import WorkloadSpec
from kubelab.substrates.netns import NetnsSubstrate
from kubelab.topology import Topology


def cluster() -> ClusterState:
    spec = test_spec()
    return ClusterState(spec, Topology(spec, NetnsSubstrate(spec, Path("/none")).inventory()))


def test_a_workload_spreads_over_its_nodes_whatever_else_runs_there() -> None:
    state = cluster()
    state.workloads["busy"] = WorkloadSpec(name="busy", replicas=0, nodes=["node1"])
    for _ in range(3):  # node1 is the fullest node now
        pod = state.next_pod("busy")
        state.pods[pod.name] = PodRecord(pod)
        assert pod.node == "node1"
    state.workloads["web"] = WorkloadSpec(name="web", replicas=0, nodes=["node1", "node2"])
    placed = []
    for _ in range(2):
        pod = state.next_pod("web")
        state.pods[pod.name] = PodRecord(pod)
        placed.append(pod.node)
    assert sorted(placed) == ["node1", "node2"]


def test_objects_export_services_slices_pods_and_nodes() -> None:
    kinds = [item["kind"] for item in cluster().objects()["items"]]
    assert kinds.count("Service") == 1 and kinds.count("EndpointSlice") == 1
    assert kinds.count("Pod") == 6 and kinds.count("Node") == 3
