"""A diagnosis as result rows, so a failing case's report section can show it (reports are
rendered from the run folder's files only)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from kubelab.results import ResultRow, Verdict

if TYPE_CHECKING:
    from kubelab.diagnose.checklist import Diagnosis

PREFIX = "diagnose "  # metric names: "diagnose <ns/name>" (the summary) and "... <step>"
VALUES = {"pass": 1.0, "fail": 0.0, "skip": float("nan")}


def diagnosis_as_rows(scenario: str, case: str, diagnosis: Diagnosis) -> list[ResultRow]:
    first = diagnosis.first_failure
    summary = f"{first.cause} -> fix: {first.fix}" if first else "every applicable step passed"
    rows = [
        ResultRow(
            scenario,
            case,
            f"{PREFIX}{diagnosis.service}",
            1.0 if diagnosis.ok else 0.0,
            "",
            Verdict.PASS if diagnosis.ok else Verdict.FAIL,
            summary,
        )
    ]
    for step in diagnosis.steps:
        rows.append(
            ResultRow(
                scenario,
                case,
                f"{PREFIX}{diagnosis.service} {step.name}",
                VALUES[step.verdict],
                "",
                Verdict(step.verdict),
                "; ".join(step.evidence)[:1500],
            )
        )
    return rows
