"""`kubelab audit --trace`: one packet through a node's rules, checked with tables of flows
in the style of kube-proxy's own packet-flow tests (source, destination, port -> outcome,
endpoints, masquerade), on kube-proxy's own expected rules in both modes and every nftables
layout, on the lab's real dumps, and on IPVS listings."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import NamedTuple

import pytest

from conftest import DATA, ROOT
from kubelab.rules.audit import trace
from kubelab.rules.trace import TraceInputError, parse_flow

DUMPS = DATA / "dumps"
# the node of kube-proxy's tests: 192.168.0.2, another address, and an external IP on it
UPSTREAM_NODE = {"192.168.0.2", "192.168.1.2", "192.168.99.11"}
POD, HAIRPIN, NODE = "10.0.0.2", "10.180.0.1", "192.168.0.2"
OUTSIDE, BLOCKED = "203.0.113.2", "203.0.113.130"  # inside / outside svc5's source range


class Flow(NamedTuple):
    name: str
    source: str
    destination: str  # ip:port[/proto]
    outcome: str
    endpoints: tuple[str, ...] = ()
    masquerade: bool = False


SVC4 = ("10.180.0.4:80", "10.180.0.5:80")
# What every layout does the same (TestOverallIPTablesRules / TestOverallNFTablesRules)
COMMON = [
    Flow("pod to cluster IP", POD, "172.30.0.41:80", "dnat", ("10.180.0.1:80",)),
    Flow("hairpin to cluster IP", HAIRPIN, "172.30.0.41:80", "dnat", ("10.180.0.1:80",), True),
    Flow("off-cluster to cluster IP", OUTSIDE, "172.30.0.41:80", "dnat", ("10.180.0.1:80",), True),
    Flow("pod to cluster IP, two endpoints", POD, "172.30.0.44:80", "dnat", SVC4),
    Flow("external to NodePort", OUTSIDE, f"{NODE}:3003", "dnat", ("10.180.0.3:80",), True),
    Flow("external to Local NodePort, no local endpoint", OUTSIDE, f"{NODE}:3001", "drop"),
    Flow("pod to Local NodePort: short-circuit", POD, f"{NODE}:3001", "dnat", ("10.180.0.2:80",)),
    Flow("external to Local LB IP, no local endpoint", OUTSIDE, "1.2.3.4:80", "drop"),
    Flow("pod to Local LB IP: short-circuit", POD, "1.2.3.4:80", "dnat", ("10.180.0.2:80",)),
    Flow("external to Local external IP", OUTSIDE, "192.168.99.22:80", "drop"),
    Flow("external to external IP", OUTSIDE, "192.168.99.33:80", "dnat", SVC4, True),
    Flow("accepted external to LB IP", OUTSIDE, "5.6.7.8:80", "dnat", ("10.180.0.3:80",), True),
    Flow("blocked external to LB IP", BLOCKED, "5.6.7.8:80", "drop"),
    Flow(
        "NodePort bypasses source ranges", BLOCKED, f"{NODE}:3002", "dnat", ("10.180.0.3:80",), True
    ),
    Flow("pod to Service without endpoints", POD, "172.30.0.46:80", "reject"),
    Flow("pod to a pod: no Service", POD, "10.180.0.1:80", "none"),
]
NODE_TO_LOCAL_LB = Flow(
    "node to Local LB IP: short-circuit, masqueraded", NODE, "1.2.3.4:80", "dnat",
    ("10.180.0.2:80",), True,
)  # fmt: skip
# nftables since 1.31: the cluster-ips set rejects other ports, the Service CIDR drops
# unallocated addresses; iptables has neither
CLUSTER_IPS_CHECK = [
    Flow("cluster IP, another port", POD, "172.30.0.41:443", "reject"),
    Flow("cluster IP, UDP on a TCP port", POD, "172.30.0.41:80/udp", "reject"),
    Flow("unallocated cluster IP", POD, "172.30.0.50:80", "drop"),
]
NO_CLUSTER_IPS_CHECK = [
    Flow("cluster IP, another port", POD, "172.30.0.41:443", "none"),
    Flow("unallocated cluster IP", POD, "172.30.0.50:80", "none"),
]
TABLES = {
    "upstream-overall.iptables-save": [*COMMON, NODE_TO_LOCAL_LB, *NO_CLUSTER_IPS_CHECK],
    "upstream-1.36-overall.nft.txt": [*COMMON, NODE_TO_LOCAL_LB, *CLUSTER_IPS_CHECK],
    "upstream-1.36-overall.nft.json": [*COMMON, NODE_TO_LOCAL_LB, *CLUSTER_IPS_CHECK],
    # 1.31-1.35 check "no endpoints" in filter-output at -110, before nat-output's DNAT:
    # the node's own connection to a Local LB IP without a local endpoint is dropped
    # there, before its short-circuit (1.36 moved filter-output after DNAT)
    "upstream-1.31-overall.nft.txt": [
        *COMMON,
        NODE_TO_LOCAL_LB._replace(outcome="drop", endpoints=(), masquerade=False),
        *CLUSTER_IPS_CHECK,
    ],
    "upstream-1.31-overall.nft.json": [
        *COMMON,
        NODE_TO_LOCAL_LB._replace(outcome="drop", endpoints=(), masquerade=False),
        *CLUSTER_IPS_CHECK,
    ],
}
CASES = [(name, flow) for name, flows in TABLES.items() for flow in flows]


def check(name: str, flow: Flow, node: set[str], data: Path = DUMPS) -> None:
    src = flow.source
    dst, _, proto = flow.destination.partition("/")
    packet = parse_flow(src, dst + (f"/{proto}" if proto else ""))
    got = trace((data / name).read_text(), name, packet, node)
    assert (got.outcome, tuple(sorted(got.endpoints)), got.masquerade) == (
        flow.outcome,
        tuple(sorted(flow.endpoints)),
        flow.masquerade,
    ), f"{flow.name}: {got.to_json()}"
    if got.endpoints:
        assert sum(got.shares) == pytest.approx(1.0)
        assert max(got.shares) - min(got.shares) < 1e-9  # kube-proxy spreads evenly


@pytest.mark.parametrize(("name", "flow"), CASES, ids=[f"{n}:{f.name}" for n, f in CASES])
def test_kube_proxys_own_rules(name: str, flow: Flow) -> None:
    check(name, flow, UPSTREAM_NODE)


# the lab's own dumps (tests/data/dumps/SOURCES.md): node1 of labs/local.yaml with echo
# switched to policy Local; node2 of the same lab; nftables node with web (affinity,
# Local NodePort 30100), empty (no endpoints) and c
LAB_ECHO = tuple(f"10.244.{n}.{h}:8080" for n in (1, 2, 3) for h in (2, 3))
LAB_TABLES = {
    "lab-node2-local.iptables-save": ({"192.168.56.12"}, [
        Flow("client to cluster IP", "192.168.56.254", "10.96.0.10:80", "dnat", LAB_ECHO, True),
        Flow("pod to cluster IP", "10.244.1.2", "10.96.0.10:80", "dnat", LAB_ECHO),
        Flow("client to Local NodePort: node2's pods", "192.168.56.254", "192.168.56.12:30080",
             "dnat", ("10.244.2.2:8080", "10.244.2.3:8080")),
        Flow("pod to Local NodePort: short-circuit", "10.244.1.2", "192.168.56.12:30080",
             "dnat", LAB_ECHO),
        Flow("NodePort on another address", "192.168.56.254", "192.168.56.11:30080", "none"),
    ]),
    "lab-nftables.nft.json": ({"192.168.56.11"}, [
        Flow("client to no-endpoint cluster IP", "192.168.56.254", "10.96.0.21:80", "reject"),
        Flow("client to NodePort without endpoints", "192.168.56.254", "192.168.56.11:30101",
             "reject"),
        Flow("client to NodePort", "192.168.56.254", "192.168.56.11:30102", "dnat",
             ("10.244.1.2:8080", "10.244.2.3:8080", "10.244.1.4:8080"), True),
    ]),
}  # fmt: skip
LAB_CASES = [(n, f) for n, (_, flows) in LAB_TABLES.items() for f in flows]


@pytest.mark.parametrize(("name", "flow"), LAB_CASES, ids=[f"{n}:{f.name}" for n, f in LAB_CASES])
def test_the_labs_own_dumps(name: str, flow: Flow) -> None:
    check(name, flow, LAB_TABLES[name][0], DATA)


def test_ipvs_names_the_virtual_server_and_its_real_servers() -> None:
    text = (DUMPS / "ipvs-1.19-kubeadm-2205.ipvsadm-Ln").read_text()
    got = trace(text, "ipvs", parse_flow("10.244.1.5", "10.96.0.10:53"), set())
    assert got.outcome == "dnat" and got.masquerade is False
    assert got.path[0].startswith("virtual server TCP 10.96.0.10:53 rr")
    assert len(got.endpoints) == 2 and got.shares == [0.5, 0.5]
    missing = trace(text, "ipvs", parse_flow("10.244.1.5", "10.96.0.99:80"), set())
    assert missing.outcome == "none"


@pytest.mark.parametrize(
    ("source", "destination", "message"),
    [
        ("10.0.0.300", "1.2.3.4:80", "--trace SRC: '10.0.0.300' is not an IPv4 address"),
        ("10.0.0.3", "1.2.3.4", "--trace DST: '1.2.3.4' is not ADDRESS:PORT"),
        ("10.0.0.3", "1.2.3.4:80/icmp", "--trace DST: '1.2.3.4:80/icmp' is not ADDRESS:PORT"),
    ],
)
def test_a_bad_flow_is_one_line(source: str, destination: str, message: str) -> None:
    with pytest.raises(TraceInputError, match=message.replace("[", r"\[").replace("/", "/")):
        parse_flow(source, destination)


def kubelab(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "kubelab.cli", *args], capture_output=True, text=True, cwd=ROOT
    )


def test_cli_text_and_json() -> None:
    dump = str(DUMPS / "upstream-1.36-overall.nft.txt")
    flags = ["--node-address", NODE, "--trace", BLOCKED, "5.6.7.8:80"]
    text = kubelab("audit", dump, *flags)
    assert text.returncode == 0, text.stderr
    assert "firewall-HVFWP5L3-ns5/svc5/tcp/p80: drop" in text.stdout
    assert "outcome: drop" in text.stdout
    doc = json.loads(kubelab("audit", dump, *flags, "--format", "json").stdout)
    assert {k: doc[k] for k in ("outcome", "endpoints", "masquerade")} == {
        "outcome": "drop",
        "endpoints": [],
        "masquerade": False,
    }
    assert any("firewall-ips" in step for step in doc["path"])
    bad = kubelab("audit", dump, "--trace", "nowhere", "5.6.7.8:80")
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1, bad.stderr
    node = kubelab("audit", dump, "--node-address", "node1", "--trace", BLOCKED, "5.6.7.8:80")
    assert node.returncode == 2 and "--node-address: " in node.stderr, node.stderr


def test_the_announcing_node_has_a_ready_endpoint_under_policy_local() -> None:
    """MetalLB's L2 choice, as the lab makes it: under policy Local only a node with a
    ready endpoint announces; otherwise the first node."""
    from dataclasses import replace
    from ipaddress import IPv4Address, IPv4Network

    from helpers import upstream_services
    from kubelab.dataplanes.reference.announcer import announcements
    from kubelab.topology import NodeInfo

    nodes = [
        NodeInfo(name, i, IPv4Address(f"192.168.0.{i + 1}"), IPv4Network(f"10.180.{i}.0/24"),
                 IPv4Address(f"10.180.{i}.1"))
        for i, name in enumerate(("other", "test-node"), start=1)
    ]  # fmt: skip
    states = upstream_services()
    routes = {str(k): str(v) for k, v in announcements(states, nodes).items()}
    # svc2 (Local) has no endpoint on either node: nobody announces its two addresses
    assert routes == {"192.168.99.33": "192.168.0.2", "5.6.7.8": "192.168.0.2"}
    svc2 = next(s for s in states if s.service.name == "svc2")
    moved = replace(svc2, endpoints=tuple(replace(e, node="test-node") for e in svc2.endpoints))
    routes = {str(k): str(v) for k, v in announcements([moved], nodes).items()}
    assert routes == {"192.168.99.22": "192.168.0.3", "1.2.3.4": "192.168.0.3"}


def test_an_excerpt_ends_the_trace_and_says_where() -> None:
    text = (DUMPS / "k8s-1.6-affinity-and-masq.iptables-save").read_text()
    got = trace(text, "excerpt", parse_flow("192.168.1.5", "10.96.0.1:443"), set())
    assert got.outcome == "none"
    assert got.notes == [
        "KUBE-SEP-6FZLAPUAJM6OKK6A has no rules in this dump (an excerpt?): the trace ends there"
    ]
    # the off-cluster source was marked on the way (pre-1.20: in KUBE-SERVICES)
    assert got.path[0] == "nat KUBE-SERVICES: mark for masquerade"
