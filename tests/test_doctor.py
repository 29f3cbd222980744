"""`kubelab doctor`: the machine's findings, and the lab's own checks deciding the exit."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from conftest import ROOT
from helpers import kubelab

pytestmark = [pytest.mark.root]


def test_the_embedded_lab_is_ready_and_ipvs_is_named_when_missing() -> None:
    proc = kubelab("doctor", str(ROOT / "labs" / "local.yaml"))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for feature in ("kernel veth", "kernel bridge", "kernel vxlan", "kernel nf_tables",
                    "kernel xt_statistic", "kernel xt_recent", "kernel xt_comment"):  # fmt: skip
        line = next(x for x in proc.stdout.splitlines() if feature in x)
        assert "ok" in line and "works" in line, line
    assert "lab local can run" in proc.stderr
    if not Path("/proc/net/ip_vs").exists():
        line = next(x for x in proc.stdout.splitlines() if "kernel ip_vs" in x)
        assert "missing" in line and "no /proc/net/ip_vs" in line, line


@pytest.mark.skipif(Path("/proc/net/ip_vs").exists(), reason="this kernel has ip_vs")
def test_an_ipvs_lab_cannot_run_here_and_says_why() -> None:
    proc = kubelab("doctor", str(ROOT / "labs" / "local-ipvs.yaml"))
    assert proc.returncode == 1
    assert "cannot run: node1, node2, node3: dataplane.proxy_mode ipvs needs" in proc.stderr


def test_doctor_leaves_no_namespace() -> None:
    kubelab("doctor")
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert "doctor" not in listed
