"""The Vagrantfile validates for both providers, from the harness's JSON and from a spec
path; the playbooks pass ansible-lint's production profile and Ansible's syntax check.
These need vagrant and ansible-lint installed (CI installs both), and start no VM."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT

needs_vagrant = pytest.mark.skipif(
    shutil.which("vagrant") is None, reason="vagrant is not installed (apt-get install vagrant)"
)
VM_SPEC = ROOT / "labs" / "vm-ipvs.yaml"
# every lab of labs/ whose nodes are VMs, the Kubernetes ones included
VM_LABS = sorted(p for p in (ROOT / "labs").glob("vm-*.yaml"))


def _lab_json(tmp_path: Path, spec: Path = VM_SPEC) -> Path:
    out = subprocess.run(
        [sys.executable, "-m", "kubelab.cli", "vagrant-json", str(spec)],
        capture_output=True, text=True, check=True, cwd=ROOT,
    ).stdout  # fmt: skip
    path = tmp_path / "lab.json"
    path.write_text(out)
    return path


def _validate(tmp_path: Path, provider: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["vagrant", "validate"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={
            **os.environ,
            "VAGRANT_DOTFILE_PATH": str(tmp_path / "dot"),
            "VAGRANT_DEFAULT_PROVIDER": provider,
            "VAGRANT_CHECKPOINT_DISABLE": "1",
            **env,
        },
        timeout=120,
        check=False,
    )


@needs_vagrant
def test_the_vagrantfile_makes_one_vm_per_node_from_the_spec(tmp_path: Path) -> None:
    lab = json.loads(_lab_json(tmp_path).read_text())
    assert [m["name"] for m in lab["machines"]] == ["node1", "node2"]
    assert [m["ip"] for m in lab["machines"]] == ["192.168.56.11", "192.168.56.12"]
    assert {(m["cpus"], m["memory"]) for m in lab["machines"]} == {(1, 1024)}
    assert lab["box"] == "kubelab/bookworm" and lab["box_version"].startswith("1.0.")


@needs_vagrant
@pytest.mark.parametrize("spec", VM_LABS, ids=lambda p: p.stem)
def test_vagrant_validate_passes_for_libvirt(tmp_path: Path, spec: Path) -> None:
    result = _validate(tmp_path, "libvirt", KUBELAB_LAB_JSON=str(_lab_json(tmp_path, spec)))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Vagrantfile validated successfully" in result.stdout


@needs_vagrant
@pytest.mark.parametrize("spec", VM_LABS, ids=lambda p: p.stem)
def test_vagrant_validate_passes_for_virtualbox(tmp_path: Path, spec: Path) -> None:
    # Vagrant checks the VirtualBox block only when that provider is usable: a stub
    # VBoxManage that prints a version makes it so without VirtualBox installed
    stub = tmp_path / "bin" / "VBoxManage"
    stub.parent.mkdir()
    stub.write_text("#!/bin/sh\necho 7.0.14r161095\n")
    stub.chmod(0o755)
    result = _validate(
        tmp_path,
        "virtualbox",
        KUBELAB_LAB_JSON=str(_lab_json(tmp_path, spec)),
        PATH=f"{stub.parent}:{os.environ['PATH']}",
    )
    assert result.returncode == 0, result.stdout + result.stderr


@needs_vagrant
def test_the_vagrantfile_reads_a_spec_path_too(tmp_path: Path) -> None:
    bin_dir = str(Path(sys.executable).parent)  # where `kubelab` is installed
    result = _validate(
        tmp_path, "libvirt", KUBELAB_LAB=str(VM_SPEC), PATH=f"{bin_dir}:{os.environ['PATH']}"
    )
    assert result.returncode == 0, result.stdout + result.stderr


@needs_vagrant
def test_the_vagrantfile_says_what_is_missing(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("KUBELAB_LAB")}
    env["VAGRANT_DOTFILE_PATH"] = str(tmp_path / "dot")  # nothing written into the checkout
    result = subprocess.run(
        ["vagrant", "validate"], capture_output=True, text=True, cwd=ROOT, env=env, check=False
    )
    assert result.returncode != 0
    assert "set KUBELAB_LAB" in result.stdout + result.stderr
    assert not (ROOT / ".vagrant").exists()


def test_the_playbooks_pass_ansible_lint_production() -> None:
    lint = Path(sys.executable).parent / "ansible-lint"
    if not lint.exists():
        pytest.skip("ansible-lint is not installed here (it is in the dev extra)")
    result = subprocess.run(
        [str(lint), "--profile", "production", "--nocolor", "playbooks/"],
        capture_output=True, text=True, cwd=ROOT, timeout=300, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]


@pytest.mark.parametrize("playbook", ["site.yml", "collect.yml", "kubernetes.yml"])
def test_the_playbooks_pass_ansibles_syntax_check(playbook: str, tmp_path: Path) -> None:
    inventory = tmp_path / "inventory.yml"
    inventory.write_text("all:\n  children:\n    nodes:\n      hosts: {n1: {}}\n    client: {}\n")
    result = subprocess.run(
        [str(Path(sys.executable).parent / "ansible-playbook"), "--syntax-check",
         "-i", str(inventory), "-e", "kubernetes_control_plane=n1", f"playbooks/{playbook}"],
        capture_output=True, text=True, cwd=ROOT, timeout=120, check=False,
        env={**os.environ, "ANSIBLE_ROLES_PATH": str(ROOT / "playbooks" / "roles")},
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr


def test_down_drops_a_killed_labs_machines_from_vagrants_index(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A run killed during `vagrant up` leaves its machines in Vagrant's global index;
    `down` removes those (and only those), as Vagrant's own index file holds them."""
    from kubelab.substrates.vagrant import forget_machines

    index = tmp_path / "data" / "machine-index" / "index"
    index.parent.mkdir(parents=True)
    machine = {"name": "node1", "provider": "libvirt", "state": "running",
               "vagrantfile_path": "/work/main", "extra_data": {}}  # fmt: skip
    index.write_text(json.dumps({"version": 1, "machines": {
        "a1": {**machine, "local_data_path": "/run/kubelab/vmk8s/vagrant"},
        "b2": {**machine, "local_data_path": "/run/kubelab/vmk8s2/vagrant"},
        "c3": {**machine, "local_data_path": "/home/someone/project/.vagrant"},
    }}))  # fmt: skip
    monkeypatch.setenv("VAGRANT_HOME", str(tmp_path))
    forget_machines("/run/kubelab/vmk8s/")
    doc = json.loads(index.read_text())
    assert sorted(doc["machines"]) == ["b2", "c3"] and doc["version"] == 1
