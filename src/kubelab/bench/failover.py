"""`kubelab bench failover`: repeated trials of pod kill, graceful delete and node failure
under load (a new connection per probe), giving distributions of failed probes, blackout
window and recovery time rather than one anecdote."""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np

from kubelab.checks import failover_timeline
from kubelab.lab import Lab
from kubelab.results import ResultRow, Verdict
from kubelab.runs import RunFolder
from kubelab.traffic.runner import ProbePlan, start_probes

ACTIONS = ("delete_pod", "kill_pod", "fail_node")
LOAD_S = 5.0


def _trial(lab: Lab, action: str, host: str, port: int) -> dict[str, float]:
    nodes = [n.name for n in lab.topology.nodes]
    lab.clear_time_wait(port)
    load = start_probes(
        lab.runner("client"),
        ProbePlan(host, port, max_probes=100_000, users=5, duration_s=LOAD_S),
        lab.spec.lab_id,
    )
    time.sleep(2.0)
    change_at = time.time()
    victim = lab.running_pods("echo", nodes[1])[0].name
    if action == "kill_pod":
        lab.kill_pod(victim)
    elif action == "delete_pod":
        lab.delete_pod(victim, grace_s=1.0, wait=False)
    else:
        lab.fail_node(nodes[-1])
    try:
        run = load.wait()
    finally:
        lab.settle()
        if action == "fail_node":
            lab.heal_node(nodes[-1])
            lab.settle()
        else:
            lab.scale("echo", 2 * len(nodes))
    outcome = failover_timeline(run.samples, change_at)
    return {
        "failed_probes": outcome.failed,
        "blackout_window": outcome.blackout_s,
        "recovery_time": outcome.recovery_s,
        "probes": outcome.probes,
    }


def run_failover(
    lab: Lab, run_folder: RunFolder, trials: int, progress: Callable[[str], None]
) -> None:
    mode = lab.spec.dataplane.proxy_mode
    lab.up()
    try:
        run_folder.attach(lab)
        host, port = lab.nodeport_target("default/echo", lab.topology.nodes[0].name)
        for action in ACTIONS:
            results = []
            for i in range(trials):
                progress(f"failover {mode}/{action}: trial {i + 1} of {trials}")
                results.append(_trial(lab, action, host, port))
            rows: list[ResultRow] = []
            for metric, unit in (
                ("failed_probes", "count"),
                ("blackout_window", "s"),
                ("recovery_time", "s"),
            ):
                values = np.array([r[metric] for r in results], dtype=float)
                detail = f"{trials} trials: " + ", ".join(f"{v:.3g}" for v in values)
                for stat, v in (
                    ("median", np.median(values)),
                    ("p90", np.percentile(values, 90)),
                    ("max", values.max()),
                ):
                    rows.append(
                        ResultRow(
                            "bench_failover",
                            f"{mode}/{action}",
                            f"{metric}_{stat}",
                            float(v),
                            unit,
                            Verdict.PASS,
                            detail,
                        )
                    )
            rows.append(ResultRow("bench_failover", f"{mode}/{action}", "verdict", 1.0))
            run_folder.writer.add_rows(rows)
    finally:
        lab.down()
