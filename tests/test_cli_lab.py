"""The command line against a real lab: up, status, exec, down, run, and Ctrl-C at any point."""

from __future__ import annotations

import ipaddress
import json
import os
import subprocess
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml

from conftest import ROOT, leftovers, local_spec_data
from helpers import kubelab, run_args
from host_capture import overlapping_host_addresses, watching

pytestmark = [pytest.mark.root, pytest.mark.lab]


@pytest.fixture
def spec_file(tmp_path: Path) -> Path:
    path = tmp_path / "kltest.yaml"
    path.write_text(yaml.safe_dump(local_spec_data()))
    return path


def test_up_status_exec_down(spec_file: Path) -> None:
    try:
        up = kubelab("up", str(spec_file))
        assert up.returncode == 0, up.stderr
        status = json.loads(kubelab("status", str(spec_file), "--json").stdout)
        assert status["up"] is True
        assert [n["name"] for n in status["nodes"]] == ["node1", "node2", "node3"]
        assert status["client"]["location"] == "netns kl-kltest-client"
        assert len(status["pods"]) == 6 and all(p["netns"] for p in status["pods"])
        svc = status["services"][0]
        assert svc["name"] == "default/echo" and svc["ports"][0]["node_port"] == 30080
        assert len(svc["endpoints"]) == 6

        shown = kubelab(
            "exec", str(spec_file), "node2", "--", "ip", "-o", "-4", "addr", "show", "eth0"
        )
        assert shown.returncode == 0 and "192.168.56.12/24" in shown.stdout
        pod = kubelab(
            "exec", str(spec_file), "echo-node1-0", "--", "ip", "-o", "-4", "addr", "show", "eth0"
        )
        assert "10.244.1.2/24" in pod.stdout
        failing = kubelab("exec", str(spec_file), "client", "--", "sh", "-c", "exit 3")
        assert failing.returncode == 3
        unknown = kubelab("exec", str(spec_file), "nobody", "--", "true")
        assert unknown.returncode == 1 and "no member named 'nobody'" in unknown.stderr
    finally:
        down = kubelab("down", str(spec_file))
    assert down.returncode == 0, down.stderr
    assert leftovers("kltest") == []
    assert json.loads(kubelab("status", str(spec_file), "--json").stdout)["up"] is False


SCENARIOS = {
    "clusterip",
    "rules",
    "nodeport",
    "source_ip",
    "external_addresses",
    "session_affinity",
    "failover",
    "no_endpoints",
    "internal_traffic_policy",
    "hairpin",
    "multi_port_and_udp",
    "dns",
    "network_policy",
    "ipvs_schedulers",
}
ONLY_ELSEWHERE = {"dns", "network_policy"}  # need a real cluster: skipped with a reason
IPVS_ONLY = {"ipvs_schedulers"}  # skipped with a reason in the other modes


def run_lab_file(
    tmp_path: Path, lab_file: str, *extra: str
) -> tuple[subprocess.CompletedProcess[str], dict]:
    data = yaml.safe_load((ROOT / "labs" / lab_file).read_text())
    data["name"] = "kltest"
    spec_file = tmp_path / "kltest.yaml"
    spec_file.write_text(yaml.safe_dump(data))
    proc = kubelab(*run_args(spec_file, tmp_path / "reports", *extra), timeout=600)
    return proc, data


@pytest.mark.parametrize("lab_file", ["local.yaml", "local-nftables.yaml"])
def test_run_runs_every_scenario_and_reports_each_verdict(tmp_path: Path, lab_file: str) -> None:
    """...and no packet with a lab address crosses the host namespace while it runs."""
    net = yaml.safe_load((ROOT / "labs" / lab_file).read_text())["network"]
    ranges = [ipaddress.IPv4Network(net[k]) for k in ("node_cidr", "pod_cidr", "service_cidr")]
    if clash := overlapping_host_addresses(ranges):
        pytest.skip(f"the host's own addresses {clash} overlap the lab's ranges")
    started = time.monotonic()
    with watching(ranges) as capture:
        proc, data = run_lab_file(tmp_path, lab_file)
    elapsed = time.monotonic() - started
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    leaks = capture.leaks
    assert leaks == [], f"{len(leaks)} lab packets on host interfaces: {leaks[:5]}"
    report = Path(proc.stdout.strip().splitlines()[-1])
    assert report.name == "report.html" and report.exists()
    run_dir = report.parent
    for name in ("results.parquet", "samples.parquet", "junit.xml", "provenance.json"):
        assert (run_dir / name).exists(), name
    results = pd.read_parquet(run_dir / "results.parquet")
    verdicts = results[results["metric"] == "verdict"]
    assert set(verdicts["scenario"]) == SCENARIOS
    skipped = verdicts[verdicts["verdict"] == "skip"]
    assert set(skipped["scenario"]) <= ONLY_ELSEWHERE | IPVS_ONLY | {"session_affinity"}
    assert set(skipped["scenario"]) >= IPVS_ONLY
    assert all(skipped["detail"].str.len() > 0), "every skip states its reason"
    passed = verdicts[verdicts["verdict"] == "pass"]
    assert len(passed) + len(skipped) == len(verdicts)
    mode = data["dataplane"]["proxy_mode"]
    assert set(results["lab"]) == {"kltest"} and set(results["proxy_mode"]) == {mode}
    assert set(results["cni_mode"]) == {data["dataplane"]["pod_network"]}
    spread = results[results["metric"] == "spread_p_value"]
    assert len(spread) == 1 and "n=1200" in spread["detail"].iloc[0]
    failover = results[(results["scenario"] == "failover") & (results["metric"] == "failed_probes")]
    assert len(failover) == 6
    samples = pd.read_parquet(run_dir / "samples.parquet")
    assert len(samples) > 1000 and {"scenario", "case", "pod", "client_ip"} <= set(samples)
    provenance = json.loads((run_dir / "provenance.json").read_text())
    assert provenance["spec"]["name"] == "kltest" and provenance["seeds"] == {"lab": 1}
    assert provenance["kernel"] == os.uname().release and provenance["tools"]["iptables"]
    html = report.read_text()
    assert f"{len(passed)}/{len(verdicts)} cases passed" in html and "<svg" in html
    assert leftovers("kltest") == []
    print(f"kubelab run {lab_file} took {elapsed:.1f}s")  # shown with -s; not an assertion


def test_run_k_selects_scenarios_on_the_vxlan_lab(tmp_path: Path) -> None:
    proc, _ = run_lab_file(tmp_path, "local-vxlan.yaml", "-k", "source_ip")
    assert proc.returncode == 0, proc.stdout[-3000:]
    results = pd.read_parquet(Path(proc.stdout.strip().splitlines()[-1]).parent / "results.parquet")
    assert set(results["scenario"]) == {"source_ip"}
    assert set(results["cni_mode"]) == {"vxlan"}


@pytest.mark.skipif(Path("/proc/net/ip_vs").exists(), reason="this kernel has ip_vs")
def test_ipvs_lab_without_ip_vs_stops_before_building(tmp_path: Path) -> None:
    proc = kubelab("up", str(ROOT / "labs" / "local-ipvs.yaml"))
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "proxy_mode ipvs needs the kernel's ip_vs" in lines[0]
    assert leftovers("localipvs") == []
