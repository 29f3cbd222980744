"""Lab lifecycle on the real kernel: down removes everything, up recovers from a crash."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import testinfra

from conftest import ROOT, host_network_snapshot, leftovers, test_spec
from kubelab.lab import Lab
from kubelab.run import run_scenarios
from kubelab.runs import open_run
from kubelab.traffic.runner import ProbePlan, run_probes

pytestmark = [pytest.mark.root, pytest.mark.lab]


def test_down_leaves_nothing_and_the_host_untouched() -> None:
    before = host_network_snapshot()
    lab = Lab(test_spec())
    lab.up()
    run = run_probes(
        lab.runner("client"), ProbePlan("192.168.56.11", 30080, max_probes=30), lab.spec.lab_id
    )
    assert run.samples["ok"].all()
    testinfra.get_host("ssh://node1", ssh_config=str(lab.ssh_config)).check_output("true")
    lab.down()
    assert leftovers("kltest") == []
    after = host_network_snapshot()
    for key in before:
        assert after[key] == before[key], f"host {key} changed"


def test_up_removes_what_a_crashed_run_left() -> None:
    crashed = Lab(test_spec())
    crashed.up()
    # a crash: no down; plus a stray process and namespace of the same lab
    subprocess.run(["ip", "netns", "add", "kl-kltest-stray"], check=True)
    stray = subprocess.Popen(["ip", "netns", "exec", "kl-kltest-node1", "sleep", "300"])
    try:
        lab = Lab(test_spec())
        lab.up()
        assert not Path(f"/proc/{stray.pid}").exists(), "the stray process survived up"
        listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
        assert "kl-kltest-stray" not in listed
        run = run_probes(
            lab.runner("client"), ProbePlan("192.168.56.12", 30080, max_probes=30), lab.spec.lab_id
        )
        assert run.samples["ok"].all()
    finally:
        stray.kill()
        Lab(test_spec()).down()
        crashed.dataplane.down()  # reap the servers the second up killed
    assert leftovers("kltest") == []


def test_keys_are_private_to_the_lab_and_never_reach_a_run_folder(tmp_path: Path) -> None:
    lab = Lab(test_spec())
    lab.up()
    try:
        keys = [lab.state_dir / "id_ed25519", lab.state_dir / "ssh_host_ed25519_key"]
        assert all(key.stat().st_mode & 0o777 == 0o600 for key in keys)
        secrets = [line for key in keys for line in key.read_text().splitlines()[1:-1]]
        run = open_run("secrets", lab.spec, "test", run_dir=tmp_path / "run")
        run.attach(lab)
        run_scenarios(lab, run.writer, [str(ROOT / "scenarios" / "test_hairpin.py")], ROOT)
    finally:
        lab.down()
    assert not any(key.exists() for key in keys)
    written = [p for p in (tmp_path / "run").rglob("*") if p.is_file()]
    assert written, "the run wrote nothing: the check below would prove nothing"
    for path in written:
        text = path.read_bytes().decode(errors="replace")
        assert "PRIVATE KEY" not in text, path
        assert not any(secret in text for secret in secrets), path
