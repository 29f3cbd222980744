"""The whole scenario suite on a real cluster of yours, when you ask for it.

Opt-in by one variable, so that a KUBECONFIG set for other work never sends a test's
traffic to a cluster by accident:

    KUBELAB_LIVE_SPEC=/path/to/spec.yaml

a lab spec with `substrate: {kind: existing, inventory: ...}` (the nodes and an external
client over SSH) and `dataplane: {kind: kubernetes, kubeconfig: ...}` (README, "An
existing cluster"). Without it the test skips, saying so; with it, it runs `kubelab run`
of that spec and expects a report of every case, then `down` to leave none of the lab's
objects. No cluster is reachable from the machines kubelab's CI runs on.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import yaml

from helpers import kubelab

SPEC = os.environ.get("KUBELAB_LIVE_SPEC")

pytestmark = pytest.mark.skipif(
    not SPEC,
    reason="no live cluster asked for: set KUBELAB_LIVE_SPEC to an existing-cluster spec "
    "(README, 'An existing cluster') to run the suite on it",
)


def test_the_suite_runs_on_a_real_cluster(tmp_path: Path) -> None:
    assert SPEC
    data = yaml.safe_load(Path(SPEC).read_text())
    assert data["dataplane"]["kind"] == "kubernetes" and data["dataplane"].get("kubeconfig")
    reports = tmp_path / "reports"
    run = kubelab("run", SPEC, "--reports", str(reports), timeout=3600)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    (run_dir,) = reports.glob("*")
    assert json.loads((run_dir / "cases.json").read_text())["cases"], "no case ran"
    assert (run_dir / "report.html").exists()
    down = kubelab("down", SPEC)
    assert down.returncode == 0, down.stderr
