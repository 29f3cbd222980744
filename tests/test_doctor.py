"""`kubelab doctor`: the machine's findings, and the lab's own checks deciding the exit."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest

from conftest import ROOT
from helpers import kubelab
from kubelab.doctor import capabilities, privileges

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


def _status_of(argv: list[str]) -> str:
    """/proc/<pid>/status of a real process started with `argv` (then stopped)."""
    proc = subprocess.Popen([*argv, "sleep", "30"])
    try:
        for _ in range(100):
            status = Path(f"/proc/{proc.pid}/status").read_text()
            if "sleep" in status.splitlines()[0]:
                return status
            time.sleep(0.02)
        raise AssertionError("the process never became sleep")
    finally:
        proc.kill()
        proc.wait()


def test_privileges_root_or_the_capabilities_the_lab_uses() -> None:
    assert privileges().ok and privileges().detail == "running as root"
    nobody = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
    plain = privileges(_status_of(nobody))
    assert not plain.ok and "uid 65534 with no capabilities" in plain.detail
    assert "CAP_NET_ADMIN" in plain.fix
    caps = "+net_admin,+net_raw,+sys_admin"
    granted = _status_of([*nobody, f"--inh-caps={caps}", f"--ambient-caps={caps}"])
    assert capabilities(granted) == {"CAP_NET_ADMIN", "CAP_NET_RAW", "CAP_SYS_ADMIN"}
    assert privileges(granted).ok
    partial = _status_of([*nobody, "--inh-caps=+net_admin", "--ambient-caps=+net_admin"])
    found = privileges(partial)
    assert not found.ok and "lacks CAP_NET_RAW, CAP_SYS_ADMIN" in found.detail
