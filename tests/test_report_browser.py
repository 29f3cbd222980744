"""The report as a person sees it: headless Chromium opens report.html, takes a
screenshot, and the page has the verdict matrix and plots and logs no errors."""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
from pathlib import Path

import pandas as pd
import pytest

from kubelab.report.html import render
from kubelab.results import ResultRow, ResultsWriter, RunContext, Verdict, write_provenance
from kubelab.spec import load_spec

CHROMIUM = (
    shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
)
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    """A run folder with results and samples as a real run writes them (the rows come from
    the results writer; the samples are a probe burst's shape)."""
    spec = load_spec(ROOT / "labs" / "local.yaml")
    context = RunContext(
        "20260101T000000Z-local",
        "local",
        "netns",
        "reference",
        "iptables",
        "reference",
        "host-gw",
        "6.x",
    )
    writer = ResultsWriter(tmp_path / "run", context)
    write_provenance(writer.run_dir, spec, "labs/local.yaml", context)
    writer.add_rows(
        [
            ResultRow(
                "source_ip", "cluster_policy_snats", "probes", 4, "count", Verdict("pass"), ""
            ),
            ResultRow("source_ip", "cluster_policy_snats", "verdict", 1, "", Verdict("pass"), ""),
            ResultRow(
                "dns", "service_names_resolve", "verdict", 0, "", Verdict("skip"), "needs CoreDNS"
            ),
        ]
    )
    samples = pd.DataFrame(
        {
            "t": [1.0, 1.1, 1.2, 1.3],
            "user": [1, 1, 2, 2],
            "ok": [True] * 4,
            "pod": ["echo-node1-0", "echo-node2-0", "echo-node2-1", "echo-node3-0"],
            "client_ip": ["10.244.1.1", "192.168.56.11", "192.168.56.11", "192.168.56.11"],
            "client_port": [1, 2, 3, 4],
            "error": [None] * 4,
            "latency_ms": [1.0] * 4,
        }
    )
    writer.add_samples("source_ip", "cluster_policy_snats", samples)
    render(writer.run_dir)
    return writer.run_dir


@pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium package (CI installs it)")
def test_report_in_a_real_browser(run_dir: Path, tmp_path: Path) -> None:
    assert CHROMIUM is not None
    page = (run_dir / "report.html").as_uri()
    shot = tmp_path / "report.png"
    with tempfile.TemporaryDirectory() as profile:
        proc = subprocess.run(
            [
                CHROMIUM,
                *FLAGS,
                f"--user-data-dir={profile}",
                "--window-size=1200,2000",
                "--enable-logging=stderr",
                "--v=0",
                f"--screenshot={shot}",
                page,
            ],
            capture_output=True,
            text=True,
            timeout=120,
        )
    assert shot.exists() and shot.stat().st_size > 20_000, proc.stderr[-1000:]
    console = [line for line in proc.stderr.splitlines() if "CONSOLE" in line]
    assert not [line for line in console if "rror" in line or "Uncaught" in line], console
    with tempfile.TemporaryDirectory() as profile:
        dom = subprocess.run(
            [CHROMIUM, *FLAGS, f"--user-data-dir={profile}", "--dump-dom", page],
            capture_output=True,
            text=True,
            timeout=120,
        ).stdout
    assert 'id="verdict-matrix"' in dom
    assert dom.count("<svg") >= 1
    assert "1/2 cases passed, 1 skipped" in dom
    assert json.loads((run_dir / "provenance.json").read_text())["spec"]["name"] == "local"
    md = (run_dir / "report.md").read_text()
    assert "| dns | service_names_resolve | SKIP | needs CoreDNS |" in md
    assert (run_dir / "results.csv").read_text().count("\n") == 4
