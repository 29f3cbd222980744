"""Lab matrices: one base lab and axes of dataplane settings, expanded into one lab per
combination (`labs/matrix.yaml`: proxy mode x CNI). A combination that cannot work is
refused with the spec's own reason, before anything is built; `kubelab run --matrix`
runs the others one after another and compares them in one report.

    name: mx                 # cells are named mx + a code per value: mxiptfla, mxnftcil, ...
    base: vm-kubernetes.yaml # relative to the matrix file
    axes:                    # dataplane fields and their values
      proxy_mode: [iptables, ipvs, nftables, none]
      cni: [flannel, calico, cilium]
"""

from __future__ import annotations

import itertools
import json
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import Field, ValidationError

from kubelab.errors import EnvironmentMissing, KubelabError, SpecError
from kubelab.spec import LabSpec, parse_spec
from kubelab.spec_common import StrictModel

CODE_LENGTH = 3  # characters of each value in a cell's name
MAX_NAME = 10  # LabSpec.name's limit


class MatrixSpec(StrictModel):
    name: str = Field(pattern=r"^[a-z][a-z0-9]*$", max_length=4)
    description: str = ""
    base: str
    axes: dict[str, list[str | int | float | bool]] = Field(min_length=1)


@dataclass(frozen=True)
class Cell:
    name: str
    values: dict[str, Any]  # axis -> value
    spec: LabSpec | None  # None when refused
    refused: str | None = None  # the spec's one-line reason


@dataclass(frozen=True)
class Matrix:
    name: str
    path: Path
    description: str
    cells: tuple[Cell, ...]

    @property
    def runnable(self) -> tuple[Cell, ...]:
        return tuple(c for c in self.cells if c.spec is not None)


def _code(value: Any) -> str:
    text = re.sub(r"[^a-z0-9]", "", str(value).lower())
    return text[:CODE_LENGTH] or "x"


def load_matrix(path: Path) -> Matrix:
    """Read a matrix file and expand it; SpecError (one line) on a bad file or base."""
    if not path.is_file():
        raise SpecError(f"{path}: no such matrix file; pass one such as labs/matrix.yaml")
    try:
        raw = yaml.safe_load(path.read_text())
        matrix = MatrixSpec.model_validate(raw)
    except yaml.YAMLError:
        raise SpecError(f"{path}: not valid YAML; fix the syntax") from None
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err["loc"]) or "(top level)"
        raise SpecError(f"{path}: {where}: {err['msg']}; see labs/matrix.yaml") from None
    base_path = (path.parent / matrix.base).resolve()
    if not base_path.is_file():
        raise SpecError(f"{path}: base: {base_path} does not exist; name a lab spec beside it")
    base = yaml.safe_load(base_path.read_text())
    parse_spec(base, str(base_path), base_path.parent)  # the base itself must be a lab
    names = list(matrix.axes)
    cells = []
    for combo in itertools.product(*matrix.axes.values()):
        values = dict(zip(names, combo, strict=True))
        name = matrix.name + "".join(_code(v) for v in combo)
        if len(name) > MAX_NAME:
            raise SpecError(
                f"{path}: name: cells such as {name!r} exceed {MAX_NAME} characters; "
                "use a shorter name or fewer axes"
            )
        data = {**base, "name": name, "dataplane": {**base["dataplane"], **values}}
        data["description"] = f"{matrix.name}: {_shown(values)}"
        try:
            spec = parse_spec(data, name, base_path.parent)
        except SpecError as exc:
            reason = str(exc).removeprefix(f"{name}: ")
            cells.append(Cell(name, values, None, reason))
            continue
        cells.append(Cell(name, values, spec))
    if len({c.name for c in cells}) != len(cells):
        raise SpecError(f"{path}: axes: two values share a {CODE_LENGTH}-letter code; rename one")
    if not any(c.spec for c in cells):
        raise SpecError(f"{path}: every combination is refused, e.g. {cells[0].refused}")
    return Matrix(matrix.name, path, matrix.description, tuple(cells))


def describe(matrix: Matrix) -> list[dict[str, Any]]:
    """One row per cell: its name, values, and its refusal if any (`kubelab plan --matrix`)."""
    return [
        {"lab": c.name, **c.values, "refused": c.refused}
        if c.refused
        else {"lab": c.name, **c.values}
        for c in matrix.cells
    ]


@dataclass(frozen=True)
class MatrixOutcome:
    exit_code: int
    folder: Path
    report: Path | None


def run_matrix(
    matrix: Matrix,
    scenarios: Path | None,
    reports_root: Path,
    pytest_args: Sequence[str] = (),
    progress: Callable[[str], None] = print,
) -> MatrixOutcome:
    """Every runnable cell, one after another (each a full `kubelab run`), then one
    comparison report over the runs. A cell this machine cannot run is reported with
    its reason, and the others go on."""
    from datetime import UTC, datetime

    from kubelab.report.compare import render_compare
    from kubelab.run import default_scenarios, run_lab

    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    folder = reports_root / f"matrix-{matrix.name}-{stamp}"
    (folder / "labs").mkdir(parents=True)
    scenarios = scenarios or default_scenarios(matrix.path)
    rows = [{"lab": c.name, **c.values, "status": "refused", "reason": c.refused}
            for c in matrix.cells if c.refused]  # fmt: skip
    run_dirs: list[Path] = []
    worst = 0
    for cell in matrix.runnable:
        assert cell.spec is not None
        spec_file = folder / "labs" / f"{cell.name}.yaml"
        spec_file.write_text(
            yaml.safe_dump(cell.spec.model_dump(mode="json", exclude_unset=True), sort_keys=False)
        )
        progress(f"matrix {matrix.name}: lab {cell.name} ({_shown(cell.values)})")
        row: dict[str, Any] = {"lab": cell.name, **cell.values}
        try:
            outcome = run_lab(spec_file, scenarios, reports_root, pytest_args, progress)
        except KubelabError as exc:  # this lab cannot run here, or its run broke
            cannot = isinstance(exc, SpecError | EnvironmentMissing)
            rows.append({**row, "status": "not run" if cannot else "failed", "reason": str(exc)})
            worst = max(worst, 1)
            continue
        run_dirs.append(outcome.run_dir)
        rows.append({**row, "status": "ran", "exit_code": outcome.exit_code,
                     "run_dir": str(outcome.run_dir)})  # fmt: skip
        worst = max(worst, outcome.exit_code)
        if outcome.exit_code >= 128:  # interrupted: the rest does not run
            break
    (folder / "matrix.json").write_text(
        json.dumps({"matrix": matrix.name, "cells": rows}, indent=1)
    )
    values = {c.name: c.values for c in matrix.cells}
    not_run = [
        f"{r['lab']} ({_shown(values[r['lab']])}): {r['status']}: {r['reason']}"
        for r in rows
        if r["status"] != "ran"
    ]
    report = render_compare(run_dirs, folder, not_run=not_run) if run_dirs else None
    return MatrixOutcome(worst if run_dirs else max(worst, 1), folder, report)


def _shown(values: dict[str, Any]) -> str:
    return ", ".join(f"{k} {v}" for k, v in values.items())
