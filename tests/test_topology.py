"""The address plan derived from the spec."""

from __future__ import annotations

from pathlib import Path

from conftest import test_spec
from kubelab.substrates.netns import NetnsSubstrate
from kubelab.topology import Topology


def plan() -> Topology:
    spec = test_spec()
    return Topology(spec, NetnsSubstrate(spec, Path("/nonexistent")).inventory())


def test_default_address_plan() -> None:
    topo = plan()
    assert [(n.name, str(n.ip), str(n.pod_cidr)) for n in topo.nodes] == [
        ("node1", "192.168.56.11", "10.244.1.0/24"),
        ("node2", "192.168.56.12", "10.244.2.0/24"),
        ("node3", "192.168.56.13", "10.244.3.0/24"),
    ]
    assert str(topo.client.ip) == "192.168.56.254"
    assert [(p.name, str(p.ip)) for p in topo.pods_on("node2")] == [
        ("echo-node2-0", "10.244.2.2"),
        ("echo-node2-1", "10.244.2.3"),
    ]


def test_every_pod_namespace_carries_the_lab_id() -> None:
    topo = plan()
    assert all(p.netns == f"kl-kltest-{p.name}" for p in topo.pods)
    assert len(topo.pods) == 6
