"""`kubelab bench scale` on the real kernel, small sizes: every measurement is there, grows
where it must, and the budget stops the run cleanly. (The numbers themselves are benchmark
results, read in the report; nothing here asserts a time.)"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from conftest import ROOT

pytestmark = [pytest.mark.root, pytest.mark.lab]


def bench(
    tmp_path: Path, *args: str, kind: str = "scale"
) -> tuple[subprocess.CompletedProcess[str], pd.DataFrame]:
    proc = subprocess.run(
        [sys.executable, "-m", "kubelab.cli", "bench", kind, "--reports", str(tmp_path), *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = Path(proc.stdout.strip().splitlines()[-1])
    results = pd.read_parquet(report.parent / "results.parquet")
    if kind != "scale":
        return proc, results
    return proc, results.assign(n=results["case"].str.extract(r"N=(\d+)", expand=False).astype(int))


def value(results: pd.DataFrame, mode: str, n: int, metric: str) -> float:
    rows = results[
        (results["proxy_mode"] == mode) & (results["n"] == n) & (results["metric"] == metric)
    ]
    assert len(rows) == 1, (mode, n, metric)
    return float(rows["value"].iloc[0])


def test_scale_measures_every_mode_and_size(tmp_path: Path) -> None:
    proc, results = bench(
        tmp_path,
        "--modes",
        "iptables,nftables",
        "--sizes",
        "10,200",
        "--connects",
        "30",
        "--budget",
        "300",
    )
    for mode in ("iptables", "nftables"):
        for n in (10, 200):
            for metric in (
                "rules",
                "chains",
                "full_sync",
                "add_one_service",
                "remove_one_service",
                "latency_first_service_p50",
                "latency_last_service_p99",
                "latency_nodeport_p90",
            ):
                assert value(results, mode, n, metric) > 0
        assert value(results, mode, 200, "rules") > value(results, mode, 10, "rules")
    for mode in ("iptables", "nftables"):
        assert value(results, mode, 200, "plain_restore") > 0
    assert value(results, "nftables", 200, "add_one_service_apply") > 0
    # the kernel's commit floor: revalidating the table costs more than a commit without it
    assert value(results, "nftables", 200, "kernel_commit_verdict") > 0
    assert value(results, "nftables", 200, "kernel_commit_plain") > 0
    assert value(results, "nftables", 200, "map_elements") >= 200
    html = Path(proc.stdout.strip().splitlines()[-1]).read_text()
    assert 'id="bench-scale"' in html and html.count("<svg") >= 3


def test_the_budget_stops_before_a_step_it_cannot_afford(tmp_path: Path) -> None:
    _, results = bench(
        tmp_path, "--modes", "iptables", "--sizes", "10,40000", "--connects", "20", "--budget", "15"
    )
    stopped = results[(results["metric"] == "verdict") & (results["verdict"] == "skip")]
    assert list(stopped["n"]) == [40000]
    assert "budget" in stopped["detail"].iloc[0]
    assert value(results, "iptables", 10, "rules") > 0


def run_bench(tmp_path: Path, kind: str, *args: str) -> pd.DataFrame:
    proc, results = bench(tmp_path, *args, kind=kind)
    assert f'id="bench-{kind}"' in Path(proc.stdout.strip().splitlines()[-1]).read_text()
    return results


def test_load_measures_locust_against_wrk(tmp_path: Path) -> None:
    results = run_bench(tmp_path, "load", "--modes", "nftables", "--seconds", "2", "--users", "6")
    table = results.pivot_table(index="case", columns="metric", values="value")
    assert list(table.index) == ["nftables/keepalive", "nftables/new"]
    assert (table["locust_rps"] > 0).all() and (table["wrk_rps"] > 0).all()
    ratio = table["locust_rps"] / table["wrk_rps"]
    assert ((table["locust_to_wrk"] - ratio).abs() < 1e-9).all()
    assert set(table["generator_cpu_bound"]) <= {0.0, 1.0}


def test_failover_trials_give_distributions(tmp_path: Path) -> None:
    results = run_bench(tmp_path, "failover", "--modes", "iptables", "--trials", "2")
    cases = set(results["case"])
    assert cases == {"iptables/delete_pod", "iptables/kill_pod", "iptables/fail_node"}
    kill = results[
        (results["case"] == "iptables/kill_pod") & (results["metric"] == "failed_probes_median")
    ]
    assert float(kill["value"].iloc[0]) > 0  # killed pods refuse until the endpoint leaves
    assert "2 trials:" in kill["detail"].iloc[0]


def test_programming_times_every_node_of_every_change(tmp_path: Path) -> None:
    proc, results = bench(
        tmp_path,
        "--modes",
        "iptables,nftables",
        "--nodes",
        "2,4",
        "--services",
        "40",
        "--endpoints",
        "3",
        "--changes",
        "6",
        kind="programming",
    )
    report = Path(proc.stdout.strip().splitlines()[-1])
    samples = pd.read_parquet(report.parent / "samples.parquet")
    for mode in ("iptables", "nftables"):
        for nodes in (2, 4):
            case = f"{mode}/nodes={nodes}"
            mine = results[results["case"] == case].set_index("metric")
            verdict = mine.loc["verdict"]
            assert verdict["verdict"] == "pass", verdict["detail"]
            assert "carry exactly what the Services call for" in verdict["detail"]
            p50, p99, top = (mine.loc[f"programming_{q}", "value"] for q in ("p50", "p99", "max"))
            assert 0 < p50 <= p99 <= top
            assert mine.loc["node_sync_p50", "value"] <= top
            assert f"{6 * nodes} samples" in mine.loc["programming_p50", "detail"]
            timed = samples[samples["case"] == case]
            assert sorted(set(timed["node"])) == [f"node{i}" for i in range(1, nodes + 1)]
            assert len(timed) == 6 * nodes and timed["change"].nunique() == 6
            # a node's rules are loaded after the change was published, and its own sync
            # is part of that time
            assert ((timed["latency_ms"] > 0) & (timed["sync_ms"] <= timed["latency_ms"])).all()
    html = report.read_text()
    assert 'id="bench-programming"' in html and "Network-programming latency per node" in html
    layouts = json.loads((report.parent / "provenance.json").read_text())["proxier_layout"]
    assert layouts == {
        "iptables": "kube-proxy v1.31-v1.36 pkg/proxy/iptables",
        "nftables": "kube-proxy v1.36 pkg/proxy/nftables",
    }
    assert "kube-proxy v1.31-v1.36 pkg/proxy/iptables" in html  # the report's provenance says so


def test_programming_skips_a_node_count_the_budget_cannot_afford(tmp_path: Path) -> None:
    _, results = bench(
        tmp_path,
        "--modes",
        "iptables",
        "--nodes",
        "2,240",
        "--services",
        "20",
        "--changes",
        "3",
        "--budget",
        "10",
        kind="programming",
    )
    verdicts = results[results["metric"] == "verdict"].set_index("case")
    assert verdicts.loc["iptables/nodes=2", "verdict"] == "pass"
    assert verdicts.loc["iptables/nodes=240", "verdict"] == "skip"
    assert "budget: predicted" in verdicts.loc["iptables/nodes=240", "detail"]


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--nodes", "ten"], "--nodes: use numbers separated by commas"),
        (["--nodes", "0,10"], "--nodes takes 1..250 each"),
        (["--modes", "iptables,ebpf"], "--modes takes iptables,nftables,ipvs"),
        (["--changes", "0"], "--changes takes 1..300"),
        (["--services", "50000"], "--services takes 1..20000"),
        (["--budget", "5"], "--budget takes 10..7200 seconds"),
    ],
)
def test_programming_bad_options_get_one_line(tmp_path: Path, args: list[str], says: str) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "kubelab.cli", "bench", "programming", "--reports", str(tmp_path),
         *args],
        capture_output=True, text=True, cwd=ROOT, timeout=60,
    )  # fmt: skip
    assert proc.returncode == 2 and says in proc.stderr, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    assert not list(tmp_path.iterdir())  # no run folder begun


def test_a_scale_step_that_fails_is_an_error_row_and_the_run_goes_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The 10,000-Service nftables load once outran its timeout and took the whole run
    down with no report. Here the limit is made tight for real: no `nft -f` finishes in
    1 ms, so the second step of nftables fails in the kernel's own time."""
    from kubelab.bench.runner import run_scale
    from kubelab.bench.scale import ScaleConfig
    from kubelab.dataplanes.reference.proxier import nftables
    from kubelab.results import load_results

    def progress(line: str) -> None:
        if line.startswith("nftables: N=300"):
            monkeypatch.setattr(nftables, "LOAD_TIMEOUT_S", 0.001)

    config = ScaleConfig(["nftables", "iptables"], [10, 300], endpoints=2, connects=10)
    report = run_scale(config, tmp_path, progress)
    verdicts = load_results(report.parent).query("metric == 'verdict'").set_index("case")
    failed = verdicts.loc["nftables/N=300"]
    assert failed["verdict"] == "error" and "did not finish in 0.001s" in failed["detail"]
    assert verdicts.loc["nftables/N=10", "verdict"] == "pass"
    assert list(verdicts.loc[["iptables/N=10", "iptables/N=300"], "verdict"]) == ["pass"] * 2
    assert 'id="bench-scale"' in report.read_text()
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert "klbnft" not in listed and "klbipt" not in listed
