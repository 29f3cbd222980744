"""The rule auditor on real dumps: each is read into the whole expected table."""

from __future__ import annotations

import json
import subprocess
import sys
from ipaddress import ip_address
from pathlib import Path
from typing import Any

import pytest

from conftest import DATA, ROOT
from kubelab.rules.audit import AuditInputError, audit, detect
from kubelab.rules.expected import diff_tables, expected_table
from kubelab.rules.table import KINDS, ForwardingTable

DUMPS = DATA / "dumps"
FIELDS = (
    "kind",
    "vip",
    "port",
    "protocol",
    "service",
    "endpoints",
    "probabilities",
    "affinity_seconds",
    "masquerade_offcluster",
    "local_only",
    "no_endpoints",
    "short_circuit_sources",
    "short_circuit_endpoints",
    "source_ranges",
)


def rows(table: ForwardingTable) -> list[dict[str, Any]]:
    return [{k: f[k] for k in FIELDS} for f in table.to_json()["frontends"]]


def fe(kind: str, vip: str | None, port: int, protocol: str = "tcp", **more: Any) -> dict:
    base = {
        "kind": kind,
        "vip": vip,
        "port": port,
        "protocol": protocol,
        "service": None,
        "endpoints": [],
        "probabilities": [],
        "affinity_seconds": None,
        "masquerade_offcluster": False,
        "local_only": False,
        "no_endpoints": None,
        "short_circuit_sources": [],
        "short_circuit_endpoints": [],
        "source_ranges": [],
    }
    return base | more


def test_docs_hostnames_old_layout() -> None:
    table = audit((DUMPS / "k8s-1.3-docs-hostnames.iptables-save").read_text())
    assert table.mode == "iptables"
    assert rows(table) == [
        fe(
            "clusterip",
            "10.0.1.175",
            80,
            service="default/hostnames",
            endpoints=["10.244.1.7:9376", "10.244.2.3:9376", "10.244.3.6:9376"],
            probabilities=["0.33332999982", "0.50000000000"],
        )
    ]
    weights = table.frontends[0].weights
    assert max(abs(w - 1 / 3) for w in weights) < 1e-4
    assert table.warnings == []


def test_pre_1_20_affinity_and_masquerade_in_kube_services() -> None:
    table = audit((DUMPS / "k8s-1.6-affinity-and-masq.iptables-save").read_text())
    assert rows(table) == [
        fe(
            "clusterip",
            "10.96.0.1",
            443,
            service="default/kubernetes:https",
            endpoints=["?"],
            affinity_seconds=10800,
            masquerade_offcluster=True,
        ),
        fe(
            "clusterip",
            "10.96.0.10",
            53,
            "udp",
            service="kube-system/kube-dns:dns",
            masquerade_offcluster=True,
        ),
    ]
    assert any("KUBE-SEP-6FZLAPUAJM6OKK6A has no DNAT rule" in w for w in table.warnings)
    assert any("KUBE-SVC-TCOU7JCQXEZGVUNU jumps to no endpoint" in w for w in table.warnings)
    # Docker's and libvirt's rules in the same dump are not Services and not errors
    assert not any("DOCKER" in w or "192.168.122" in w for w in table.warnings)


def test_truncated_dump_names_the_undefined_chains() -> None:
    table = audit((DUMPS / "k8s-1.3-consul-truncated.iptables-save").read_text())
    assert table.frontends == []
    assert (
        "KUBE-SVC-O4A6SDCC2OYMU5YR (kube-system/consul:server) jumps to 5 endpoint chains "
        "the dump never defines: KUBE-SEP-3SHLK4N34HNOKFTO, KUBE-SEP-NHOET3OEZGPXAKZV, "
        "KUBE-SEP-PES3RDOZWFBBLSDU, KUBE-SEP-VBDE5YQFTFIUFE64, KUBE-SEP-ZDAXYFTWTZWWTZJQ"
    ) in table.warnings


def test_1_26_local_nodeport_without_local_endpoints() -> None:
    table = audit((DUMPS / "k8s-1.26-kind-local-nodeport.iptables-save").read_text())
    # an excerpt: the short-circuit sources are there, the cluster-wide chain is not
    assert rows(table) == [
        fe(
            "nodeport",
            None,
            31964,
            service="default/nodeport-service",
            local_only=True,
            short_circuit_sources=["10.244.0.0/16", "node"],
        )
    ]
    assert table.warnings == [
        "nodeport tcp :31964 (default/nodeport-service): jumps to KUBE-SVC-QATUYZLPU4I4HE4S, "
        "which the dump never defines (from chain KUBE-EXT-QATUYZLPU4I4HE4S)"
    ]


def upstream_overall(external: str, lb_local: str, probabilities: list[str]) -> list[dict]:
    """The table of kube-proxy's own TestOverallNFTablesRules / TestOverallIPTablesRules
    Services: svc1 ClusterIP, svc2 LoadBalancer + external IP with policy Local and no
    local endpoint, svc3 NodePort, svc4 NodePort + external IP with two endpoints, svc5
    LoadBalancer with loadBalancerSourceRanges and affinity, svc6 without endpoints.
    `external` and `lb_local` are the kinds the dump can show for svc2's addresses."""
    masq = {"masquerade_offcluster": True}
    local_drop = {
        "local_only": True,
        "no_endpoints": "drop",
        "short_circuit_sources": ["10.0.0.0/8", "node"],
        "short_circuit_endpoints": ["10.180.0.2:80"],
    }
    svc4 = {"endpoints": ["10.180.0.4:80", "10.180.0.5:80"], "probabilities": probabilities}
    svc5 = {"endpoints": ["10.180.0.3:80"], "affinity_seconds": 10800} | masq
    one = {"service": "ns1/svc1:p80", "endpoints": ["10.180.0.1:80"]}
    two = {"service": "ns2/svc2:p80"}
    three = {"service": "ns3/svc3:p80", "endpoints": ["10.180.0.3:80"]} | masq
    four, five = {"service": "ns4/svc4:p80"} | svc4 | masq, {"service": "ns5/svc5:p80"} | svc5
    table = [
        fe("clusterip", "172.30.0.41", 80, **one, **masq),
        fe("clusterip", "172.30.0.42", 80, **two, endpoints=["10.180.0.2:80"], **masq),
        fe("clusterip", "172.30.0.43", 80, **three),
        fe("clusterip", "172.30.0.44", 80, **four),
        fe("clusterip", "172.30.0.45", 80, **five),
        fe("clusterip", "172.30.0.46", 80, service="ns6/svc6:p80", no_endpoints="reject"),
        fe("nodeport", None, 3001, **two, **local_drop),
        fe("nodeport", None, 3002, **five),
        fe("nodeport", None, 3003, **three),
        fe(external, "192.168.99.22", 80, **two, **local_drop),
        fe(external, "192.168.99.33", 80, **four),
        fe(lb_local, "1.2.3.4", 80, **two, **local_drop),
        fe("loadbalancer", "5.6.7.8", 80, **five, source_ranges=["203.0.113.0/25"]),
    ]
    return sorted(table, key=lambda f: (KINDS.index(f["kind"]), ip_address(f["vip"] or "0.0.0.0")))


@pytest.mark.parametrize(
    "name",
    [
        "upstream-1.36-overall.nft.txt",
        "upstream-1.36-overall.nft.json",
        "upstream-1.31-overall.nft.txt",
        "upstream-1.31-overall.nft.json",
    ],
)
def test_kube_proxys_own_nftables_layouts_whole_table(name: str) -> None:
    """LoadBalancer IPs with source ranges are told from the others by `firewall-ips`;
    the rest of the external addresses cannot be, so they are "external"; cluster IPs
    without endpoints come from the `cluster-ips` set; policy Local without a local
    endpoint drops external sources and short-circuits pods and the node."""
    table = audit((DUMPS / name).read_text())
    assert rows(table) == upstream_overall("external", "external", [])
    assert table.warnings == []


def test_kube_proxys_own_iptables_layout_whole_table() -> None:
    """iptables names every address's kind in its comments; a "has no local endpoints"
    DROP joins the frontend of its address (no invented externalip), and KUBE-FW- gives
    the source ranges (KUBE-PROXY-FIREWALL's DROP is not a frontend)."""
    table = audit((DUMPS / "upstream-overall.iptables-save").read_text())
    assert rows(table) == upstream_overall("externalip", "loadbalancer", ["0.50000000000"])
    assert table.warnings == []


@pytest.mark.parametrize(
    "name",
    [
        "upstream-overall.iptables-save",
        "upstream-1.36-overall.nft.json",
        "upstream-1.31-overall.nft.txt",
    ],
)
def test_expected_table_of_kube_proxys_own_services_matches_their_dumps(name: str) -> None:
    """`--expect` from the Services and EndpointSlices behind those dumps: no difference,
    in either mode's way of naming external addresses."""
    doc = json.loads((DATA / "objects-upstream-overall.json").read_text())
    actual = audit((DUMPS / name).read_text())
    assert diff_tables(expected_table(doc, "test-node", actual.mode), actual) == []


def test_an_external_name_service_calls_for_no_rule() -> None:
    """kube-proxy's dumps of its six Services hold no rule for an ExternalName Service
    beside them, ports, external IPs and all: the expected table has none either."""
    doc = json.loads((DATA / "objects-upstream-overall.json").read_text())
    doc["items"].append({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "alias", "namespace": "ns1"},
        "spec": {"type": "ExternalName", "externalName": "svc1.ns1.svc.cluster.local",
                 "ports": [{"name": "p80", "port": 80, "protocol": "TCP"}],
                 "externalIPs": ["192.0.2.99"]},
    })  # fmt: skip
    actual = audit((DUMPS / "upstream-overall.iptables-save").read_text())
    assert diff_tables(expected_table(doc, "test-node", actual.mode), actual) == []


def test_a_changed_source_range_is_one_difference() -> None:
    doc = json.loads((DATA / "objects-upstream-overall.json").read_text())
    text = (DUMPS / "upstream-overall.iptables-save").read_text()
    actual = audit(text.replace("-s 203.0.113.0/25", "-s 203.0.113.0/24"))
    assert diff_tables(expected_table(doc, "test-node", "iptables"), actual) == [
        "loadbalancer tcp 5.6.7.8:80 (ns5/svc5:p80): loadBalancerSourceRanges 203.0.113.0/24 "
        "in the rules, expected 203.0.113.0/25"
    ]


def test_lab_iptables_dump_1_31_layout() -> None:
    table = audit((DATA / "lab-node2-local.iptables-save").read_text())
    eps = [f"10.244.{n}.{h}:8080" for n in (1, 2, 3) for h in (2, 3)]
    assert rows(table) == [
        fe(
            "clusterip",
            "10.96.0.10",
            80,
            service="default/echo:http",
            endpoints=eps,
            probabilities=[
                "0.16666666651",
                "0.20000000019",
                "0.25000000000",
                "0.33333333349",
                "0.50000000000",
            ],
            masquerade_offcluster=True,
        ),
        fe(
            "nodeport",
            None,
            30080,
            service="default/echo:http",
            endpoints=["10.244.2.2:8080", "10.244.2.3:8080"],
            probabilities=["0.50000000000"],
            local_only=True,
            short_circuit_sources=["10.244.0.0/16", "node"],
            short_circuit_endpoints=eps,
        ),
    ]


@pytest.mark.parametrize("name", ["lab-nftables.nft.json", "lab-nftables.nft.txt"])
def test_lab_nftables_dump_text_and_json_read_the_same(name: str) -> None:
    table = audit((DATA / name).read_text())
    assert detect((DATA / name).read_text()) in ("nftables-json", "nftables-text")
    three = ["10.244.1.2:8080", "10.244.2.3:8080", "10.244.1.4:8080"]
    assert rows(table) == [
        fe(
            "clusterip",
            "10.96.0.20",
            80,
            service="default/web:http",
            endpoints=three,
            affinity_seconds=10800,
            masquerade_offcluster=True,
        ),
        fe("clusterip", "10.96.0.21", 80, service="default/empty:http", no_endpoints="reject"),
        fe(
            "clusterip",
            "10.96.0.22",
            80,
            service="default/c:http",
            endpoints=three,
            masquerade_offcluster=True,
        ),
        fe(
            "nodeport",
            None,
            30100,
            service="default/web:http",
            endpoints=["10.244.1.2:8080", "10.244.1.4:8080"],
            affinity_seconds=10800,
            local_only=True,
            short_circuit_sources=["10.244.0.0/16", "node"],
            short_circuit_endpoints=three,
        ),
        fe("nodeport", None, 30101, service="default/empty:http", no_endpoints="reject"),
        fe(
            "nodeport",
            None,
            30102,
            service="default/c:http",
            endpoints=three,
            masquerade_offcluster=True,
        ),
    ]


def test_ipvs_nodeports_on_several_addresses_become_one_frontend() -> None:
    table = audit((DUMPS / "ipvs-1.19-kubeadm-2205.ipvsadm-Ln").read_text())
    assert table.mode == "ipvs"
    nodeport = table.find("nodeport", None, "tcp", 30449)
    assert nodeport is not None
    assert nodeport.addresses == ["10.0.2.4", "127.0.0.1", "172.17.0.1", "192.168.9.101"]
    assert nodeport.endpoints == ["10.244.36.197:80", "10.244.36.198:80"]
    assert [(f.kind, f.vip, f.port) for f in table.frontends] == [
        ("clusterip", "10.96.0.1", 443),
        ("clusterip", "10.96.0.10", 53),
        ("clusterip", "10.103.89.136", 18080),
        ("nodeport", None, 30449),
    ]
    assert all(f.masquerade_offcluster is None and f.service is None for f in table.frontends)


def test_ipvs_persistence_and_a_nodeport_on_a_node_address() -> None:
    table = audit((DUMPS / "ipvs-1.x-opsnull.ipvsadm-Ln").read_text())
    api = table.find("clusterip", "10.254.0.1", "tcp", 443)
    assert api is not None and api.affinity_seconds == 10800 and api.scheduler == "rr"
    assert [(f.kind, f.port) for f in table.frontends if f.kind == "nodeport"] == [
        ("nodeport", 32429),
        ("nodeport", 32767),
    ]


def test_ipvs_save_format_reads_like_the_listing() -> None:
    save = "-A -t 10.96.0.1:443 -s rr -p 10800\n-a -t 10.96.0.1:443 -r 192.168.9.101:6443 -m -w 1\n"
    table = audit(save)
    assert rows(table)[0]["endpoints"] == ["192.168.9.101:6443"]
    assert table.frontends[0].affinity_seconds == 10800


def test_non_uniform_probabilities_of_the_pre_2019_format_are_reported() -> None:
    # kube-proxy before 2019 printed 1/(n-i) with %0.5f; past 319 endpoints that repeats
    n = 400
    lines = [
        '-A KUBE-SERVICES -d 10.96.0.50/32 -p tcp -m comment --comment "big/svc: cluster IP"'
        " -m tcp --dport 80 -j KUBE-SVC-BIG"
    ]
    for i in range(n):
        prob = (
            f" -m statistic --mode random --probability {1.0 / (n - i):0.5f}" if i < n - 1 else ""
        )
        lines.append(f"-A KUBE-SVC-BIG{prob} -j KUBE-SEP-{i}")
        lines.append(
            f"-A KUBE-SEP-{i} -p tcp -m tcp -j DNAT --to-destination 10.1.{i // 250}.{i % 250}:80"
        )
    table = audit("\n".join(lines))
    assert len(table.frontends[0].endpoints) == n
    assert any("endpoint shares are not uniform" in w for w in table.warnings)
    assert any("probabilities repeat" in w for w in table.warnings)
    uniform = "\n".join(
        line.replace(
            f"{1.0 / (n - int(line.split('KUBE-SEP-')[1])):0.5f}",
            f"{1.0 / (n - int(line.split('KUBE-SEP-')[1])):0.10f}",
        )
        if "--probability" in line
        else line
        for line in lines
    )
    assert not any("uniform" in w for w in audit(uniform).warnings)


def test_dnat_outside_the_pod_ranges_is_reported() -> None:
    text = (DUMPS / "k8s-1.3-docs-hostnames.iptables-save").read_text()
    table = audit(text, pod_cidrs=["10.244.1.0/24", "10.244.2.0/24"])
    assert [w for w in table.warnings if "outside the pod ranges" in w] == [
        "clusterip tcp 10.0.1.175:80 (default/hostnames): DNAT target 10.244.3.6:9376 is "
        "outside the pod ranges 10.244.1.0/24, 10.244.2.0/24"
    ]


@pytest.mark.parametrize(
    "text, message",
    [
        ("hello world\n", "not a kube-proxy dump (line 1: 'hello world')"),
        ("", "the file is empty"),
        (
            '{"nftables": [{"metainfo": {"version": "1.0.6"}}, {"table": ',
            "the nftables JSON is cut",
        ),
        ("table inet filter {\n chain input { }\n}\n", "without `table ip kube-proxy`"),
    ],
)
def test_bad_input_is_one_clear_line(text: str, message: str) -> None:
    with pytest.raises(AuditInputError) as err:
        audit(text, "x.txt")
    assert message in str(err.value) and "\n" not in str(err.value)


def test_a_dump_cut_in_the_middle_gives_a_partial_table_and_warnings() -> None:
    full = (DATA / "lab-node1-local.iptables-save").read_text()
    cut = full[: full.index("-A KUBE-SEP-L6VFHHP5QEPN7F6C")]
    table = audit(cut)
    assert table.frontends, "the part before the cut is still read"
    assert any("has no COMMIT line" in w for w in table.warnings)
    assert any("jumps to no endpoint" in w for w in table.warnings)


def test_expected_table_and_diff_from_kubectl_objects() -> None:
    objects = json.loads((DATA / "objects-echo.json").read_text())
    dump = audit((DATA / "lab-node1-local.iptables-save").read_text())
    assert diff_tables(expected_table(objects, "node1", "iptables"), dump) == []
    # node2's dump against node1's expectation: the Local NodePort reaches the wrong pods
    other = audit((DATA / "lab-node2-local.iptables-save").read_text())
    lines = diff_tables(expected_table(objects, "node1", "iptables"), other)
    assert "nodeport tcp :30080 (default/echo:http): missing endpoint 10.244.1.2:8080" in lines
    assert "nodeport tcp :30080 (default/echo:http): extra endpoint 10.244.2.2:8080" in lines


def kubelab(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "kubelab.cli", *args], capture_output=True, text=True, cwd=ROOT
    )


def test_cli_json_schema_and_expect_exit_codes(tmp_path: Path) -> None:
    proc = kubelab("audit", str(DUMPS / "k8s-1.3-docs-hostnames.iptables-save"), "--format", "json")
    assert proc.returncode == 0
    doc = json.loads(proc.stdout)
    assert doc["mode"] == "iptables"
    assert set(FIELDS) <= set(doc["frontends"][0])
    good = kubelab(
        "audit",
        str(DATA / "lab-node1-local.iptables-save"),
        "--expect",
        str(DATA / "objects-echo.json"),
        "--node",
        "node1",
    )
    assert good.returncode == 0 and "0 differences" in good.stdout
    bad = kubelab(
        "audit",
        str(DATA / "lab-node2-local.iptables-save"),
        "--expect",
        str(DATA / "objects-echo.json"),
        "--node",
        "node1",
    )
    assert bad.returncode == 1 and "DIFF nodeport tcp :30080" in bad.stdout
    garbage = tmp_path / "g.txt"
    garbage.write_text("not a dump\n")
    proc = kubelab("audit", str(garbage))
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("name", ["lab-node1-local.iptables-save", "lab-nftables.nft.json"])
def test_a_dump_from_standard_input_or_a_pipe_reads_like_the_file(name: str) -> None:
    """`iptables-save | kubelab audit -` and `kubelab audit <(ssh node1 nft -j list
    ruleset)`, as people use them: the same table as from the file."""
    dump = DATA / name
    from_file = kubelab("audit", str(dump), "--format", "json")
    assert from_file.returncode == 0, from_file.stderr
    piped = subprocess.run(
        [sys.executable, "-m", "kubelab.cli", "audit", "-", "--format", "json"],
        input=dump.read_text(), capture_output=True, text=True, cwd=ROOT,
    )  # fmt: skip
    substituted = subprocess.run(
        ["bash", "-c", f'"$0" -m kubelab.cli audit <(cat {dump}) --format json',
         sys.executable],
        capture_output=True, text=True, cwd=ROOT,
    )  # fmt: skip
    for proc in (piped, substituted):
        assert proc.returncode == 0, proc.stderr
        assert json.loads(proc.stdout)["frontends"] == json.loads(from_file.stdout)["frontends"]


def test_a_missing_dump_names_standard_input_as_the_other_way(tmp_path: Path) -> None:
    for target in (tmp_path / "nope.txt", tmp_path):
        proc = kubelab("audit", str(target))
        assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1
        assert "no such dump file" in proc.stderr and "or - to read it from standard input" in (
            proc.stderr
        )
