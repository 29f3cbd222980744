"""`kubelab run`: up -> scenarios (pytest, JUnit XML) -> report -> down, as data; and
`kubelab run --resume RUN_DIR`: the same for the cases a stopped run did not finish."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pytest

from kubelab import signals
from kubelab.case_plan import read_plan, unfinished
from kubelab.errors import SpecError
from kubelab.lab import Lab
from kubelab.pytest_plugin import LabSession, SessionPlugin
from kubelab.report.html import render
from kubelab.results import ResultsWriter, load_results, update_provenance
from kubelab.runs import RunFolder, open_run, reopen_run
from kubelab.spec import load_spec

# pytest's exit codes -> kubelab's: 0 all passed, 1 a scenario failed, 2 bad input,
# 130 interrupted (Ctrl-C; 143 for SIGTERM), as a shell reports the signal.
PYTEST_INTERRUPTED = 2
PYTEST_TO_EXIT = {0: 0, 1: 1, 3: 1, 4: 2, 5: 1}


@dataclass(frozen=True)
class RunOutcome:
    exit_code: int
    run_dir: Path
    report: Path | None


def default_scenarios(spec_path: Path) -> Path:
    beside = spec_path.resolve().parent.parent / "scenarios"
    return beside if beside.is_dir() else Path("scenarios")


def run_scenarios(
    lab: Lab,
    writer: ResultsWriter,
    targets: Sequence[str],
    rootdir: Path,
    pytest_args: Sequence[str] = (),
    resumed: int = 0,
) -> int:
    """Run scenario modules (or node ids) against a lab that is up; pytest's exit code.
    A first run writes the case plan; the n-th resume writes junit-resumed-n.xml."""
    junit = writer.run_dir / (f"junit-resumed-{resumed}.xml" if resumed else "junit.xml")
    return int(
        pytest.main(
            [
                *targets,
                f"--junitxml={junit}",
                "-p",
                "no:cacheprovider",
                "-p",
                "no:locust",  # Locust's own pytest plugin: not used here
                f"--rootdir={rootdir}",
                "-q",
                # kubelab is imported before pytest starts, so it cannot be assert-rewritten
                "-W",
                "ignore::pytest.PytestAssertRewriteWarning",
                *pytest_args,
            ],
            plugins=[SessionPlugin(LabSession(lab, writer), write_plan=not resumed)],
        )
    )


def _drive(
    lab: Lab,
    run: RunFolder,
    targets: Sequence[str],
    rootdir: Path,
    pytest_args: Sequence[str],
    progress: Callable[[str], None],
    resumed: int = 0,
) -> RunOutcome:
    """up -> scenarios -> the nodes' records -> down -> report (marked incomplete when
    cases did not finish). A stop before the scenarios end still tears down and reports."""
    try:
        lab.up(progress)
        run.attach(lab)
        progress(f"scenarios: {' '.join(targets) if len(targets) < 4 else rootdir}")
        code = run_scenarios(lab, run.writer, targets, rootdir, pytest_args, resumed)
        if code != PYTEST_INTERRUPTED:
            progress("collecting each node's rules and conntrack table")
            lab.substrate.collect(run.run_dir / "nodes")
    finally:
        progress("tearing the lab down")
        lab.down()
    stopped = code == PYTEST_INTERRUPTED
    now = datetime.now(UTC).isoformat()
    update_provenance(
        run.run_dir, stopped=now if stopped else None, finished=None if stopped else now
    )
    report = render(run.run_dir)
    exit_code = signals.interrupted_exit_code() if stopped else PYTEST_TO_EXIT.get(code, 1)
    return RunOutcome(exit_code, run.run_dir, report)


def run_lab(
    spec_path: Path,
    scenarios: Path | None = None,
    reports_root: Path = Path("reports"),
    pytest_args: Sequence[str] = (),
    progress: Callable[[str], None] = print,
) -> RunOutcome:
    spec = load_spec(spec_path)  # bad input stops here, before anything exists
    lab = Lab(spec)
    lab.check()  # so does a machine that cannot run it
    scenarios = scenarios or default_scenarios(spec_path)
    top = scenarios.resolve() if scenarios.is_dir() else scenarios.resolve().parent
    run = open_run(spec.lab_id, spec, str(spec_path), reports_root)
    return _drive(lab, run, [str(scenarios)], top.parent, pytest_args, progress)


def resume_run(
    run_dir: Path, pytest_args: Sequence[str] = (), progress: Callable[[str], None] = print
) -> RunOutcome:
    """Bring the stopped run's lab up again and run only its unfinished cases, adding
    their rows to the same run folder under the same run id."""
    plan = read_plan(run_dir)
    if plan is None:
        raise SpecError(f"{run_dir}: no cases.json (the run stopped before its cases were "
                        "collected); start it again with `kubelab run LAB`")  # fmt: skip
    todo = unfinished(plan, load_results(run_dir))
    if not todo:
        raise SpecError(f"{run_dir}: every case finished; there is nothing to resume")
    run, spec = reopen_run(run_dir)
    lab = Lab(spec)
    lab.check()
    progress(f"resuming {len(todo)} of {len(plan.cases)} cases")
    nodeids = [case.nodeid for case in todo]
    return _drive(lab, run, nodeids, Path(plan.rootdir), pytest_args, progress, run.resumes)
