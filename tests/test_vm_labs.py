"""VM labs for real (tox -e vm): VMs from the Vagrantfile, site.yml through ansible-runner,
the reference dataplane on the VMs' own kernels, IPVS included, and nothing left behind.

Slow by nature (QEMU's software emulation here: minutes per lab), so they run only with
--run-vm. Each test compares the host namespace before and after: the VM lab must not
touch it, while it runs or after."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from conftest import ROOT, host_network_snapshot, vm_leftovers
from helpers import (
    Point,
    interrupt_at,
    interruption_points,
    kubelab,
    lab_traces,
    private_tmp,
    scratch_entries,
)
from kubelab.lab import Lab
from kubelab.run import run_lab
from kubelab.spec import load_spec
from kubelab.traffic.runner import ProbePlan, run_probes
from kubelab.vm.box import INSECURE_KEY_GLOB
from kubelab.vm.wheelhouse import CLIENT_PYTHON

pytestmark = [pytest.mark.root, pytest.mark.vm]

IPVS_SPEC = ROOT / "labs" / "vm-ipvs.yaml"
NFT_SPEC = ROOT / "labs" / "vm-nftables.yaml"
# Ctrl-C and SIGTERM somewhere in a VM run's first 2 minutes: libvirt's daemons, networks
# and volumes, VM boot (QEMU), the start of site.yml; a stopped play is tested on its own in
# test_ansible_play.py. SIGKILL: the next test.
VM_POINTS = interruption_points(20261201, 2, (signal.SIGINT, signal.SIGTERM), (20.0, 120.0))


def _qemu_running() -> bool:
    return (
        subprocess.run(["pgrep", "-f", "qemu-system-x86_64"], capture_output=True).returncode == 0
    )


@pytest.mark.parametrize("point", VM_POINTS, ids=lambda p: p.id)
def test_a_vm_run_stopped_here_leaves_nothing(
    point: Point, tmp_path: Path, record_property: pytest.RecordProperty
) -> None:
    before, scratch = host_network_snapshot(), scratch_entries()
    log = tmp_path / "run.log"
    proc = subprocess.Popen(
        [sys.executable, "-m", "kubelab.cli", "run", str(IPVS_SPEC), "--reports",
         str(tmp_path / "reports"), "-k", "source_ip and policy"],
        cwd=ROOT, stdout=log.open("wb"), stderr=subprocess.STDOUT, start_new_session=True,
        env=private_tmp(tmp_path / "tmp"),
    )  # fmt: skip
    interrupt_at(proc, point, log)
    steps = [line for line in log.read_text().splitlines() if line.startswith("> ")]
    record_property("interrupted during", steps[-1] if steps else "start")
    code = proc.wait(timeout=900)
    output = log.read_text()[-3000:]
    assert code in ((1, 130) if point.sig == signal.SIGINT else (143,)), output
    assert lab_traces("vmipvs", vm=True) == [], output
    assert host_network_snapshot() == before
    assert scratch_entries() - scratch == set()
    assert list((tmp_path / "tmp").iterdir()) == [], "temporary files were left"


def test_a_killed_up_is_cleaned_by_the_next_up_and_site_yml_is_idempotent() -> None:
    before = host_network_snapshot()
    # a run killed (SIGKILL: no cleanup of its own) while its VMs boot
    proc = subprocess.Popen(
        [sys.executable, "-m", "kubelab.cli", "up", str(NFT_SPEC)],
        cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    deadline = time.monotonic() + 600
    while not _qemu_running() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(1)
    assert proc.poll() is None, "kubelab up ended before its VMs started"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert vm_leftovers("vmnft"), "the killed run left nothing: the test would prove nothing"

    try:
        result = kubelab("up", str(NFT_SPEC), timeout=1200)
        assert result.returncode == 0, result.stderr[-3000:]
        state = Path("/run/kubelab/vmnft")
        # a second site.yml, as a person would run it, changes nothing
        recap = subprocess.run(
            [str(Path(sys.executable).parent / "ansible-playbook"),
             "-i", str(state / "inventory.yml"), "playbooks/site.yml"],
            capture_output=True, text=True, cwd=ROOT, timeout=900, check=False,
            stdin=subprocess.DEVNULL,  # as from a terminal: blocking (ansible checks)
            env={**os.environ, "ANSIBLE_ROLES_PATH": str(ROOT / "playbooks" / "roles"),
                 "ANSIBLE_NOCOLOR": "1"},
        )  # fmt: skip
        assert recap.returncode == 0, recap.stdout[-3000:] + recap.stderr[-3000:]
        lines = {line.split()[0]: line for line in recap.stdout.splitlines() if " changed=" in line}
        assert sorted(lines) == ["client", "node1", "node2"], lines
        assert all(" changed=0 " in line for line in lines.values()), lines
        # the client role ran too: facts, its folder, Locust (the unpack skips: `creates`)
        assert int(lines["client"].split("ok=")[1].split()[0]) >= 3, lines["client"]
        # the nodes run their own kernel; Locust, installed on the client VM by the client
        # role from the harness's wheelhouse, reaches every pod across the VMs
        lab = Lab(load_spec(NFT_SPEC))  # the lab is up: this only reaches its members
        node_kernel = lab.runner("node1").run(["uname", "-r"]).stdout.strip()
        assert node_kernel and node_kernel != os.uname().release
        # Vagrant's well-known key was replaced by keys of the lab's own (0600); each VM
        # made its own SSH host key at first boot
        insecure = Path(sorted(Path("/").glob(INSECURE_KEY_GLOB.lstrip("/")))[-1]).read_text()
        host_keys = set()
        for member in ("node1", "node2", "client"):
            keys = lab.runner(member).run(["cat", "/home/vagrant/.ssh/authorized_keys"]).stdout
            assert keys.strip() and insecure.split()[1] not in keys
            host_keys.add(
                lab.runner(member).run(["cat", "/etc/ssh/ssh_host_ed25519_key.pub"]).stdout
            )
        assert len(host_keys) == 3
        identities = [
            Path(line.split()[1])
            for line in (state / "ssh_config").read_text().splitlines()
            if line.strip().startswith("IdentityFile")
        ]
        assert len(identities) == 3 and all(p.stat().st_mode & 0o777 == 0o600 for p in identities)
        client = lab.runner("client")
        assert client.python == CLIENT_PYTHON
        host, port = "192.168.57.11", 30080
        run = run_probes(client, ProbePlan(host, port, max_probes=200, users=4), "vmnft")
        assert len(run.samples) == 200 and bool(run.samples["ok"].all())
        assert set(run.samples["pod"]) == {
            "echo-node1-0", "echo-node1-1", "echo-node2-0", "echo-node2-1"
        }  # fmt: skip
        assert "192.168.57.254" not in set(run.samples["client_ip"])  # Cluster policy: SNAT
        # the broken-Service checklist works on VMs too: a healthy Service passes it all
        diagnosis = kubelab("diagnose", str(NFT_SPEC), "echo", "--format", "json", timeout=300)
        assert diagnosis.returncode == 0, diagnosis.stdout[-3000:] + diagnosis.stderr
        during = host_network_snapshot()
        assert {k: v for k, v in during.items() if k != "netns"} == {
            k: v for k, v in before.items() if k != "netns"
        }
    finally:
        down = kubelab("down", str(NFT_SPEC), timeout=600)
    assert down.returncode == 0, down.stderr[-2000:]
    assert vm_leftovers("vmnft") == []
    assert host_network_snapshot() == before


def test_the_scenario_suite_passes_on_ipvs_vms(tmp_path: Path) -> None:
    before = host_network_snapshot()
    # the failover cases are left out here: under QEMU's software emulation they take
    # most of the suite's time and can miss their recovery window on a loaded machine
    # (`kubelab run labs/vm-ipvs.yaml` runs them)
    outcome = run_lab(IPVS_SPEC, reports_root=tmp_path, pytest_args=["-k", "not failover"])
    assert vm_leftovers("vmipvs") == []
    assert host_network_snapshot() == before
    assert outcome.exit_code == 0, f"scenarios failed; see {outcome.run_dir}/junit.xml"
    assert outcome.report is not None and outcome.report.exists()

    rows = pd.read_parquet(outcome.run_dir / "results.parquet")
    assert set(rows["proxy_mode"]) == {"ipvs"} and set(rows["substrate"]) == {"vagrant"}
    kernels = set(rows["kernel"])
    assert kernels and "" not in kernels and os.uname().release not in kernels  # the VMs' own
    # the IPVS cases ran and passed: virtual servers audited, affinity, spread, no endpoints
    passed = rows[rows["verdict"] == "pass"]
    for scenario in ("rules", "session_affinity", "clusterip", "no_endpoints", "nodeport"):
        assert scenario in set(passed["scenario"]), f"no passing {scenario} case on IPVS"

    provenance = json.loads((outcome.run_dir / "provenance.json").read_text())
    assert provenance["box"] == "kubelab/bookworm" and len(provenance["box_hash"]) == 64
    for node in ("node1", "node2"):
        collected = outcome.run_dir / "nodes" / node
        assert "-A -t " in (collected / "ipvsadm-S-n.txt").read_text()
        assert "ip_vs " in (collected / "modules.txt").read_text()
        assert json.loads((collected / "nft-ruleset.json").read_text())["nftables"]
    assert (outcome.run_dir / "ansible" / "site" / "artifacts").is_dir()
