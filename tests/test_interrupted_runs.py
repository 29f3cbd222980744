"""`kubelab run` stopped anywhere leaves nothing, and what it finished survives.

Twenty interruption points, drawn from a fixed seed and shown in the test ids: a delay
after the start and a signal. SIGINT goes to the whole process group, as a terminal's
Ctrl-C does; SIGTERM to kubelab alone, as `kill PID` or a service manager does; SIGKILL
to kubelab alone, so its pods, servers and Locust workers live on until the next `up` (or
`down`) removes them. After each point: no namespace, process, mount, socket, state or
temporary file of the lab, and the host namespace's links, addresses, routes, rules and
rulesets byte-identical to before.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml

from conftest import ROOT, TEST_LAB, host_network_snapshot, local_spec_data
from helpers import (
    QUICK,
    SIGNALS,
    Point,
    interrupt_at,
    interruption_points,
    kubelab,
    lab_traces,
    private_tmp,
    run_args,
    scratch_entries,
)

pytestmark = [pytest.mark.root, pytest.mark.lab]

SEED = 20261201
# points as shares of an uninterrupted run's length, measured first on this machine (a
# QUICK run took 13-17 s on one machine of this kind and 7 s on another): up to 70% of
# the shorter of two runs, so a run a little faster than that is still running when hit
WINDOW = (0.02, 0.7)


@pytest.fixture(scope="module")
def spec_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("interrupt") / f"{TEST_LAB}.yaml"
    path.write_text(yaml.safe_dump(local_spec_data()))
    return path


@pytest.fixture(scope="module")
def run_length(spec_file: Path, tmp_path_factory: pytest.TempPathFactory) -> float:
    """Seconds an uninterrupted QUICK run takes here, from start to exit: the shorter of
    two, since the first one also warms the caches (seen: 18 s cold, then 13 s)."""
    lengths = []
    for _ in range(2):
        folder = tmp_path_factory.mktemp("reference-run")
        started = time.monotonic()
        proc = start_run(spec_file, folder / "reports", folder / "run.log")
        code = proc.wait(timeout=300)
        assert code == 0, (folder / "run.log").read_text()[-2000:]
        lengths.append(time.monotonic() - started)
    return min(lengths)


def start_run(spec_file: Path, reports: Path, log: Path) -> subprocess.Popen[bytes]:
    # output to a file: after SIGKILL, surviving children still hold a pipe open; TMPDIR
    # a folder of the run's own, to count the temporary files it leaves
    return subprocess.Popen(
        [sys.executable, "-m", "kubelab.cli", *run_args(spec_file, reports, "-k", QUICK)],
        cwd=ROOT,
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
        env=private_tmp(log.parent / "tmp"),
    )


@pytest.mark.parametrize(
    "point", interruption_points(SEED, 20, SIGNALS, WINDOW, fraction=True), ids=lambda p: p.id
)
def test_a_run_stopped_here_leaves_nothing(
    point: Point,
    spec_file: Path,
    run_length: float,
    tmp_path: Path,
    record_property: pytest.RecordProperty,
) -> None:
    at = point.seconds(run_length)
    record_property("interruption", f"seed {SEED}: {point.id} = {at:.2f}s of {run_length:.1f}s")
    before, scratch = host_network_snapshot(), scratch_entries()
    log = tmp_path / "run.log"
    proc = start_run(spec_file, tmp_path / "reports", log)
    interrupt_at(proc, point, log, run_length)
    code = proc.wait(timeout=120)
    output = log.read_text()[-2500:]
    finished = "3 passed" in output and output.rstrip().endswith("report.html")
    if point.sig != signal.SIGKILL and finished and code in (0, -point.sig):
        pass  # the signal came as the finished run exited (Python's default handler by then)
    elif point.sig == signal.SIGKILL:
        assert code == -signal.SIGKILL
        if point.after_kill == "up":
            up = kubelab("up", str(spec_file))
            assert up.returncode == 0, up.stderr
        down = kubelab("down", str(spec_file))
        assert down.returncode == 0, down.stderr
    elif point.sig == signal.SIGTERM:  # Python's default applies until kubelab's main runs
        assert code == 128 + signal.SIGTERM or (code == -signal.SIGTERM and not output), output
    else:  # Ctrl-C also reaches the children (ip, nft, ...): one may fail first
        assert code in (1, 128 + signal.SIGINT), output
    assert lab_traces(TEST_LAB) == [], output
    assert host_network_snapshot() == before
    assert scratch_entries() - scratch == set()
    assert list((tmp_path / "tmp").iterdir()) == [], "temporary files were left"
    for run_dir in (tmp_path / "reports").glob("*"):
        if (run_dir / "results.parquet").exists():  # what finished stays readable
            pd.read_parquet(run_dir / "results.parquet")
        if point.sig != signal.SIGKILL:
            assert list(run_dir.glob("*.tmp")) == [], "a write was left half done"


def test_a_killed_run_keeps_its_rows_reports_incomplete_and_resumes(
    spec_file: Path, tmp_path: Path
) -> None:
    reports = tmp_path / "reports"
    proc = start_run(spec_file, reports, tmp_path / "run.log")
    deadline, finished = time.monotonic() + 120, 0
    while time.monotonic() < deadline and proc.poll() is None and not finished:
        for results in reports.glob("*/results.parquet"):
            with contextlib.suppress(OSError, ValueError):  # replaced while read
                finished = int((pd.read_parquet(results)["metric"] == "verdict").sum())
        time.sleep(0.1)
    os.kill(proc.pid, signal.SIGKILL)  # after the first case, before the last
    proc.wait()
    assert finished == 1, (tmp_path / "run.log").read_text()[-2000:]
    (run_dir,) = reports.glob("*")
    plan = json.loads((run_dir / "cases.json").read_text())["cases"]
    assert len(plan) == 3

    report = kubelab("report", str(run_dir))
    assert report.returncode == 0, report.stderr
    assert "INCOMPLETE: 2 of 3 cases did not finish" in report.stderr
    todo = [f"{c['scenario']}/{c['case']}" for c in plan[1:]]
    assert all(name in report.stderr for name in todo), report.stderr
    assert 'id="incomplete"' in (run_dir / "report.html").read_text()

    resumed = kubelab("run", "--resume", str(run_dir), timeout=300)
    assert resumed.returncode == 0, resumed.stdout[-2000:] + resumed.stderr[-2000:]
    results = pd.read_parquet(run_dir / "results.parquet")
    verdicts = results[results["metric"] == "verdict"]
    assert sorted(verdicts["case"]) == sorted(c["case"] for c in plan), "each case once"
    assert set(verdicts["verdict"]) == {"pass"} and results["run_id"].nunique() == 1
    samples = pd.read_parquet(run_dir / "samples.parquet")
    per_case = samples.groupby("case").size()
    assert set(per_case.index) == {c["case"] for c in plan}
    html = (run_dir / "report.html").read_text()
    assert 'id="incomplete"' not in html and "3/3 cases passed" in html
    provenance = json.loads((run_dir / "provenance.json").read_text())
    assert len(provenance["resumed"]) == 1 and provenance["finished"]
    again = kubelab("run", "--resume", str(run_dir))
    assert again.returncode == 2 and "nothing to resume" in again.stderr
    assert lab_traces(TEST_LAB) == []
