"""Run a benchmark into a run folder: provenance, results.parquet (rows as they come),
report.html."""

from __future__ import annotations

import os
import platform
from collections.abc import Callable
from pathlib import Path

import yaml

from kubelab.bench.failover import run_failover
from kubelab.bench.load import run_load
from kubelab.bench.scale import ScaleBench, ScaleConfig, bench_spec
from kubelab.errors import KubelabError, SpecError
from kubelab.lab import check_environment
from kubelab.report.html import render
from kubelab.results import ResultsWriter, RunContext, new_run_id, write_provenance
from kubelab.spec import LabSpec, parse_spec

Progress = Callable[[str], None]
LOCAL_SPEC = Path(__file__).resolve().parents[3] / "labs" / "local.yaml"


def bench_context(run_id: str, lab: str) -> RunContext:
    return RunContext(
        run_id=run_id,
        lab=lab,
        substrate="netns",
        dataplane="reference",
        proxy_mode="",
        cni="reference",
        cni_mode="host-gw",
        kernel=platform.release(),
    )


def run_scale(config: ScaleConfig, reports_root: Path, progress: Progress) -> Path:
    run_id = new_run_id("bench-scale")
    run_dir = reports_root / run_id
    context = bench_context(run_id, "bench-scale")
    writer = ResultsWriter(run_dir, context)
    write_provenance(
        run_dir,
        bench_spec(config.modes[0], config.endpoints),
        "bench scale",
        context,
        extra={"bench": {"kind": "scale", **vars(config)}},
    )
    ScaleBench(config, writer.add_rows, progress).run()
    return render(run_dir)


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
    run_id = new_run_id(f"bench-{kind}")
    run_dir = reports_root / run_id
    context = bench_context(run_id, f"bench-{kind}")
    writer = ResultsWriter(run_dir, context)
    spec = _lab_spec(modes[0], f"klb{kind[:4]}")
    write_provenance(
        run_dir,
        spec,
        "labs/local.yaml",
        context,
        extra={
            "bench": {
                "kind": kind,
                "modes": modes,
                "seconds": seconds,
                "users": users,
                "trials": trials,
            }
        },
    )
    for mode in modes:
        spec = _lab_spec(mode, f"klb{kind[:4]}")
        try:
            check_environment(spec)
        except KubelabError as exc:
            writer.add_rows(
                [
                    {
                        "scenario": f"bench_{kind}",
                        "case": f"{mode}",
                        "metric": "verdict",
                        "value": 0.0,
                        "unit": "",
                        "verdict": "skip",
                        "detail": str(exc),
                        "proxy_mode": mode,
                    }
                ]
            )
            continue
        if kind == "load":
            run_load(spec, seconds, users, writer.add_rows, progress)
        else:
            run_failover(spec, trials, writer.add_rows, progress)
    return render(run_dir)


def supported_modes() -> list[str]:
    modes = ["iptables", "nftables"]
    if os.path.exists("/proc/net/ip_vs"):
        modes.append("ipvs")
    return modes
