"""Run a benchmark into a run folder: provenance, results.parquet (rows as they come),
report.html."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import yaml

from kubelab.bench.failover import run_failover
from kubelab.bench.load import run_load
from kubelab.bench.programming import ProgrammingBench, ProgrammingConfig, programming_spec
from kubelab.bench.scale import ScaleBench, ScaleConfig, bench_spec
from kubelab.errors import EnvironmentMissing, SpecError
from kubelab.lab import Lab
from kubelab.report.html import render
from kubelab.results import ResultRow, Verdict
from kubelab.runs import open_run
from kubelab.spec import LabSpec, parse_spec

Progress = Callable[[str], None]
LOCAL_SPEC = Path(__file__).resolve().parents[3] / "labs" / "local.yaml"


def run_scale(config: ScaleConfig, reports_root: Path, progress: Progress) -> Path:
    spec = bench_spec(config.modes[0], config.endpoints)
    extra = {"bench": {"kind": "scale", **vars(config)}}
    run = open_run("bench-scale", spec, "bench scale", reports_root, extra=extra)
    ScaleBench(config, run, progress).run()
    return render(run.run_dir)


def run_programming(config: ProgrammingConfig, reports_root: Path, progress: Progress) -> Path:
    spec = programming_spec(config.modes[0], min(config.nodes), config.endpoints)
    extra = {"bench": {"kind": "programming", **vars(config)}}
    run = open_run("bench-programming", spec, "bench programming", reports_root, extra=extra)
    ProgrammingBench(config, run, progress).run()
    return render(run.run_dir)


def _lab_spec(mode: str, name: str) -> LabSpec:
    data = yaml.safe_load(LOCAL_SPEC.read_text()) if LOCAL_SPEC.exists() else None
    if data is None:
        raise SpecError("labs/local.yaml is missing; run from the kubelab checkout")
    data["name"] = name
    data["dataplane"]["proxy_mode"] = mode
    return parse_spec(data, f"bench-{mode}")


def run_bench(
    kind: str,
    modes: list[str],
    reports_root: Path,
    progress: Progress,
    seconds: float = 10,
    users: int = 20,
    trials: int = 5,
) -> Path:
    """`bench load` and `bench failover`: each mode on the default lab."""
    spec = _lab_spec(modes[0], f"klb{kind[:4]}")
    extra = {
        "bench": {
            "kind": kind,
            "modes": modes,
            "seconds": seconds,
            "users": users,
            "trials": trials,
        }
    }
    run = open_run(f"bench-{kind}", spec, "labs/local.yaml", reports_root, extra=extra)
    for mode in modes:
        lab = Lab(_lab_spec(mode, f"klb{kind[:4]}"))
        try:
            lab.check()
        except EnvironmentMissing as exc:
            run.use(replace(run.writer.context, proxy_mode=mode))
            run.writer.add_rows(
                [ResultRow(f"bench_{kind}", mode, "verdict", 0.0, "", Verdict.SKIP, str(exc))]
            )
            continue
        if kind == "load":
            run_load(lab, run, seconds, users, progress)
        else:
            run_failover(lab, run, trials, progress)
    return render(run.run_dir)


def supported_modes() -> list[str]:
    modes = ["iptables", "nftables"]
    if os.path.exists("/proc/net/ip_vs"):
        modes.append("ipvs")
    return modes
