"""`kubelab report compare` (runs side by side, deltas, regressions against a tolerance) and
`kubelab report history` (append a run to a history table, render trends)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import pandas as pd
from jinja2 import Environment, PackageLoader, select_autoescape
from markupsafe import Markup

from kubelab.report.html import load_run, summary_line, verdict_matrix
from kubelab.report.plots import _svg
from kubelab.results import Verdict

WORSE_WHEN_HIGHER = (
    "latency",
    "sync",
    "failed",
    "blackout",
    "recovery",
    "refusal",
    "seconds",
    "add_one",
    "remove_one",
    "memory",
    "programming",
)


def _label(results: pd.DataFrame, prov: dict[str, Any]) -> str:
    mode = ",".join(sorted({m for m in results["proxy_mode"].dropna().unique() if m})) or "?"
    return f"{prov['spec']['name']} ({mode}) {prov['run_id']}"


def _load(run_dirs: list[Path]) -> pd.DataFrame:
    frames = []
    for run_dir in run_dirs:
        results, _, prov = load_run(run_dir)
        frames.append(results.assign(run=_label(results, prov)))
    return pd.concat(frames, ignore_index=True)


def _worse_when_higher(metric: str) -> bool:
    return any(word in metric for word in WORSE_WHEN_HIGHER)


def compare_table(results: pd.DataFrame, tolerance: float) -> pd.DataFrame:
    """One row per (scenario, case, metric): each run's value, the relative delta of each
    later run against the first, and whether that delta is a regression."""
    values = results[results["metric"] != "verdict"].pivot_table(
        index=["scenario", "case", "metric", "unit"], columns="run", values="value", aggfunc="last"
    )
    runs = list(dict.fromkeys(results["run"]))
    values = values.reindex(columns=runs)
    base = values[runs[0]]
    flags = []
    for run in runs[1:]:
        delta = (values[run] - base) / base.abs().where(base != 0)
        values[f"delta {run}"] = delta
        worse = [
            _worse_when_higher(idx[2])
            and ((pd.notna(d) and d > tolerance) or (b == 0 and pd.notna(v) and v > 0))
            for idx, d, b, v in zip(values.index, delta, base, values[run], strict=True)
        ]
        flags.append(pd.Series(worse, index=values.index))
    values["regression"] = pd.concat(flags, axis=1).any(axis=1) if flags else False
    return values


def verdict_regressions(results: pd.DataFrame) -> list[str]:
    matrix = verdict_matrix(results, "run")
    if matrix.empty or len(matrix.columns) < 2:
        return []
    first = matrix.columns[0]
    out = []
    for (scenario, case), row in matrix.iterrows():
        for run in matrix.columns[1:]:
            if row[first] == Verdict.PASS and row[run] in (Verdict.FAIL, Verdict.ERROR):
                out.append(f"{scenario}/{case}: pass in {first}, {row[run]} in {run}")
    return out


def render_compare(
    run_dirs: list[Path], out_dir: Path, tolerance: float = 0.2, not_run: Sequence[str] = ()
) -> Path:
    """compare.html and compare.csv in out_dir. `not_run`: labs of a matrix that were
    refused or could not run, one line each with the reason, listed on the page."""
    results = _load(run_dirs)
    table = compare_table(results, tolerance)
    regressions = table[table["regression"]]
    out_dir.mkdir(parents=True, exist_ok=True)
    env = Environment(
        loader=PackageLoader("kubelab.report", "templates"),
        autoescape=select_autoescape(["html", "j2"]),
    )
    matrix = verdict_matrix(results, "run")
    page = env.get_template("compare.html.j2").render(
        runs=list(dict.fromkeys(results["run"])),
        not_run=list(not_run),
        tolerance=tolerance,
        summaries={
            run: summary_line(rows[rows["metric"] == "verdict"])
            for run, rows in results.groupby("run", sort=False)
        },
        matrix=Markup(matrix.fillna("").to_html(table_id="verdict-matrix", border=0)),
        verdict_regressions=verdict_regressions(results),
        regressions=Markup(
            regressions.drop(columns="regression").to_html(float_format="{:.4g}".format, border=0)
        )
        if not regressions.empty
        else None,
        table=Markup(table.to_html(float_format="{:.4g}".format, border=0)),
    )
    out = out_dir / "compare.html"
    out.write_text(page)
    table.reset_index().to_csv(out_dir / "compare.csv", index=False)
    return out


def append_history(run_dir: Path, history: Path) -> pd.DataFrame:
    results, _, prov = load_run(run_dir)
    results = results.assign(started=prov.get("started"), git_revision=prov.get("git_revision"))
    if history.exists():
        old = pd.read_parquet(history)
        old = old[old["run_id"] != prov["run_id"]]  # appending a run twice replaces it
        results = pd.concat([old, results], ignore_index=True)
    history.parent.mkdir(parents=True, exist_ok=True)
    results.to_parquet(history, index=False)
    return results


def _trend(frame: pd.DataFrame, title: str, ylabel: str) -> str:
    fig, ax = plt.subplots(figsize=(7, 2.8))
    for label, rows in frame.groupby("series"):
        ax.plot(pd.to_datetime(rows["started"]), rows["value"], marker="o", label=label)
    ax.set_title(title, fontsize=10)
    ax.set_ylabel(ylabel)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.autofmt_xdate()
    return _svg(fig)


def render_history(history: Path) -> Path:
    data = pd.read_parquet(history)
    verdicts = data[data["metric"] == "verdict"]
    rate = (
        verdicts.groupby(["run_id", "started", "lab"])
        .agg(value=("verdict", lambda v: float((v == Verdict.PASS).mean())))
        .reset_index()
    )
    figures = [_trend(rate.assign(series=rate["lab"]), "Cases passed per run", "fraction")]
    timed = data[data["unit"].isin(["s", "us", "ms"]) & (data["metric"] != "change_at")]
    per_run = (
        timed.groupby(["scenario", "metric", "proxy_mode", "run_id", "started"])["value"]
        .mean()
        .reset_index()
    )
    counts = per_run.groupby(["scenario", "metric"])["run_id"].nunique()
    for scenario, metric in list(counts[counts >= 2].index)[:8]:
        rows = per_run[(per_run["scenario"] == scenario) & (per_run["metric"] == metric)]
        figures.append(
            _trend(
                rows.assign(series=rows["proxy_mode"]),
                f"{scenario}: {metric}",
                str(timed.loc[timed["metric"] == metric, "unit"].iloc[0]),
            )
        )
    env = Environment(
        loader=PackageLoader("kubelab.report", "templates"),
        autoescape=select_autoescape(["html", "j2"]),
    )
    page = env.get_template("history.html.j2").render(
        history=str(history),
        runs=int(data["run_id"].nunique()),
        figures=[Markup(f) for f in figures],
    )
    out = history.with_suffix(".html")
    out.write_text(page)
    return out


def provenance_of(run_dir: Path) -> dict[str, Any]:
    return dict(json.loads((run_dir / "provenance.json").read_text()))
