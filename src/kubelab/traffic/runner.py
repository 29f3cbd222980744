"""Drive traffic from the lab's client and return one sample row per probe.

`start_probes` runs Locust in the background (for failover: change the lab while traffic
flows); `run_probes` is start + wait. Either way the run is bounded by its plan and stops
by itself; `wait` kills it if it overruns its time limit.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import pandas as pd

from kubelab.errors import LabError
from kubelab.hosts import Runner

SAMPLE_COLUMNS = ["t", "user", "ok", "pod", "client_ip", "client_port", "error", "latency_ms"]
STARTUP_ALLOWANCE_S = 30.0  # importing Locust and spawning users, on a slow machine


@dataclass(frozen=True)
class ProbePlan:
    """A bounded burst of probes against host:port."""

    host: str
    port: int
    max_probes: int = 300
    users: int = 10
    duration_s: float = 20.0
    new_connection: bool = True
    seed: int = 1

    def __post_init__(self) -> None:
        if not 0 < self.max_probes <= 200_000 or not 0 < self.users <= 500:
            raise LabError("probe plan out of bounds: 1..200000 probes, 1..500 users")
        if not 0 < self.duration_s <= 600:
            raise LabError("probe plan out of bounds: duration must be 0..600 s")


@dataclass(frozen=True)
class ProbeRun:
    plan: ProbePlan
    samples: pd.DataFrame
    elapsed_s: float
    requests: int
    started_at: float  # time.time() when the probes began (approximately)


class RunningProbes:
    """A Locust run in progress inside the client's namespace."""

    def __init__(self, client: Runner, plan: ProbePlan, workdir: Path) -> None:
        self.plan = plan
        self._tmp = tempfile.TemporaryDirectory(prefix="traffic-", dir=workdir)
        tmp = Path(self._tmp.name)
        self._samples = tmp / "samples.jsonl"
        config = tmp / "config.json"
        body = asdict(plan) | {
            "host": f"http://{plan.host}:{plan.port}",
            "duration": plan.duration_s,
            "samples": str(self._samples),
        }
        config.write_text(json.dumps(body))
        argv = [sys.executable, "-m", "kubelab.traffic.locust_worker", "--config", str(config)]
        self._proc = subprocess.Popen(
            client.wrap(argv), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )

    def wait(self) -> ProbeRun:
        try:
            out, err = self._proc.communicate(timeout=self.plan.duration_s + STARTUP_ALLOWANCE_S)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            out, err = self._proc.communicate()
        try:
            if self._proc.returncode != 0 or not self._samples.exists():
                tail = (err or out).strip().splitlines()[-3:]
                raise LabError(
                    f"traffic generator failed (rc {self._proc.returncode}): {' | '.join(tail)}"
                )
            summary = json.loads(out.strip().splitlines()[-1])
            rows = [json.loads(line) for line in self._samples.read_text().splitlines() if line]
        finally:
            self._tmp.cleanup()
        frame = pd.DataFrame(rows, columns=SAMPLE_COLUMNS)
        return ProbeRun(
            self.plan,
            frame,
            float(summary["elapsed_s"]),
            int(summary["requests"]),
            float(summary["started"]),
        )


def start_probes(client: Runner, plan: ProbePlan, workdir: Path) -> RunningProbes:
    """Start Locust inside the client's namespace. Scratch files go under `workdir` (the
    lab's state dir), so `down` removes whatever a crash leaves."""
    return RunningProbes(client, plan, workdir)


def run_probes(client: Runner, plan: ProbePlan, workdir: Path) -> ProbeRun:
    return start_probes(client, plan, workdir).wait()
