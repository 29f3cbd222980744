"""The scenario suite is order-independent: the 4-node VXLAN lab, every scenario module in
a seeded shuffled order, passes as it does in the usual order. (A Local health-check case
once failed only after the failover cases had left one node fuller than the others.)"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
import yaml

from conftest import ROOT, TEST_LAB
from helpers import kubelab

pytestmark = [pytest.mark.root, pytest.mark.lab]
SEED = 20261201


def test_the_suite_passes_in_a_shuffled_order(tmp_path: Path) -> None:
    data = yaml.safe_load((ROOT / "labs" / "local-vxlan.yaml").read_text())
    data["name"] = TEST_LAB
    spec = tmp_path / "vxlan.yaml"
    spec.write_text(yaml.safe_dump(data))
    reports = tmp_path / "reports"
    run = kubelab(
        "run", str(spec), "--reports", str(reports), "--", f"--scenario-order-seed={SEED}",
        timeout=900,
    )  # fmt: skip
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-2000:]
    results = pd.read_parquet(next(reports.glob("*/results.parquet")))
    order = list(dict.fromkeys(results[results["metric"] == "verdict"]["scenario"]))
    assert order != sorted(order), f"seed {SEED} left the usual order: {order}"
