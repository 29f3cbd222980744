"""A run's records without a lab: the case plan, reopening a stopped run's rows, the
incomplete report, `run --resume` refusing what it cannot do, and signals held during
tear-down (real signals, sent to this process)."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pandas as pd
import pytest

from conftest import test_spec
from helpers import kubelab
from kubelab import signals
from kubelab.atomic_write import write_atomic
from kubelab.case_plan import CasePlan, PlannedCase, read_plan, unfinished, write_plan
from kubelab.report.html import incompleteness, render
from kubelab.results import ResultRow, ResultsWriter, Verdict, load_results
from kubelab.runs import open_run, reopen_run
from kubelab.traffic.runner import SAMPLE_COLUMNS


def _samples(*pods: str) -> pd.DataFrame:
    """Probe samples as the traffic runner returns them."""
    rows = [
        (0.1 * i, 0, True, pod, "192.168.56.100", 40000 + i, "", 1.5) for i, pod in enumerate(pods)
    ]
    return pd.DataFrame(rows, columns=SAMPLE_COLUMNS)


CASES = [PlannedCase("source_ip", c, f"/s/test_source_ip.py::test_{c}") for c in "abc"]


def _stopped_run(tmp_path: Path) -> Path:
    """A run that finished case a, was half way through b, and never began c."""
    run = open_run("kltest", test_spec(), "labs/kltest.yaml", tmp_path)
    write_plan(run.run_dir, CasePlan("/s", CASES))
    run.writer.add_samples("source_ip", "a", _samples("p1", "p2"))
    run.writer.add_rows([ResultRow("source_ip", "a", "verdict", 1.0, "", Verdict.PASS)])
    run.writer.add_samples("source_ip", "b", _samples("p3"))
    (run.run_dir / "results.tmp").write_bytes(b"half a parquet file")  # killed mid-write
    return run.run_dir


def test_the_plan_and_what_did_not_finish(tmp_path: Path) -> None:
    run_dir = _stopped_run(tmp_path)
    plan = read_plan(run_dir)
    assert plan == CasePlan("/s", CASES)
    assert [c.case for c in unfinished(plan, load_results(run_dir))] == ["b", "c"]
    assert unfinished(None, load_results(run_dir)) == []
    line = incompleteness(run_dir)
    assert line == "INCOMPLETE: 2 of 3 cases did not finish: source_ip/b, source_ip/c"


def test_the_report_of_a_stopped_run_names_what_did_not_finish(tmp_path: Path) -> None:
    run_dir = _stopped_run(tmp_path)
    html = render(run_dir).read_text()
    assert 'id="incomplete"' in html and "<code>source_ip/c</code>" in html
    assert f"kubelab run --resume {run_dir}" in html
    assert "**INCOMPLETE: 2 of 3" in (run_dir / "report.md").read_text()


def test_reopening_keeps_finished_rows_and_drops_the_unfinished_samples(tmp_path: Path) -> None:
    run_dir = _stopped_run(tmp_path)
    run, spec = reopen_run(run_dir)
    assert spec.digest() == test_spec().digest() and run.resumes == 1
    assert not (run_dir / "results.tmp").exists()
    run.writer.add_samples("source_ip", "b", _samples("p4"))
    run.writer.add_rows([ResultRow("source_ip", "b", "verdict", 1.0, "", Verdict.PASS)])
    samples = pd.read_parquet(run_dir / "samples.parquet")
    assert list(zip(samples["case"], samples["pod"], strict=True)) == [
        ("a", "p1"),
        ("a", "p2"),
        ("b", "p4"),
    ]
    results = load_results(run_dir)
    assert list(results["case"]) == ["a", "b"] and results["run_id"].nunique() == 1
    provenance = json.loads((run_dir / "provenance.json").read_text())
    assert len(provenance["resumed"]) == 1


def test_a_writer_persists_each_add_atomically(tmp_path: Path) -> None:
    run = open_run("kltest", test_spec(), "labs/kltest.yaml", tmp_path)
    writer: ResultsWriter = run.writer
    for i in range(3):
        writer.add_rows([ResultRow("s", f"c{i}", "verdict", 1.0)])
        assert len(pd.read_parquet(writer.results_path)) == i + 1
    assert list(run.run_dir.glob("*.tmp")) == []


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["run"], "run: name a lab"),
        (["run", "labs/local.yaml", "--resume", "/nonexistent"], "drop LAB, --scenarios and -k"),
        (["run", "--resume", "/nonexistent"], "not a run directory"),
    ],
)
def test_run_arguments_that_cannot_work_get_one_line(args: list[str], says: str) -> None:
    proc = kubelab(*args)
    assert proc.returncode == 2 and says in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr


def test_resume_refuses_a_run_with_nothing_left_or_no_plan(tmp_path: Path) -> None:
    run_dir = _stopped_run(tmp_path)
    run, _ = reopen_run(run_dir)
    run.writer.add_rows([ResultRow("source_ip", case, "verdict", 1.0) for case in "bc"])
    done = kubelab("run", "--resume", str(run_dir))
    assert done.returncode == 2 and "every case finished" in done.stderr, done.stderr
    (run_dir / "cases.json").unlink()
    unplanned = kubelab("run", "--resume", str(run_dir))
    assert unplanned.returncode == 2 and "no cases.json" in unplanned.stderr


def test_tear_down_holds_a_signal_and_raises_it_after() -> None:
    finished = []
    with pytest.raises(signals.Terminated), signals.shielded():
        os.kill(os.getpid(), signal.SIGTERM)
        finished.append("the body ran to its end")
    assert finished == ["the body ran to its end"]
    with pytest.raises(KeyboardInterrupt), signals.shielded():
        os.kill(os.getpid(), signal.SIGINT)
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL  # handlers put back


def test_a_forked_child_dies_on_sigterm_instead_of_unwinding_kubelab() -> None:
    """pyroute2's netns helper is a fork of kubelab: SIGTERM must kill it, not raise in its
    copy of kubelab's stack (whose `finally` blocks would tear the lab down)."""
    signals.install()
    try:
        pid = os.fork()
        if pid == 0:  # the child
            try:
                time.sleep(10)
            finally:
                os._exit(7)  # reached only if the signal unwound the child's stack
        time.sleep(0.3)
        os.kill(pid, signal.SIGTERM)
        _, status = os.waitpid(pid, 0)
        assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGTERM
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.default_int_handler)


def test_ctrl_c_during_a_write_is_held_until_the_file_is_whole(tmp_path: Path) -> None:
    target = tmp_path / "results.parquet"
    target.write_text("old")

    def write(tmp: Path) -> None:
        tmp.write_text("half")
        os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C arrives mid-write
        tmp.write_text("new")

    with pytest.raises(KeyboardInterrupt):
        write_atomic(target, write)
    assert target.read_text() == "new"
    assert list(tmp_path.iterdir()) == [target], "a .tmp was left"


def test_a_failed_write_keeps_the_old_file_and_leaves_no_tmp(tmp_path: Path) -> None:
    target = tmp_path / "cases.json"
    target.write_text("old")

    def write(tmp: Path) -> None:
        tmp.write_text("half")
        raise OSError("No space left on device")

    with pytest.raises(OSError, match="No space"):
        write_atomic(target, write)
    assert target.read_text() == "old" and list(tmp_path.iterdir()) == [target]
