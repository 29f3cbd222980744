"""The nftables proxier: kube-proxy's names and layout, and incremental syncs that end in
exactly the state a full load gives (checked on the real kernel)."""

from __future__ import annotations

import ipaddress
import json
import re
import socket
import subprocess
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from helpers import upstream_services
from kubelab import naming
from kubelab.dataplanes.reference.proxier import NftablesProxier, ProxierContext
from kubelab.dataplanes.reference.proxier.nft_netlink import NETLINK_NETFILTER, Batch
from kubelab.errors import LabError
from kubelab.hosts import CommandResult, NetnsRunner
from kubelab.model import Endpoint, Service, ServicePort, ServiceState
from kubelab.rules.nft import load_nft_json

DUMPS = Path(__file__).parent / "data" / "dumps"

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
        "ip daddr 10.96.0.20 ip saddr != 10.244.0.0/16 jump mark-for-masquerade"
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


def bytecode(runner: NetnsRunner) -> list[str]:
    """Every rule's and element's kernel bytecode as nft prints it, without handles and
    anonymous set numbers, in a stable order: two ways of writing the same rules must give
    the same list."""
    text = runner.run(["nft", "--debug=netlink", "list", "ruleset"]).stdout
    blocks: list[list[str]] = []
    for line in text.split("\ntable ")[0].splitlines():
        if not line.strip():
            continue
        line = re.sub(r"__map\d+", "__map", line)
        if not line[0].isspace():  # "ip kube-proxy CHAIN HANDLE [POSITION]" or "... @SET"
            blocks.append([re.sub(r"(\s+\d+)+\s*$", "", line)])
        else:
            blocks[-1].append(line)
    return sorted("\n".join([b[0], *(sorted(b[1:]) if "@" in b[0] else b[1:])]) for b in blocks)


# where kube-proxy's test and the lab differ on purpose: the test sets --nodeport-addresses
# (a nodeport-ips set), the lab leaves it unset (NodePorts on every local address)
NODEPORT_ADDRESS_PARTS = ("services", "nodeport-endpoints-check")


@pytest.mark.root
def test_the_lab_writes_what_kube_proxy_1_36_writes(scratch: NetnsRunner) -> None:
    """The proxier's table for the Services of kube-proxy's TestOverallNFTablesRules equals
    that test's expected rules, both loaded into the kernel: every chain, rule, map
    element and set but the NodePort address choice."""
    ctx = ProxierContext(
        "test-node",
        ipaddress.IPv4Network("10.0.0.0/8"),
        service_cidr=ipaddress.IPv4Network("172.30.0.0/16"),
    )
    proxier = NftablesProxier(node_ips={"test-node": "192.168.0.2"})
    scratch.run(["nft", "-f", "-"], input=proxier.render(upstream_services(), ctx))
    ours = normalized(scratch)
    scratch.run(["nft", "flush", "ruleset"])
    scratch.run(["nft", "-f", "-"], input=(DUMPS / "upstream-1.36-overall.nft").read_text())
    theirs = normalized(scratch)
    for doc in (ours, theirs):
        for part in NODEPORT_ADDRESS_PARTS:
            doc["chains"].pop(part)
        doc["sets"] = [name for name in doc["sets"] if name != "nodeport-ips"]
    assert ours == theirs


class RecordingRunner(NetnsRunner):
    """A namespace runner that remembers the commands it ran."""

    def __init__(self, name: str, netns: str) -> None:
        super().__init__(name, netns)
        self.commands: list[tuple[str, ...]] = []

    def run(self, argv: Sequence[str], **kwargs: Any) -> CommandResult:
        self.commands.append(tuple(argv))
        return super().run(argv, **kwargs)


def dns(n: int = 2) -> ServiceState:
    svc = Service(
        "kube-system",
        "dns",
        "NodePort",
        IP("10.96.0.10"),
        (ServicePort("dns", "UDP", 53, 5353, 30053),),
        "dns",
    )  # type: ignore[arg-type]
    eps = tuple(Endpoint(IP(f"10.244.1.{20 + i}"), 5353, "node1", f"d{i}") for i in range(n))
    return ServiceState(svc, eps)


STEPS = [
    [web()],
    [web("Local", 3, "ClientIP")],
    [web("Local", 0), dns()],
    [web(n=5), web(name="api", ip="10.96.0.30", node_port=None, n=2), dns(0)],
    [web(n=5, affinity="ClientIP"), dns(3)],
    [],
    [web(n=1)],
]


@pytest.mark.root
@pytest.mark.parametrize("cluster_cidr", ["10.244.0.0/16", "10.240.0.0/12"])
def test_incremental_syncs_end_where_a_full_load_does(
    scratch: NetnsRunner, cluster_cidr: str
) -> None:
    """Deltas go to the kernel as netlink batches (no `nft -f` after the first load) and
    leave the same rules, down to the bytecode, as nft loading the whole table. The /12
    pod CIDR takes nft's masked-prefix encoding, the /16 its byte-aligned one."""
    ctx = ProxierContext(node="node1", cluster_cidr=ipaddress.IPv4Network(cluster_cidr))
    runner = RecordingRunner("scratch", scratch.netns)
    incremental = NftablesProxier()
    for i, step in enumerate(STEPS):
        runner.commands.clear()
        text = incremental.sync(runner, step, ctx)
        loads = [c for c in runner.commands if c[:2] == ("nft", "-f")]
        assert loads == ([("nft", "-f", "-")] if i == 0 else []), f"step {i} ran nft -f"
        after_delta, code_after_delta = normalized(scratch), bytecode(scratch)
        NftablesProxier().sync(scratch, step, ctx)  # a fresh proxier loads everything
        assert normalized(scratch) == after_delta, f"delta diverged after:\n{text}"
        assert bytecode(scratch) == code_after_delta, f"bytecode diverged after:\n{text}"
    # an unchanged sync sends nothing
    assert incremental.sync(scratch, STEPS[-1], ctx) == ""


@pytest.mark.root
def test_a_refused_batch_names_its_command_and_changes_nothing(scratch: NetnsRunner) -> None:
    proxier = NftablesProxier()
    proxier.sync(scratch, [web()], CTX)
    before = normalized(scratch)
    batch = Batch(naming.NFT_TABLE)
    batch.add_chain("new-chain")
    batch.add_rule("new-chain", "goto no-such-chain")
    with pytest.raises(
        LabError,
        match=r"scratch: nf_tables refused 'add rule new-chain goto "
        r"no-such-chain': No such file or directory .*nothing of this change",
    ):
        batch.send(socket_into(scratch), "scratch")
    assert normalized(scratch) == before


def socket_into(runner: NetnsRunner) -> socket.socket:
    sock = runner.netlink(NETLINK_NETFILTER)
    assert sock is not None
    return sock


def test_a_rule_outside_the_vocabulary_is_refused_not_guessed() -> None:
    batch = Batch(naming.NFT_TABLE)
    with pytest.raises(LabError, match="no encoding for rule 'ct state new counter'"):
        batch.add_rule("some-chain", "ct state new counter")


@pytest.mark.root
def test_a_delta_of_thousands_of_elements_is_split_over_messages(scratch: NetnsRunner) -> None:
    """1,500 new Services in one delta: their service-ips elements pass the 64 KiB an
    attribute can hold, so they go in several messages of the same batch."""
    proxier = NftablesProxier()
    proxier.sync(scratch, [], CTX)
    many = [
        web(name=f"s{i}", ip=f"10.96.{10 + i // 250}.{1 + i % 250}", n=1, node_port=None)
        for i in range(1500)
    ]
    proxier.sync(scratch, many, CTX)
    assert proxier.count_rules(scratch)["map_elements"] == 1500
    after_delta = normalized(scratch)
    NftablesProxier().sync(scratch, many, CTX)
    assert normalized(scratch) == after_delta


@pytest.mark.parametrize("text", ["ip saddr", "tcp dport eighty goto x", "meta l4proto icmp"])
def test_a_rule_cut_short_is_refused_too(text: str) -> None:
    with pytest.raises(LabError, match="no encoding for rule"):
        Batch(naming.NFT_TABLE).add_rule("some-chain", text)
