"""The address plan derived from the spec."""

from __future__ import annotations

from pathlib import Path

import pytest

from conftest import test_spec
from kubelab.errors import LabError
from kubelab.lab import Lab
from kubelab.pytest_plugin import Traffic
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


def _topology() -> Topology:
    spec = test_spec()
    return Topology(spec, NetnsSubstrate(spec, Path("/nonexistent")).inventory())


@pytest.mark.parametrize(
    "address",
    ["192.168.56.11", "192.168.56.254", "10.244.2.3", "10.96.0.10", "127.0.0.1",
     "http://10.96.0.10:80/hostname", "http://192.168.56.12:30080/"],
)  # fmt: skip
def test_lab_traffic_may_go_to_the_labs_own_addresses(address: str) -> None:
    assert _topology().require_own(address) == address


@pytest.mark.parametrize(
    "address",
    ["8.8.8.8", "10.0.0.1", "172.16.0.1", "192.168.1.1", "http://192.168.57.11:30080/",
     "http://example.org/", "not-an-address"],
)  # fmt: skip
def test_traffic_anywhere_else_is_refused(address: str) -> None:
    with pytest.raises(LabError, match=r"refusing traffic to .*: lab kltest sends only to its own"):
        _topology().require_own(address)


def test_the_traffic_fixture_refuses_before_any_probe_starts() -> None:
    lab = Lab(test_spec())  # never brought up: a refused plan must not reach the client
    with pytest.raises(LabError, match=r"refusing traffic to 1\.1\.1\.1"):
        Traffic(lab, record=None).start("1.1.1.1", 80)  # type: ignore[arg-type]
