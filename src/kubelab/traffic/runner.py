"""Drive traffic from the lab's client and return one sample row per probe."""

from __future__ import annotations

import json
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


def run_probes(client: Runner, plan: ProbePlan, workdir: Path) -> ProbeRun:
    """Run Locust inside the client's namespace and collect its samples. Scratch files go
    under `workdir` (the lab's state dir), so `down` removes whatever a crash leaves."""
    with tempfile.TemporaryDirectory(prefix="traffic-", dir=workdir) as tmp:
        config = Path(tmp) / "config.json"
        samples = Path(tmp) / "samples.jsonl"
        body = asdict(plan) | {
            "host": f"http://{plan.host}:{plan.port}",
            "duration": plan.duration_s,
            "samples": str(samples),
        }
        config.write_text(json.dumps(body))
        result = client.run(
            [sys.executable, "-m", "kubelab.traffic.locust_worker", "--config", str(config)],
            timeout=plan.duration_s + STARTUP_ALLOWANCE_S,
            check=False,
        )
        if not result.ok or not samples.exists():
            tail = (result.stderr or result.stdout).strip().splitlines()[-3:]
            raise LabError(f"traffic generator failed (rc {result.rc}): {' | '.join(tail)}")
        summary = json.loads(result.stdout.strip().splitlines()[-1])
        rows = [json.loads(line) for line in samples.read_text().splitlines() if line]
    frame = pd.DataFrame(rows, columns=SAMPLE_COLUMNS)
    return ProbeRun(plan, frame, float(summary["elapsed_s"]), int(summary["requests"]))
