"""`kubelab run --matrix`: each lab of a matrix runs for real, one after another, into one
comparison report; a combination the spec refuses, and one this machine cannot run, are
listed with their reasons instead of stopping the rest."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import yaml

from conftest import ROOT, leftovers
from helpers import QUICK, kubelab

pytestmark = [pytest.mark.root, pytest.mark.lab]
IPVS_HERE = Path("/proc/net/ip_vs").exists()


def test_a_matrix_runs_every_lab_it_can_into_one_comparison(tmp_path: Path) -> None:
    matrix = tmp_path / "matrix.yaml"
    matrix.write_text(
        yaml.safe_dump(
            {
                "name": "tm",
                "base": str(ROOT / "labs" / "local.yaml"),
                "axes": {"proxy_mode": ["iptables", "ipvs"], "pod_network": ["vxlan", "geneve"]},
            },
            sort_keys=False,
        )
    )
    reports = tmp_path / "reports"
    proc = kubelab(
        "run", "--matrix", str(matrix), "--scenarios", str(ROOT / "scenarios"),
        "--reports", str(reports), "-k", QUICK, timeout=900,
    )  # fmt: skip
    report = Path(proc.stdout.strip().splitlines()[-1])
    assert report.name == "compare.html", proc.stdout[-2000:] + proc.stderr[-2000:]
    cells = {c["lab"]: c for c in json.loads((report.parent / "matrix.json").read_text())["cells"]}
    assert set(cells) == {"tmiptvxl", "tmiptgen", "tmipvvxl", "tmipvgen"}
    assert cells["tmiptvxl"]["status"] == "ran" and cells["tmiptvxl"]["exit_code"] == 0
    for refused in ("tmiptgen", "tmipvgen"):
        assert cells[refused]["status"] == "refused"
        assert "pod_network: 'geneve' is not supported" in cells[refused]["reason"]
    ipvs = cells["tmipvvxl"]
    if IPVS_HERE:
        assert ipvs["status"] == "ran"
    else:
        assert ipvs["status"] == "not run" and "ip_vs" in ipvs["reason"]
        assert proc.returncode == 1  # a lab of the matrix could not run here
    ran = [Path(c["run_dir"]) for c in cells.values() if c["status"] == "ran"]
    results = pd.concat(pd.read_parquet(d / "results.parquet") for d in ran)
    assert set(results["lab"]) == {c for c, v in cells.items() if v["status"] == "ran"}
    assert set(results["scenario"]) == {"source_ip"}
    html = report.read_text()
    assert "Verdict matrix" in html and "tmiptvxl" in html
    assert "Labs not run" in html and "tmiptgen" in html and "refused" in html
    for lab in cells:
        assert leftovers(lab) == []
