"""`kubelab run`: up -> scenarios (pytest, JUnit XML) -> report -> down, as data."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

from kubelab.lab import Lab
from kubelab.pytest_plugin import LabSession, SessionPlugin
from kubelab.report.html import render
from kubelab.results import ResultsWriter
from kubelab.runs import open_run
from kubelab.spec import load_spec

# pytest's exit codes -> kubelab's: 0 all passed, 1 a scenario failed, 2 bad input,
# 130 interrupted (Ctrl-C), as a shell reports SIGINT.
PYTEST_TO_EXIT = {0: 0, 1: 1, 2: 130, 3: 1, 4: 2, 5: 1}


@dataclass(frozen=True)
class RunOutcome:
    exit_code: int
    run_dir: Path
    report: Path | None


def default_scenarios(spec_path: Path) -> Path:
    beside = spec_path.resolve().parent.parent / "scenarios"
    return beside if beside.is_dir() else Path("scenarios")


def run_scenarios(
    lab: Lab, writer: ResultsWriter, scenarios: Path, pytest_args: Sequence[str] = ()
) -> int:
    """Run the scenario modules against a lab that is up; returns pytest's exit code."""
    top = scenarios.resolve() if scenarios.is_dir() else scenarios.resolve().parent
    return int(
        pytest.main(
            [
                str(scenarios),
                f"--junitxml={writer.run_dir / 'junit.xml'}",
                "-p",
                "no:cacheprovider",
                "-p",
                "no:locust",  # Locust's own pytest plugin: not used here
                f"--rootdir={top.parent}",
                "-q",
                # kubelab is imported before pytest starts, so it cannot be assert-rewritten
                "-W",
                "ignore::pytest.PytestAssertRewriteWarning",
                *pytest_args,
            ],
            plugins=[SessionPlugin(LabSession(lab, writer))],
        )
    )


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
    run = open_run(spec.lab_id, spec, str(spec_path), reports_root)
    try:
        lab.up(progress)
        run.attach(lab)
        progress(f"scenarios in {scenarios}")
        code = run_scenarios(lab, run.writer, scenarios, pytest_args)
        progress("collecting each node's rules and conntrack table")
        lab.substrate.collect(run.run_dir / "nodes")
    finally:
        progress("tearing the lab down")
        lab.down()
    report = render(run.run_dir)
    return RunOutcome(PYTEST_TO_EXIT.get(int(code), 1), run.run_dir, report)
