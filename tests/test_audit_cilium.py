"""The auditor on Cilium's service lists (kube-proxy replacement): real listings of four
Cilium generations, each read into its whole expected table (sources in dumps/SOURCES.md)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from conftest import DATA, ROOT
from kubelab.rules.audit import AuditInputError, audit, detect, trace
from kubelab.rules.expected import diff_tables, expected_table
from kubelab.rules.trace import parse_flow

DUMPS = DATA / "dumps"


def listing(name: str) -> str:
    return (DUMPS / f"cilium-{name}.service-list").read_text()


def frontends(name: str) -> list[tuple[str, str | None, int, str, list[str]]]:
    table = audit(listing(name))
    assert table.mode == "cilium"
    return [(f.kind, f.vip, f.port, f.protocol, f.endpoints) for f in table.frontends]


def test_a_2026_listing_with_protocols_reads_every_frontend() -> None:
    assert detect(listing("2026-kind")) == "cilium"
    dns = ["10.244.1.69:53", "10.244.1.109:53"]
    assert frontends("2026-kind") == [
        ("clusterip", "10.96.0.1", 443, "tcp", ["172.19.0.2:6443"]),
        ("clusterip", "10.96.0.10", 53, "tcp", dns),
        ("clusterip", "10.96.0.10", 9153, "tcp", ["10.244.1.69:9153", "10.244.1.109:9153"]),
        ("clusterip", "10.96.0.10", 53, "udp", dns),
        ("clusterip", "10.96.62.28", 80, "tcp", ["10.244.1.149:4245"]),
        ("clusterip", "10.96.106.135", 80, "tcp", ["10.244.1.115:80"]),
        ("clusterip", "10.96.162.7", 443, "tcp", ["172.19.0.2:4244"]),
    ]
    table = audit(listing("2026-kind"))
    assert table.warnings == []
    dns_udp = table.find("clusterip", "10.96.0.10", "udp", 53)
    assert dns_udp is not None and dns_udp.weights == [0.5, 0.5]
    # what the listing cannot show stays unset rather than guessed
    assert all(f.masquerade_offcluster is None and f.service is None for f in table.frontends)


def test_an_older_listing_without_protocols_is_read_as_tcp_and_says_so() -> None:
    table = audit(listing("1.12-ci"))
    empty = table.find("clusterip", "10.99.239.79", "tcp", 3000)
    assert empty is not None and empty.endpoints == [] and empty.weights == []
    assert len(table.frontends) == 9
    assert table.warnings == [
        "the listing names no protocols (an older Cilium): every frontend is read as tcp"
    ]


def test_nodeports_on_every_node_address_and_the_surrogate_become_one_frontend() -> None:
    table = audit(listing("2021-ci-nodeport"))
    (nodeport,) = table.frontends
    assert (nodeport.kind, nodeport.vip, nodeport.port) == ("nodeport", None, 31232)
    assert nodeport.addresses == ["10.0.2.15", "192.168.36.11"]  # 0.0.0.0 is the surrogate
    assert nodeport.endpoints == ["10.0.1.195:80", "10.0.0.111:80"]


def test_a_quarantined_backend_takes_no_new_connections_and_is_named() -> None:
    table = audit(listing("2022-quarantined"))
    (front,) = table.frontends
    assert front.endpoints == ["10.244.1.59:80", "10.244.1.8:80"]
    assert (
        "clusterip tcp 10.96.95.246:80: backend 10.244.0.58:80 is quarantined, "
        "not used for new connections"
    ) in table.warnings


def test_ipv6_frontends_are_left_out_with_their_lines() -> None:
    table = audit(listing("2024-ipv6-mixed"))
    assert [(f.vip, f.endpoints) for f in table.frontends] == [
        ("10.7.14.194", ["10.7.10.209:9000"])
    ]
    assert "line 2: IPv6 frontend [ffff:fff:fff:701::2:dceb] left out" in table.warnings
    assert "line 5: IPv6 frontend [ffff:fff:fff:701::2:2f19] left out" in table.warnings


def test_an_internal_scope_twin_gives_what_pods_reach_under_policy_local() -> None:
    # constructed in the 2026 format: a NodePort with externalTrafficPolicy Local, whose
    # external frontends list this node's backend and the `/i` twins every backend
    text = (
        "ID   Frontend                 Service Type   Backend\n"
        "20   0.0.0.0:30080/TCP        NodePort       1 => 10.244.1.2:8080/TCP (active)\n"
        "21   0.0.0.0:30080/TCP/i      NodePort       1 => 10.244.1.2:8080/TCP (active)\n"
        "                                             2 => 10.244.2.2:8080/TCP (active)\n"
        "22   172.19.0.2:30080/TCP     NodePort       1 => 10.244.1.2:8080/TCP (active)\n"
        "23   172.19.0.2:30080/TCP/i   NodePort       1 => 10.244.1.2:8080/TCP (active)\n"
        "                                             2 => 10.244.2.2:8080/TCP (terminating)\n"
    )
    (nodeport,) = audit(text).frontends
    assert nodeport.endpoints == ["10.244.1.2:8080"]
    assert nodeport.local_only
    assert nodeport.addresses == ["172.19.0.2"]
    # the first twin wins, as the first external frontend does for the endpoints
    assert nodeport.short_circuit_endpoints == ["10.244.1.2:8080", "10.244.2.2:8080"]


def objects(*items: dict[str, Any]) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "List", "items": list(items)}


def kube_dns(endpoints: list[str]) -> list[dict[str, Any]]:
    """kube-system/kube-dns and its slice as `kubectl get -o json` prints them."""
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "kube-dns", "namespace": "kube-system"},
        "spec": {
            "type": "ClusterIP",
            "clusterIP": "10.96.0.10",
            "ports": [
                {"name": "dns", "port": 53, "protocol": "UDP", "targetPort": 53},
                {"name": "dns-tcp", "port": 53, "protocol": "TCP", "targetPort": 53},
                {"name": "metrics", "port": 9153, "protocol": "TCP", "targetPort": 9153},
            ],
        },
    }
    slice_ = {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "addressType": "IPv4",
        "metadata": {
            "name": "kube-dns-x7c2q",
            "namespace": "kube-system",
            "labels": {"kubernetes.io/service-name": "kube-dns"},
        },
        "endpoints": [
            {"addresses": [ip], "conditions": {"ready": True}, "nodeName": "kind-worker"}
            for ip in endpoints
        ],
        "ports": [
            {"name": "dns", "port": 53, "protocol": "UDP"},
            {"name": "dns-tcp", "port": 53, "protocol": "TCP"},
            {"name": "metrics", "port": 9153, "protocol": "TCP"},
        ],
    }
    return [service, slice_]


def test_expect_compares_frontends_and_backends_only() -> None:
    table = audit(listing("2026-kind"))
    same = expected_table(
        objects(*kube_dns(["10.244.1.69", "10.244.1.109"])), "kind-worker", "cilium"
    )
    lines = diff_tables(same, table)
    assert [line for line in lines if "10.96.0.10" in line] == []
    assert "extra frontend clusterip tcp 10.96.0.1:443" in lines  # not in the objects given
    one_gone = expected_table(objects(*kube_dns(["10.244.1.69"])), "kind-worker", "cilium")
    assert (
        "clusterip udp 10.96.0.10:53 (kube-system/kube-dns:dns): extra endpoint "
        "10.244.1.109:53" in diff_tables(one_gone, table)
    )


def test_trace_refuses_a_listing_in_one_line() -> None:
    with pytest.raises(AuditInputError) as err:
        trace(listing("2026-kind"), "svc.txt", parse_flow("10.244.1.5", "10.96.0.10:53/udp"), set())
    assert "not rules to follow" in str(err.value) and "\n" not in str(err.value)


def test_a_listing_without_the_type_column_is_refused_in_one_line(tmp_path: Path) -> None:
    old = tmp_path / "old.txt"
    old.write_text(
        "ID   Frontend               Backend\n1    10.108.128.131:32379   1 => 10.0.2.15:32379\n"
    )
    proc = subprocess.run(
        [sys.executable, "-m", "kubelab.cli", "audit", str(old)],
        capture_output=True, text=True, cwd=ROOT,
    )  # fmt: skip
    assert proc.returncode == 2
    assert "without the Service Type column" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


def test_cli_json_of_a_listing() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "kubelab.cli", "audit", str(DUMPS / "cilium-2026-kind.service-list"),
         "--format", "json"],
        capture_output=True, text=True, cwd=ROOT,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["mode"] == "cilium" and len(doc["frontends"]) == 7
