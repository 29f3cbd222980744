"""`kubelab report compare` and `kubelab report history` on run folders written by the
results writer."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pandas as pd

from conftest import LOCAL_SPEC, ROOT
from kubelab.report.compare import append_history, compare_table, render_compare
from kubelab.results import ResultRow, ResultsWriter, RunContext, Verdict, write_provenance
from kubelab.spec import load_spec


def make_run(root: Path, run_id: str, mode: str, latency: float, verdict: str) -> Path:
    context = RunContext(run_id, "local", "netns", "reference", mode, "reference", "host-gw", "6.x")
    writer = ResultsWriter(root / run_id, context)
    write_provenance(writer.run_dir, load_spec(LOCAL_SPEC), "labs/local.yaml", context)
    writer.add_rows(
        [
            ResultRow("clusterip", "spread", "latency_p50", latency, "ms", Verdict(verdict), ""),
            ResultRow("clusterip", "spread", "spread_p_value", 0.5, "p", Verdict(verdict), ""),
            ResultRow(
                "clusterip", "spread", "verdict", float(verdict == "pass"), "", Verdict(verdict), ""
            ),
        ]
    )
    return writer.run_dir


def test_compare_flags_regressions_beyond_the_tolerance(tmp_path: Path) -> None:
    a = make_run(tmp_path, "r1", "iptables", 4.0, "pass")
    b = make_run(tmp_path, "r2", "nftables", 6.0, "fail")
    out = render_compare([a, b], tmp_path / "cmp", tolerance=0.2)
    html = out.read_text()
    assert "pass in local (iptables) r1, fail in local (nftables) r2" in html
    table = pd.read_csv(tmp_path / "cmp" / "compare.csv")
    latency = table[table["metric"] == "latency_p50"].iloc[0]
    assert latency["regression"] and abs(latency["delta local (nftables) r2"] - 0.5) < 1e-9
    p_value = table[table["metric"] == "spread_p_value"].iloc[0]
    assert not p_value["regression"]  # not a worse-when-higher metric


def test_within_tolerance_is_no_regression(tmp_path: Path) -> None:
    a = make_run(tmp_path, "r1", "iptables", 4.0, "pass")
    b = make_run(tmp_path, "r2", "iptables", 4.4, "pass")
    from kubelab.report.compare import _load

    table = compare_table(_load([a, b]), 0.2)
    assert not table["regression"].any()


def test_history_appends_once_per_run_and_renders_trends(tmp_path: Path) -> None:
    history = tmp_path / "hist" / "history.parquet"
    for i, latency in enumerate((4.0, 5.0, 4.5)):
        run = make_run(tmp_path, f"r{i}", "iptables", latency, "pass")
        append_history(run, history)
    append_history(tmp_path / "r2", history)  # again: replaced, not duplicated
    data = pd.read_parquet(history)
    assert data["run_id"].nunique() == 3 and len(data) == 9
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "kubelab.cli",
            "report",
            "history",
            str(tmp_path / "r0"),
            "--into",
            str(history),
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stderr
    page = Path(proc.stdout.strip()).read_text()
    assert "3 runs" in page and page.count("<svg") >= 2


def test_compare_needs_run_folders(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "kubelab.cli", "report", "compare", str(tmp_path)],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert proc.returncode == 2 and "not a run directory" in proc.stderr
