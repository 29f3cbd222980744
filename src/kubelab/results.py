"""Tidy results: one row per measurement, written to <run>/results.parquet as each case ends.

Parquet files cannot be appended to, so each write rewrites the (small) file atomically:
a run killed half way keeps every row written before it was killed.
"""

from __future__ import annotations

import enum
import json
import platform
import shutil
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd

from kubelab import __version__
from kubelab.atomic_write import write_atomic
from kubelab.spec import LabSpec

RESULT_COLUMNS = [
    "run_id",
    "lab",
    "substrate",
    "dataplane",
    "proxy_mode",
    "cni",
    "cni_mode",
    "kernel",
    "scenario",
    "case",
    "metric",
    "value",
    "unit",
    "verdict",
    "detail",
]
CONTEXT_COLUMNS = RESULT_COLUMNS[:8]


class Verdict(enum.StrEnum):
    PASS = "pass"
    FAIL = "fail"
    SKIP = "skip"
    ERROR = "error"


@dataclass(frozen=True)
class ResultRow:
    """One measurement of one case: the typed form of a results.parquet row (the run's
    context columns are added by the writer)."""

    scenario: str
    case: str
    metric: str
    value: float
    unit: str = ""
    verdict: Verdict = Verdict.PASS
    detail: str = ""


@dataclass(frozen=True)
class RunContext:
    """The columns every row of one run shares."""

    run_id: str
    lab: str
    substrate: str
    dataplane: str
    proxy_mode: str
    cni: str
    cni_mode: str
    kernel: str

    def row(self, **fields: Any) -> dict[str, Any]:
        return {**self.__dict__, **fields}


def new_run_id(lab: str) -> str:
    return f"{datetime.now(UTC).strftime('%Y%m%dT%H%M%SZ')}-{lab}"


def _write_atomic(frame: pd.DataFrame, path: Path) -> None:
    write_atomic(path, lambda tmp: frame.to_parquet(tmp, index=False))


class ResultsWriter:
    """Collects result rows and per-probe samples of one run, persisting after each add."""

    def __init__(self, run_dir: Path, context: RunContext) -> None:
        self.run_dir = run_dir
        self.context = context
        run_dir.mkdir(parents=True, exist_ok=True)
        self._rows: list[dict[str, Any]] = []
        self._samples: list[pd.DataFrame] = []

    @classmethod
    def reopen(
        cls, run_dir: Path, context: RunContext, finished: set[tuple[str, str]]
    ) -> ResultsWriter:
        """A stopped run's writer, to resume it: its rows kept, the samples of cases that
        did not finish dropped (they run again), a write cut short by a kill discarded."""
        writer = cls(run_dir, context)
        for tmp in run_dir.glob("*.tmp"):
            tmp.unlink()
        if writer.results_path.exists():
            writer._rows = pd.read_parquet(writer.results_path).to_dict("records")
        if writer.samples_path.exists():
            samples = pd.read_parquet(writer.samples_path)
            done = [
                (s, c) in finished
                for s, c in zip(samples["scenario"], samples["case"], strict=True)
            ]
            writer._samples = [samples[done]]
        return writer

    @property
    def results_path(self) -> Path:
        return self.run_dir / "results.parquet"

    @property
    def samples_path(self) -> Path:
        return self.run_dir / "samples.parquet"

    def add_rows(self, rows: Sequence[ResultRow]) -> None:
        for r in rows:
            fields = {**r.__dict__, "value": float(r.value), "verdict": str(r.verdict)}
            self._rows.append(self.context.row(**fields))
        frame = pd.DataFrame(self._rows, columns=RESULT_COLUMNS)
        frame["value"] = frame["value"].astype("float64")
        _write_atomic(frame, self.results_path)

    def add_samples(self, scenario: str, case: str, samples: pd.DataFrame) -> None:
        tagged = samples.assign(
            run_id=self.context.run_id,
            lab=self.context.lab,
            proxy_mode=self.context.proxy_mode,
            scenario=scenario,
            case=case,
        )
        self._samples.append(tagged)
        _write_atomic(pd.concat(self._samples, ignore_index=True), self.samples_path)


def load_results(run_dir: Path) -> pd.DataFrame:
    """A run's rows (none yet: an empty frame with the columns)."""
    path = run_dir / "results.parquet"
    return pd.read_parquet(path) if path.exists() else pd.DataFrame(columns=RESULT_COLUMNS)


def _version(argv: list[str]) -> str | None:
    if shutil.which(argv[0]) is None:
        return None
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return (
        (out.stdout or out.stderr).strip().splitlines()[0] if (out.stdout or out.stderr) else None
    )


def git_revision(cwd: Path) -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    if out.returncode != 0:
        return None
    dirty = subprocess.run(
        ["git", "status", "--porcelain"],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=10,
        check=False,
    ).stdout.strip()
    return out.stdout.strip() + ("-dirty" if dirty else "")


def write_provenance(
    run_dir: Path,
    spec: LabSpec,
    spec_path: str,
    context: RunContext,
    extra: dict[str, Any] | None = None,
) -> Path:
    """provenance.json: what ran, on what, from which source, with which seeds."""
    data = {
        "run_id": context.run_id,
        "node_kernels": {},  # filled in when the lab is up (update_provenance)
        "started": datetime.now(UTC).isoformat(),
        "kubelab_version": __version__,
        "git_revision": git_revision(Path(__file__).resolve().parent),
        "spec_path": spec_path,
        "spec_digest": spec.digest(),
        "spec": json.loads(spec.model_dump_json()),
        "spec_fields": json.loads(spec.model_dump_json(exclude_unset=True)),  # for --resume
        "seeds": {"lab": spec.seed},
        "kernel": platform.release(),
        "python": sys.version.split()[0],
        "tools": {
            "iptables": _version(["iptables", "--version"]),
            "nft": _version(["nft", "--version"]),
            "iproute2": _version(["ip", "-V"]),
            "openssh": _version(["ssh", "-V"]),
        },
        "host": platform.node(),
        **(extra or {}),
    }
    path = run_dir / "provenance.json"
    path.write_text(json.dumps(data, indent=2))
    return path


def update_provenance(run_dir: Path, **fields: Any) -> None:
    """Add what is known only once the lab is up (the nodes' kernels, per lab)."""
    path = run_dir / "provenance.json"
    data = json.loads(path.read_text())
    for key, value in fields.items():
        if isinstance(value, dict) and isinstance(data.get(key), dict):
            data[key].update(value)
        else:
            data[key] = value
    path.write_text(json.dumps(data, indent=2))
