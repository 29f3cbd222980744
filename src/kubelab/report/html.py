"""report.html: rendered from results.parquet, samples.parquet and provenance.json only."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd
from jinja2 import Environment, PackageLoader, select_autoescape
from markupsafe import Markup

from kubelab.report.plots import pods_by_source_ip

RAW_FILES = ("results.parquet", "samples.parquet", "provenance.json", "junit.xml")


def summary_line(verdicts: pd.DataFrame) -> str:
    """ "N/M cases failed" (or passed), counted from the verdict rows."""
    total = len(verdicts)
    failed = int(verdicts["verdict"].isin(["fail", "error"]).sum())
    skipped = int((verdicts["verdict"] == "skip").sum())
    if total == 0:
        return "no cases ran"
    text = f"{failed}/{total} cases failed" if failed else f"{total - skipped}/{total} cases passed"
    return text + (f", {skipped} skipped" if skipped else "")


def load_run(run_dir: Path) -> tuple[pd.DataFrame, pd.DataFrame, dict[str, Any]]:
    results = (
        pd.read_parquet(run_dir / "results.parquet")
        if (run_dir / "results.parquet").exists()
        else pd.DataFrame(
            columns=["scenario", "case", "metric", "value", "unit", "verdict", "detail"]
        )
    )
    samples = (
        pd.read_parquet(run_dir / "samples.parquet")
        if (run_dir / "samples.parquet").exists()
        else pd.DataFrame()
    )
    provenance = json.loads((run_dir / "provenance.json").read_text())
    return results, samples, provenance


def render(run_dir: Path) -> Path:
    results, samples, prov = load_run(run_dir)
    verdicts = results[results["metric"] == "verdict"]
    cases = []
    for (scenario, case), rows in results.groupby(["scenario", "case"], sort=False):
        metrics = rows[rows["metric"] != "verdict"][["metric", "value", "unit", "detail"]]
        case_samples = (
            samples[(samples["scenario"] == scenario) & (samples["case"] == case)]
            if not samples.empty
            else samples
        )
        plot = (
            pods_by_source_ip(case_samples, f"{scenario} / {case}")
            if not case_samples.empty
            else ""
        )
        cases.append(
            {
                "scenario": scenario,
                "case": case,
                "anchor": f"{scenario}-{case}",
                "verdict": rows["verdict"].iloc[-1],
                "metrics_html": Markup(
                    metrics.to_html(
                        index=False, float_format="{:.4g}".format, classes="metrics", border=0
                    )
                ),
                "plot": Markup(plot),
                "probes": len(case_samples),
            }
        )
    env = Environment(
        loader=PackageLoader("kubelab.report", "templates"),
        autoescape=select_autoescape(["html", "j2"]),
    )
    page = env.get_template("report.html.j2").render(
        prov=prov,
        summary=summary_line(verdicts),
        verdicts=verdicts.to_dict("records"),
        cases=cases,
        files=[f for f in RAW_FILES if (run_dir / f).exists()],
    )
    out = run_dir / "report.html"
    out.write_text(page)
    return out
