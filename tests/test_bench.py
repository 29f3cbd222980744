"""`kubelab bench scale` on the real kernel, small sizes: every measurement is there, grows
where it must, and the budget stops the run cleanly. (The numbers themselves are benchmark
results, read in the report; nothing here asserts a time.)"""

from __future__ import annotations

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
    assert value(results, "iptables", 200, "plain_restore") > 0
    assert value(results, "nftables", 200, "add_one_service_apply") > 0
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
