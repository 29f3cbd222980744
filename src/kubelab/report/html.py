"""report.html, report.md and results.csv: rendered from results.parquet, samples.parquet
and provenance.json only, never computed anywhere else."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd
from jinja2 import Environment, PackageLoader, select_autoescape
from markupsafe import Markup

from kubelab.case_plan import read_plan, unfinished
from kubelab.diagnose.rows import PREFIX as DIAGNOSIS_PREFIX
from kubelab.report import plots
from kubelab.results import Verdict, load_results

RAW_FILES = (
    "results.parquet",
    "results.csv",
    "samples.parquet",
    "provenance.json",
    "junit.xml",
    "cases.json",
    "report.md",
)


def summary_line(verdicts: pd.DataFrame) -> str:
    """ "N/M cases failed" (or passed), counted from the verdict rows."""
    total = len(verdicts)
    failed = int(verdicts["verdict"].isin([Verdict.FAIL, Verdict.ERROR]).sum())
    skipped = int((verdicts["verdict"] == Verdict.SKIP).sum())
    if total == 0:
        return "no cases ran"
    text = f"{failed}/{total} cases failed" if failed else f"{total - skipped}/{total} cases passed"
    return text + (f", {skipped} skipped" if skipped else "")


def load_run(run_dir: Path) -> tuple[pd.DataFrame, pd.DataFrame, dict[str, Any]]:
    results = load_results(run_dir)
    path = run_dir / "samples.parquet"
    samples = pd.read_parquet(path) if path.exists() else pd.DataFrame()
    provenance = json.loads((run_dir / "provenance.json").read_text())
    return results, samples, provenance


def verdict_matrix(results: pd.DataFrame, column: str = "lab") -> pd.DataFrame:
    """scenario/case x lab (or run): the verdict of each case in each."""
    verdicts = results[results["metric"] == "verdict"]
    if verdicts.empty:
        return pd.DataFrame()
    return verdicts.pivot_table(
        index=["scenario", "case"], columns=column, values="verdict", aggfunc="last"
    )


def _matrix_html(matrix: pd.DataFrame) -> Markup:
    if matrix.empty:
        return Markup("<p>no verdicts</p>")
    styled = matrix.fillna("").map(lambda v: f'<span class="{v}">{v.upper()}</span>' if v else "")
    return Markup(styled.to_html(escape=False, table_id="verdict-matrix", border=0))


def _diagnoses(rows: pd.DataFrame) -> list[dict[str, Any]]:
    """A failing case's `kubelab diagnose` rows: per Service, the verdict, the first
    failure's cause and fix, and each step with its evidence."""
    out = []
    for row in rows.itertuples():
        words = str(row.metric).removeprefix(DIAGNOSIS_PREFIX).split(" ")
        if len(words) == 1:
            out.append({"service": words[0], "verdict": row.verdict, "summary": row.detail,
                        "steps": []})  # fmt: skip
        elif out:
            out[-1]["steps"].append(
                {"step": words[1], "verdict": row.verdict, "evidence": row.detail}
            )
    return out


def _case_sections(results: pd.DataFrame, samples: pd.DataFrame) -> list[dict[str, Any]]:
    cases = []
    scenario_rows = results[~results["scenario"].str.startswith("bench_")]
    for (scenario, case), rows in scenario_rows.groupby(["scenario", "case"], sort=False):
        diagnosed = rows["metric"].str.startswith(DIAGNOSIS_PREFIX)
        metrics = rows[(rows["metric"] != "verdict") & ~diagnosed][
            ["metric", "value", "unit", "detail"]
        ]
        mine = (
            samples[(samples["scenario"] == scenario) & (samples["case"] == case)]
            if not samples.empty
            else samples
        )
        figures = []
        if not mine.empty:
            change = rows.loc[rows["metric"] == "change_at", "value"]
            if not change.empty:
                figures.append(
                    plots.failover_timeline(mine, float(change.iloc[-1]), f"{scenario} / {case}")
                )
            figures.append(plots.pods_by_source_ip(mine, f"{scenario} / {case}"))
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
                "figures": [Markup(f) for f in figures],
                "probes": len(mine),
                "diagnoses": _diagnoses(rows[diagnosed]),
            }
        )
    return cases


def _bench_section(results: pd.DataFrame) -> dict[str, Any] | None:
    bench = results[(results["scenario"] == "bench_scale") & (results["metric"] != "verdict")]
    if bench.empty:
        return None
    table = plots._bench_frame(results).pivot_table(
        index=["proxy_mode", "n"], columns="metric", values="value", aggfunc="last"
    )
    keep = [
        c
        for c in (
            "rules",
            "chains",
            "map_elements",
            "full_sync",
            "plain_restore",
            "add_one_service",
            "add_one_service_apply",
            "kernel_commit_verdict",
            "kernel_commit_plain",
            "remove_one_service",
            "latency_first_service_p50",
            "latency_last_service_p50",
            "latency_nodeport_p50",
            "rules_memory",
        )
        if c in table.columns
    ]
    skips = results[(results["scenario"] == "bench_scale") & (results["verdict"] == Verdict.SKIP)]
    return {
        "table": Markup(table[keep].to_html(float_format="{:.4g}".format, border=0)),
        "figures": [
            Markup(plots.scale_latency(results)),
            Markup(
                plots.scale_metric(
                    results,
                    ["full_sync", "plain_restore", "add_one_service", "add_one_service_apply"],
                    "seconds",
                    "Sync time vs number of Services",
                )
            ),
            Markup(
                plots.scale_metric(
                    results, ["rules", "map_elements"], "count", "Rules vs number of Services"
                )
            ),
        ],
        "skips": skips[["case", "detail"]].to_dict("records"),
    }


def _bench_tables(results: pd.DataFrame, samples: pd.DataFrame) -> list[dict[str, Any]]:
    """bench programming / load / failover: one table each, case x metric; programming
    also plots every node's latency of every change."""
    out = []
    for scenario, title in (
        ("bench_programming", "Benchmark: network programming across nodes"),
        ("bench_load", "Benchmark: load (Locust vs wrk)"),
        ("bench_failover", "Benchmark: failover trials"),
    ):
        rows = results[results["scenario"] == scenario]
        measured = rows[rows["metric"] != "verdict"]
        if rows.empty:
            continue
        table = measured.pivot_table(index="case", columns="metric", values="value", aggfunc="last")
        notes = sorted({d for d in measured["detail"] if d and "CPU-bound" in d})
        notes += [
            f"{v.case}: {str(v.verdict).upper()}: {v.detail}"
            for v in rows[rows["metric"] == "verdict"].itertuples()
            if v.verdict != Verdict.PASS
        ]
        mine = samples[samples["scenario"] == scenario] if not samples.empty else samples
        figures = []
        if scenario == "bench_programming" and not mine.empty:
            figures.append(Markup(plots.programming_latency(mine)))
        out.append(
            {
                "title": title,
                "anchor": scenario.replace("_", "-"),
                "table": Markup(table.to_html(float_format="{:.4g}".format, border=0))
                if not table.empty
                else Markup("<p>nothing measured</p>"),
                "notes": notes,
                "figures": figures,
            }
        )
    return out


def incompleteness(run_dir: Path, results: pd.DataFrame | None = None) -> str:
    """'INCOMPLETE: k of n cases did not finish: ...', or '' for a finished run."""
    plan = read_plan(run_dir)
    missing = unfinished(plan, load_results(run_dir) if results is None else results)
    if plan is None or not missing:
        return ""
    names = ", ".join(f"{c.scenario}/{c.case}" for c in missing)
    return f"INCOMPLETE: {len(missing)} of {len(plan.cases)} cases did not finish: {names}"


def render_markdown(results: pd.DataFrame, prov: dict[str, Any], incomplete: str = "") -> str:
    verdicts = results[results["metric"] == "verdict"]
    lines = [
        f"# kubelab run {prov['run_id']}",
        "",
        f"**{summary_line(verdicts)}**",
        "",
        *([f"**{incomplete}**", ""] if incomplete else []),
        f"lab `{prov['spec']['name']}`, kernel {prov['kernel']}, "
        f"git {prov.get('git_revision') or 'unknown'}",
        "",
        "| scenario | case | verdict | detail |",
        "|---|---|---|---|",
    ]
    for v in verdicts.itertuples():
        detail = str(v.detail).replace("|", "\\|").replace("\n", " ")[:300]
        lines.append(f"| {v.scenario} | {v.case} | {str(v.verdict).upper()} | {detail} |")
    return "\n".join(lines) + "\n"


def render(run_dir: Path) -> Path:
    results, samples, prov = load_run(run_dir)
    plan = read_plan(run_dir)
    missing = [f"{c.scenario}/{c.case}" for c in unfinished(plan, results)]
    incomplete = incompleteness(run_dir, results)
    results.to_csv(run_dir / "results.csv", index=False)
    (run_dir / "report.md").write_text(render_markdown(results, prov, incomplete))
    verdicts = results[results["metric"] == "verdict"]
    env = Environment(
        loader=PackageLoader("kubelab.report", "templates"),
        autoescape=select_autoescape(["html", "j2"]),
    )
    page = env.get_template("report.html.j2").render(
        prov=prov,
        summary=summary_line(verdicts),
        matrix=_matrix_html(verdict_matrix(results)),
        verdicts=verdicts.to_dict("records"),
        cases=_case_sections(results, samples),
        bench=_bench_section(results),
        bench_tables=_bench_tables(results, samples),
        files=[f for f in RAW_FILES if (run_dir / f).exists()],
        incomplete=missing,
        planned=len(plan.cases) if plan else 0,
        run_dir=run_dir,
    )
    out = run_dir / "report.html"
    out.write_text(page)
    return out
