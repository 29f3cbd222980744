"""The cases a run set out to run (cases.json) and which of them finished.

A case is finished once its verdict row is in results.parquet (written as the case ends).
A run stopped half way (Ctrl-C, SIGTERM, SIGKILL, a crash) keeps its plan and its finished
rows, so its report can name what did not finish and `kubelab run --resume` runs only that.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import pandas as pd

from kubelab.atomic_write import write_atomic

PLAN_FILE = "cases.json"


@dataclass(frozen=True)
class PlannedCase:
    scenario: str
    case: str
    nodeid: str  # pytest's node id made absolute: /path/to/test_x.py::test_case[param]


@dataclass(frozen=True)
class CasePlan:
    rootdir: str  # pytest's rootdir for the run; a resumed run uses the same
    cases: list[PlannedCase]


def write_plan(run_dir: Path, plan: CasePlan) -> None:
    path = run_dir / PLAN_FILE
    write_atomic(path, lambda tmp: tmp.write_text(json.dumps(asdict(plan), indent=1)))


def read_plan(run_dir: Path) -> CasePlan | None:
    path = run_dir / PLAN_FILE
    if not path.exists():
        return None
    data = json.loads(path.read_text())
    return CasePlan(data["rootdir"], [PlannedCase(**c) for c in data["cases"]])


def finished(results: pd.DataFrame) -> set[tuple[str, str]]:
    verdicts = results[results["metric"] == "verdict"]
    return set(zip(verdicts["scenario"], verdicts["case"], strict=True))


def unfinished(plan: CasePlan | None, results: pd.DataFrame) -> list[PlannedCase]:
    """Planned cases without a verdict row, in the plan's order (none without a plan)."""
    if plan is None:
        return []
    done = finished(results)
    return [c for c in plan.cases if (c.scenario, c.case) not in done]
