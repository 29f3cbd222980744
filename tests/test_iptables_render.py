"""The iptables proxier's text, compared with kube-proxy's layout for known inputs."""

from __future__ import annotations

import ipaddress
import re
import subprocess
import textwrap
from pathlib import Path

import pytest

from helpers import upstream_services
from kubelab import naming
from kubelab.dataplanes.reference.proxier import IptablesProxier, ProxierContext
from kubelab.model import Endpoint, Service, ServicePort, ServiceState
from kubelab.rules.iptables_save import parse_rules
from kubelab.rules.table import effective_weights

CTX = ProxierContext(node="node1", cluster_cidr=ipaddress.IPv4Network("10.244.0.0/16"))
IP = ipaddress.IPv4Address


def web(policy: str = "Cluster", endpoints: int = 3) -> ServiceState:
    svc = Service(
        namespace="default",
        name="web",
        type="NodePort",
        cluster_ip=IP("10.96.0.20"),
        ports=(ServicePort("http", "TCP", 80, 8080, 30100),),
        workload="web",
        external_traffic_policy=policy,  # type: ignore[arg-type]
    )
    eps = (
        Endpoint(IP("10.244.1.2"), 8080, "node1", "web-a"),
        Endpoint(IP("10.244.2.2"), 8080, "node2", "web-b"),
        Endpoint(IP("10.244.2.3"), 8080, "node2", "web-c"),
    )[:endpoints]
    return ServiceState(svc, eps)


def by_chain(text: str, needle: str, also: str) -> dict[str, list[str]]:
    """Rules mentioning `needle` (or in chain `also`), grouped by chain in their order."""
    out: dict[str, list[str]] = {}
    for line in text.splitlines():
        in_also = bool(also) and line.startswith(f"-A {also} ")
        if line.startswith("-A ") and (needle in line or in_also):
            out.setdefault(line.split()[1], []).append(line)
    return out


def section(text: str, table: str) -> str:
    return text.split(f"*{table}\n", 1)[1].split("COMMIT", 1)[0]


SVC = naming.svc_chain("default/web:http", "TCP")
EXT = naming.ext_chain("default/web:http", "TCP")
SVL = naming.svl_chain("default/web:http", "TCP")
SEP = [
    naming.sep_chain("default/web:http", "TCP", a)
    for a in ("10.244.1.2:8080", "10.244.2.2:8080", "10.244.2.3:8080")
]


def test_cluster_policy_layout() -> None:
    text = IptablesProxier().render([web()], CTX)
    expected = textwrap.dedent(f"""\
        -A KUBE-SERVICES -m comment --comment "default/web:http cluster IP" -m tcp -p tcp -d 10.96.0.20/32 --dport 80 -j {SVC}
        -A {SVC} -m comment --comment "default/web:http cluster IP" -m tcp -p tcp -d 10.96.0.20/32 --dport 80 ! -s 10.244.0.0/16 -j KUBE-MARK-MASQ
        -A {SVC} -m comment --comment "default/web:http -> 10.244.1.2:8080" -m statistic --mode random --probability 0.3333333333 -j {SEP[0]}
        -A {SVC} -m comment --comment "default/web:http -> 10.244.2.2:8080" -m statistic --mode random --probability 0.5000000000 -j {SEP[1]}
        -A {SVC} -m comment --comment "default/web:http -> 10.244.2.3:8080" -j {SEP[2]}
        -A KUBE-NODEPORTS -m comment --comment default/web:http -m tcp -p tcp --dport 30100 -j {EXT}
        -A {EXT} -m comment --comment "masquerade traffic for default/web:http external destinations" -j KUBE-MARK-MASQ
        -A {EXT} -j {SVC}
        -A {SEP[0]} -m comment --comment default/web:http -s 10.244.1.2/32 -j KUBE-MARK-MASQ
        -A {SEP[0]} -m comment --comment default/web:http -m tcp -p tcp -j DNAT --to-destination 10.244.1.2:8080
        -A {SEP[1]} -m comment --comment default/web:http -s 10.244.2.2/32 -j KUBE-MARK-MASQ
        -A {SEP[1]} -m comment --comment default/web:http -m tcp -p tcp -j DNAT --to-destination 10.244.2.2:8080
        -A {SEP[2]} -m comment --comment default/web:http -s 10.244.2.3/32 -j KUBE-MARK-MASQ
        -A {SEP[2]} -m comment --comment default/web:http -m tcp -p tcp -j DNAT --to-destination 10.244.2.3:8080
        """)  # noqa: E501
    # iptables-save groups rules by chain; within a chain, order is what matters
    assert by_chain(section(text, "nat"), "default/web", EXT) == by_chain(expected, "-A", "")


def test_local_policy_layout_on_a_node_with_one_local_endpoint() -> None:
    text = IptablesProxier().render([web("Local")], CTX)
    ext = [line for line in section(text, "nat").splitlines() if line.startswith(f"-A {EXT}")]
    assert ext == [
        f'-A {EXT} -m comment --comment "pod traffic for default/web:http external destinations"'
        f" -s 10.244.0.0/16 -j {SVC}",
        f'-A {EXT} -m comment --comment "masquerade LOCAL traffic for default/web:http external'
        f' destinations" -m addrtype --src-type LOCAL -j KUBE-MARK-MASQ',
        f'-A {EXT} -m comment --comment "route LOCAL traffic for default/web:http external'
        f' destinations" -m addrtype --src-type LOCAL -j {SVC}',
        f"-A {EXT} -j {SVL}",
    ]
    svl = [line for line in section(text, "nat").splitlines() if line.startswith(f"-A {SVL}")]
    # only node1's endpoint, with no statistic match (it is the last and only one)
    assert svl == [
        f'-A {SVL} -m comment --comment "default/web:http -> 10.244.1.2:8080" -j {SEP[0]}'
    ]
    assert "has no local endpoints" not in text


def test_local_policy_without_local_endpoints_drops() -> None:
    ctx = ProxierContext(node="node3", cluster_cidr=CTX.cluster_cidr)
    text = IptablesProxier().render([web("Local")], ctx)
    assert (
        '-A KUBE-EXTERNAL-SERVICES -m comment --comment "default/web:http has no local endpoints"'
        " -m addrtype --dst-type LOCAL -m tcp -p tcp --dport 30100 -j DROP"
    ) in section(text, "filter")
    assert not [line for line in text.splitlines() if line.startswith(f"-A {SVL}")]


def test_no_endpoints_rejects_and_writes_no_nat_chain() -> None:
    text = IptablesProxier().render([web(endpoints=0)], CTX)
    flt = section(text, "filter")
    assert (
        '-A KUBE-SERVICES -m comment --comment "default/web:http has no endpoints" '
        "-m tcp -p tcp -d 10.96.0.20/32 --dport 80 -j REJECT"
    ) in flt
    assert (
        '-A KUBE-EXTERNAL-SERVICES -m comment --comment "default/web:http has no endpoints"'
        " -m addrtype --dst-type LOCAL -m tcp -p tcp --dport 30100 -j REJECT"
    ) in flt
    assert SVC not in text


def test_masquerade_machinery() -> None:
    nat = section(IptablesProxier().render([web()], CTX), "nat")
    assert "-A KUBE-MARK-MASQ -j MARK --or-mark 0x4000" in nat
    assert "-A KUBE-POSTROUTING -m mark ! --mark 0x4000/0x4000 -j RETURN" in nat
    assert "-A KUBE-POSTROUTING -j MARK --xor-mark 0x4000" in nat
    assert (
        '-A KUBE-POSTROUTING -m comment --comment "kubernetes service traffic requiring SNAT"'
        " -j MASQUERADE --random-fully"
    ) in nat
    # the NodePort dispatch must stay the last rule of KUBE-SERVICES
    services = [line for line in nat.splitlines() if line.startswith("-A KUBE-SERVICES")]
    assert services[-1].endswith("-m addrtype --dst-type LOCAL -j KUBE-NODEPORTS")


def _chains(text: str, table: str) -> tuple[set[str], set[str]]:
    body = section(text, table)
    declared = set(re.findall(r"^:(\S+) ", body, re.M))
    jumped = {
        r.target
        for r in parse_rules(body)
        if (r.target and r.target in declared) or (r.target or "").startswith("KUBE-")
    }
    return declared, jumped


def test_no_dangling_or_unused_chains() -> None:
    for policy in ("Cluster", "Local"):
        text = IptablesProxier().render([web(policy)], CTX)
        for table in ("nat", "filter"):
            declared, jumped = _chains(text, table)
            assert jumped <= declared, f"{table}: jumps to undeclared {jumped - declared}"
            builtin = {"PREROUTING", "INPUT", "OUTPUT", "POSTROUTING", "FORWARD"}
            unused = declared - jumped - builtin - {"KUBE-PROXY-CANARY"}
            assert not unused, f"{table} ({policy}): chains nothing jumps to: {unused}"


def test_probability_chain_is_uniform_for_many_endpoints() -> None:
    states = []
    for n in (1, 2, 7, 50):
        eps = tuple(Endpoint(IP(f"10.244.1.{i + 2}"), 8080, "node1", f"p{i}") for i in range(n))
        states.append(ServiceState(web().service, eps))
        text = IptablesProxier().render([states[-1]], CTX)
        rules = [
            r
            for r in parse_rules(section(text, "nat"))
            if r.chain == SVC and (r.target or "").startswith("KUBE-SEP-")
        ]
        weights = effective_weights([r.probability for r in rules])
        assert len(weights) == n
        assert max(abs(w - 1 / n) for w in weights) < 1e-9


def test_rules_shared_between_nodes_match_each_nodes_own_render() -> None:
    """A Cluster-policy Service port is rendered once for all nodes, a Local one per node:
    every node's tables are what a proxier that never rendered another node would write."""
    cluster = web("Cluster")
    local = ServiceState(
        Service(
            **{**vars(web("Local").service), "name": "web-local", "cluster_ip": IP("10.96.0.21")}
        ),
        web("Local").endpoints,
    )
    shared = IptablesProxier()
    for node in ("node1", "node2", "node3", "node1"):
        ctx = ProxierContext(node=node, cluster_cidr=CTX.cluster_cidr)
        assert shared.render([cluster, local], ctx) == IptablesProxier().render(
            [cluster, local], ctx
        ), node
    one = ProxierContext(node="node1", cluster_cidr=CTX.cluster_cidr)
    two = ProxierContext(node="node2", cluster_cidr=CTX.cluster_cidr)
    assert shared.render([local], one) != shared.render([local], two)  # Local differs


# where kube-proxy's TestOverallIPTablesRules and the lab differ on purpose: the lab writes
# no localhost NodePorts (kube-proxy's route_localnet rules and their KUBE-FIREWALL guard),
# counts no drops with nfacct, and masquerades --random-fully as kube-proxy does where
# iptables has it (the test's fake iptables has not)
LOCALHOST_NODEPORTS = re.compile(r"127\.0\.0\.0/8")
UNCOUNTED = (re.compile(r"-m nfacct --nfacct-name +\S+ "), re.compile(r" --random-fully"))


@pytest.mark.root
def test_the_lab_writes_what_kube_proxys_own_test_expects() -> None:
    """The proxier's rules for the Services of TestOverallIPTablesRules, loaded into a
    scratch namespace and saved, equal the test's expected rules (saved the same way),
    rule by rule, but for the differences on purpose named above."""
    ctx = ProxierContext(
        "test-node",
        ipaddress.IPv4Network("10.0.0.0/8"),
        service_cidr=ipaddress.IPv4Network("172.30.0.0/16"),
    )
    text = IptablesProxier(node_ips={"test-node": "192.168.0.2"}).render(upstream_services(), ctx)
    name = "kl-kltest-iptscratch"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        subprocess.run(["ip", "netns", "exec", name, "iptables-restore"], input=text, text=True,
                       check=True)  # fmt: skip
        saved = subprocess.run(["ip", "netns", "exec", name, "iptables-save"], text=True,
                               capture_output=True, check=True).stdout  # fmt: skip
    finally:
        subprocess.run(["ip", "netns", "del", name], check=True)
    theirs = (
        Path(__file__).parent / "data" / "dumps" / "upstream-overall.iptables-save"
    ).read_text()

    def kube_rules(dump: str) -> list[str]:
        out = []
        for line in dump.splitlines():
            if line.startswith("-A KUBE-") and not LOCALHOST_NODEPORTS.search(line):
                for pattern in UNCOUNTED:
                    line = pattern.sub("", line)
                out.append(line)
        return sorted(out)

    assert kube_rules(saved) == kube_rules(theirs)
