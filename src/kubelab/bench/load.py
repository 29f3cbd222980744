"""`kubelab bench load`: how many requests per second Locust drives through each proxy
mode, with keep-alive and with a new connection per probe, against wrk on the same target
in the same run as the ceiling. A generator that used most of a core was the bottleneck,
not the datapath, and is flagged."""

from __future__ import annotations

import re
import resource
import shutil
import time
from collections.abc import Callable

import pandas as pd

from kubelab.errors import LabError
from kubelab.lab import Lab
from kubelab.results import ResultRow, Verdict
from kubelab.runs import RunFolder
from kubelab.traffic.runner import ProbePlan, start_probes

CPU_BOUND = 0.9  # a generator using this share of one core or more was the bottleneck


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _wrk(
    lab: Lab, url: str, seconds: float, connections: int, close: bool
) -> tuple[float, float, float]:
    """(requests/s, p50 ms, CPU share) of wrk inside the client's namespace."""
    argv = ["wrk", "-t2", f"-c{connections}", f"-d{int(seconds)}s", "--latency", url]
    if close:
        argv[1:1] = ["-H", "Connection: close"]
    before = _children_cpu()
    result = lab.runner("client").run(argv, timeout=seconds + 30)
    cpu = (_children_cpu() - before) / seconds
    found = re.search(r"Requests/sec:\s+([\d.]+)", result.stdout)
    if found is None:
        raise LabError(f"wrk printed no Requests/sec: {result.stdout[-200:]}")
    rps = float(found.group(1))
    p50 = re.search(r"50%\s+([\d.]+)(us|ms|s)", result.stdout)
    scale = {"us": 0.001, "ms": 1.0, "s": 1000.0}
    latency = float(p50.group(1)) * scale[p50.group(2)] if p50 else float("nan")
    return rps, latency, cpu


def run_load(
    lab: Lab,
    run_folder: RunFolder,
    seconds: float,
    users: int,
    progress: Callable[[str], None],
    processes: int = 2,
) -> None:
    spec = lab.spec
    mode = spec.dataplane.proxy_mode
    lab.up()
    try:
        run_folder.attach(lab)
        host, port = lab.nodeport_target(
            spec.services[0].namespace + "/" + spec.services[0].name, lab.topology.nodes[0].name
        )
        lab.topology.require_own(host)  # Locust and wrk go only to the lab's own addresses
        for connection in ("keepalive", "new"):
            new = connection == "new"
            case = f"{mode}/{connection}"
            progress(
                f"load {case}: Locust, {processes} processes x {users // processes} "
                f"users, {seconds:.0f}s"
            )
            lab.clear_time_wait(port)
            before = _children_cpu()
            started = time.monotonic()
            plan = ProbePlan(
                host,
                port,
                max_probes=200_000,
                users=max(1, users // processes),
                duration_s=seconds,
                new_connection=new,
            )
            running = [
                start_probes(lab.runner("client"), plan, spec.lab_id) for _ in range(processes)
            ]
            runs = [r.wait() for r in running]
            wall = time.monotonic() - started
            locust_cpu = (_children_cpu() - before) / wall
            locust_rps = sum(r.requests / max(r.elapsed_s, 1e-9) for r in runs)
            run = runs[0]
            progress(f"load {case}: wrk, {users} connections, {seconds:.0f}s")
            lab.clear_time_wait(port)
            wrk_rps, wrk_p50, wrk_cpu = _wrk(
                lab, f"http://{host}:{port}/hostname", seconds, users, close=new
            )
            ratio = locust_rps / wrk_rps if wrk_rps else 0.0
            ok = pd.concat([r.samples["ok"] for r in runs])
            bound = (
                "Locust was CPU-bound (the generator, not the datapath, set the rate)"
                if locust_cpu >= CPU_BOUND * processes
                else ""
            )
            rows = [
                (
                    "locust_rps",
                    locust_rps,
                    "req/s",
                    f"{users} users, FastHttpUser, {processes} processes",
                ),
                ("wrk_rps", wrk_rps, "req/s", f"wrk -t2 -c{users}"),
                ("locust_to_wrk", ratio, "ratio", "goal >= 0.25"),
                ("locust_cpu", locust_cpu, "cores", bound),
                ("wrk_cpu", wrk_cpu, "cores", ""),
                (
                    "locust_p50",
                    float(run.samples["latency_ms"].median()) / 2,
                    "ms",
                    "per request (a probe is two)",
                ),
                ("wrk_p50", wrk_p50, "ms", ""),
                ("locust_failed_probes", float((~ok).sum()), "count", ""),
                ("generator_cpu_bound", float(bool(bound)), "flag", bound),
            ]
            run_folder.writer.add_rows(
                [ResultRow("bench_load", case, m, v, u, Verdict.PASS, d) for m, v, u, d in rows]
                + [ResultRow("bench_load", case, "verdict", 1.0, "", Verdict.PASS, bound)]
            )
    finally:
        lab.down()


def wrk_available() -> bool:
    return shutil.which("wrk") is not None
