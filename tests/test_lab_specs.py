"""Every lab spec shipped in labs/ is valid."""

from __future__ import annotations

from pathlib import Path

import pytest

from conftest import ROOT
from kubelab.spec import load_spec

# every lab spec; matrices (labs/matrix*.yaml) are lab generators, tested on their own
LABS = sorted(p for p in (ROOT / "labs").glob("*.yaml") if not p.stem.startswith("matrix"))


@pytest.mark.parametrize("path", LABS, ids=lambda p: p.stem)
def test_shipped_lab_specs_load(path: Path) -> None:
    spec = load_spec(path)
    assert spec.nodes and spec.services


def test_the_vxlan_lab_has_services_with_1_3_and_7_endpoints() -> None:
    spec = load_spec(ROOT / "labs" / "local-vxlan.yaml")
    assert len(spec.nodes) == 4
    assert spec.dataplane.pod_network == "vxlan" and spec.dataplane.proxy_mode == "nftables"
    counts = {w.name: w.replicas for w in spec.workloads if w.replicas is not None}
    assert counts == {"one": 1, "three": 3, "seven": 7}
