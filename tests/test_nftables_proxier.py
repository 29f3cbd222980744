"""The nftables proxier: kube-proxy's names and layout, and incremental syncs that end in
exactly the state a full load gives (checked on the real kernel)."""

from __future__ import annotations

import ipaddress
import json
import subprocess
from collections.abc import Iterator
from typing import Any

import pytest

from kubelab import naming
from kubelab.dataplanes.reference.proxier import NftablesProxier, ProxierContext
from kubelab.hosts import NetnsRunner
from kubelab.model import Endpoint, Service, ServicePort, ServiceState
from kubelab.rules.nft import load_nft_json

IP = ipaddress.IPv4Address
CTX = ProxierContext(node="node1", cluster_cidr=ipaddress.IPv4Network("10.244.0.0/16"))


def web(
    policy: str = "Cluster",
    n: int = 3,
    affinity: str = "None",
    name: str = "web",
    ip: str = "10.96.0.20",
    node_port: int | None = 30100,
) -> ServiceState:
    svc = Service(
        "default",
        name,
        "NodePort" if node_port else "ClusterIP",
        IP(ip),
        (ServicePort("http", "TCP", 80, 8080, node_port),),
        "web",
        external_traffic_policy=policy,
        session_affinity=affinity,
    )  # type: ignore[arg-type]
    eps = tuple(
        Endpoint(IP(f"10.244.{1 + i % 2}.{2 + i}"), 8080, f"node{1 + i % 2}", f"p{i}")
        for i in range(n)
    )
    return ServiceState(svc, eps)


def test_chain_names_match_kube_proxys_own_examples() -> None:
    # from the comments of pkg/proxy/nftables/proxier.go
    assert naming.nft_service_base("ns1", "svc1", "tcp", "p80") == "ULMVA6XW-ns1/svc1/tcp/p80"
    assert (
        naming.nft_endpoint_base("ns1", "svc1", "tcp", "p80", "10.180.0.1", 80)
        == "5OJB2KTY-ns1/svc1/tcp/p80__10.180.0.1/80"
    )


def test_cluster_layout() -> None:
    rs = NftablesProxier().ruleset([web()], CTX)
    base = naming.nft_service_base("default", "web", "tcp", "http")
    svc, ext = f"service-{base}", f"external-{base}"
    assert rs.elements["service-ips"] == {"10.96.0.20 . tcp . 80": f"goto {svc}"}
    assert rs.elements["service-nodeports"] == {"tcp . 30100": f"goto {ext}"}
    assert rs.chains[svc][0] == (
        "ip daddr 10.96.0.20 tcp dport 80 ip saddr != 10.244.0.0/16 jump mark-for-masquerade"
    )
    assert rs.chains[svc][1].startswith("numgen random mod 3 vmap { 0 : goto endpoint-")
    assert rs.chains[ext] == ["jump mark-for-masquerade", f"goto {svc}"]
    ep = f"endpoint-{naming.nft_endpoint_base('default', 'web', 'tcp', 'http', '10.244.1.2', 8080)}"
    assert rs.chains[ep] == [
        "ip saddr 10.244.1.2 jump mark-for-masquerade",
        "meta l4proto tcp dnat to 10.244.1.2:8080",
    ]
    assert rs.chains["masquerading"] == [
        "mark and 0x004000 == 0 return",
        "mark set mark xor 0x004000",
        "masquerade fully-random",
    ]


def test_local_layout_and_drop_without_local_endpoints() -> None:
    base = naming.nft_service_base("default", "web", "tcp", "http")
    rs = NftablesProxier().ruleset([web("Local")], CTX)
    assert rs.chains[f"external-{base}"][-1] == f"goto local-{base}"
    assert "numgen random mod 2" in rs.chains[f"local-{base}"][0]  # node1 has two of three
    far = NftablesProxier().ruleset([web("Local")], ProxierContext("node9", CTX.cluster_cidr))
    assert far.elements["no-endpoint-nodeports"] == {
        'tcp . 30100 comment "default/web:http"': "drop"
    }
    assert f"local-{base}" not in far.chains


def test_no_endpoints_rejects() -> None:
    rs = NftablesProxier().ruleset([web(n=0)], CTX)
    assert rs.elements["no-endpoint-services"] == {
        '10.96.0.20 . tcp . 80 comment "default/web:http"': "goto reject-chain"
    }
    assert rs.elements["service-ips"] == {}


def test_affinity_uses_one_timeout_set_per_endpoint() -> None:
    rs = NftablesProxier().ruleset([web(affinity="ClientIP")], CTX)
    assert len(rs.affinity_sets) == 3 and set(rs.affinity_sets.values()) == {10800}
    base = naming.nft_service_base("default", "web", "tcp", "http")
    assert rs.chains[f"service-{base}"][1].startswith("ip saddr @affinity-")


# --- on the real kernel -----------------------------------------------------------------------


@pytest.fixture
def scratch() -> Iterator[NetnsRunner]:
    name = "kl-kltest-nftscratch"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        yield NetnsRunner("scratch", name)
    finally:
        subprocess.run(["ip", "netns", "del", name], check=True)


def normalized(runner: NetnsRunner) -> dict[str, Any]:
    """The table's content without handles and element order."""
    dump = load_nft_json(runner.run(["nft", "-j", "list", "ruleset"]).stdout)
    return {
        "chains": {
            name: [json.dumps(r.expr, sort_keys=True) for r in rules]
            for name, rules in dump.chains.items()
        },
        "maps": {
            name: sorted(json.dumps(e, sort_keys=True) for e in elems)
            for name, elems in dump.maps.items()
        },
        "sets": sorted(dump.sets),
    }


STEPS = [
    [web()],
    [web("Local", 3, "ClientIP")],
    [web("Local", 0)],
    [web(n=5), web(name="api", ip="10.96.0.30", node_port=None, n=2)],
    [web(n=5, affinity="ClientIP")],
    [],
    [web(n=1)],
]


@pytest.mark.root
def test_incremental_syncs_end_where_a_full_load_does(scratch: NetnsRunner) -> None:
    incremental = NftablesProxier()
    for step in STEPS:
        text = incremental.sync(scratch, step, CTX)
        after_delta = normalized(scratch)
        NftablesProxier().sync(scratch, step, CTX)  # a fresh proxier loads everything
        assert normalized(scratch) == after_delta, f"delta diverged after:\n{text}"
    # an unchanged sync sends nothing
    assert incremental.sync(scratch, STEPS[-1], CTX) == ""
