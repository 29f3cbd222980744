"""Drive traffic from the lab's client and return one sample row per probe.

`start_probes` runs Locust in the background (for failover: change the lab while traffic
flows); `run_probes` is start + wait. Either way the run is bounded by its plan and stops
by itself; `wait` kills it if it overruns its time limit.

Everything goes through the client's Runner: the worker program (locust_worker.py, one
file) and its plan are put on the client, it runs with the client's interpreter, and its
samples are fetched back, so the client may be a namespace here or a host over SSH.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path

import pandas as pd

from kubelab.errors import LabError
from kubelab.hosts import Runner
from kubelab.naming import member_dir

WORKER = Path(__file__).with_name("locust_worker.py")

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
    """A Locust run in progress on the client."""

    def __init__(self, client: Runner, plan: ProbePlan, lab_id: str) -> None:
        self.plan = plan
        self.client = client
        # under the lab's folder on the client, so `down` removes whatever a crash leaves
        self._dir = f"{member_dir(lab_id, client.name)}/traffic-{uuid.uuid4().hex[:12]}"
        self._samples = f"{self._dir}/samples.jsonl"
        worker = f"{self._dir}/locust_worker.py"
        client.put(worker, WORKER.read_text())
        body = asdict(plan) | {
            "host": f"http://{plan.host}:{plan.port}",
            "duration": plan.duration_s,
            "samples": self._samples,
        }
        client.put(f"{self._dir}/config.json", json.dumps(body))
        self._proc = client.start([client.python, worker, "--config", f"{self._dir}/config.json"])

    def wait(self) -> ProbeRun:
        if self._proc.wait(self.plan.duration_s + STARTUP_ALLOWANCE_S) is None:
            self._proc.kill()
        lines = []
        while (line := self._proc.readline(5.0)) is not None:
            lines.append(line)
        try:
            code = self._proc.wait(5.0)
            got = self.client.run(["cat", self._samples], check=False)
            if code != 0 or not got.ok or not lines:
                raise LabError(f"traffic generator failed (rc {code}): {self._proc.stderr_tail}")
            summary = json.loads(lines[-1])
            rows = [json.loads(line) for line in got.stdout.splitlines() if line]
        finally:
            self.client.run(["rm", "-rf", self._dir], check=False)
        frame = pd.DataFrame(rows, columns=SAMPLE_COLUMNS)
        return ProbeRun(
            self.plan,
            frame,
            float(summary["elapsed_s"]),
            int(summary["requests"]),
            float(summary["started"]),
        )


def start_probes(client: Runner, plan: ProbePlan, lab_id: str) -> RunningProbes:
    """Start Locust on lab `lab_id`'s client."""
    return RunningProbes(client, plan, lab_id)


def run_probes(client: Runner, plan: ProbePlan, lab_id: str) -> ProbeRun:
    return start_probes(client, plan, lab_id).wait()
