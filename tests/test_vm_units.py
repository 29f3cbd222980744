"""The VM lab's parsers and planners, on real formats: `vagrant ssh-config` as Vagrant
2.3.4 printed it for a kubelab lab, apt's deb822 sources, and IPVS table changes."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import DATA, ROOT, local_spec_data, vm_leftovers
from kubelab.dataplanes.reference.proxier.ipvs import ipvs_changes
from kubelab.errors import EnvironmentMissing
from kubelab.lab import Lab
from kubelab.spec import parse_spec
from kubelab.vm import box
from kubelab.vm.vagrant_cli import parse_ssh_config


def test_vagrant_ssh_config_gives_each_machine_its_address_user_and_key() -> None:
    entries = parse_ssh_config((DATA / "vagrant-ssh-config.txt").read_text())
    assert sorted(entries) == ["node1", "node2"]
    node1 = entries["node1"]
    assert (node1.hostname, node1.user, node1.port) == ("192.168.121.86", "vagrant", 22)
    assert node1.identity.endswith("/machines/node1/libvirt/private_key")


def test_the_mirror_comes_from_apt_sources_in_either_format(tmp_path: Path) -> None:
    # the deb822 layout Debian 12 images ship, security suite first
    deb822 = (
        "Types: deb\nURIs: http://mirror.example/debian-security\n"
        "Suites: bookworm-security\nComponents: main\n\n"
        "Types: deb\nURIs: http://mirror.example/debian\n"
        "Suites: bookworm bookworm-updates\nComponents: main\n"
    )
    (tmp_path / "debian.sources").write_text(deb822)
    assert box.debian_mirror([tmp_path / "debian.sources"]) == "http://mirror.example/debian"
    (tmp_path / "old.list").write_text("deb [arch=amd64] http://old.example/debian bookworm main\n")
    assert box.debian_mirror([tmp_path / "old.list"]) == "http://old.example/debian"
    with pytest.raises(EnvironmentMissing, match="--mirror"):
        box.debian_mirror([tmp_path / "missing.list"])


def test_the_box_hash_follows_its_packages_and_names_a_vagrant_version() -> None:
    assert box.box_hash() == box.box_hash()
    assert box.box_hash((*box.BOX_PACKAGES, "tcpdump")) != box.box_hash()
    version = box.box_version(box.box_hash())
    assert [part.isdigit() for part in version.split(".")] == [True, True, True]


def test_ipvs_changes_touch_only_what_differs() -> None:
    before = (
        "-A -t 10.96.0.10:80 -s rr\n"
        "-a -t 10.96.0.10:80 -r 10.244.1.2:8080 -m -w 1\n"
        "-a -t 10.96.0.10:80 -r 10.244.2.2:8080 -m -w 1\n"
        "-A -t 10.96.0.11:80 -s rr\n"
    )
    after = (
        "-A -t 10.96.0.10:80 -s rr -p 10800\n"
        "-a -t 10.96.0.10:80 -r 10.244.2.2:8080 -m -w 1\n"
        "-a -t 10.96.0.10:80 -r 10.244.2.3:8080 -m -w 1\n"
        "-A -u 10.96.0.12:53 -s rr\n"
    )
    assert ipvs_changes(before, after).splitlines() == [
        "-d -t 10.96.0.10:80 -r 10.244.1.2:8080",
        "-D -t 10.96.0.11:80",
        "-E -t 10.96.0.10:80 -s rr -p 10800",
        "-A -u 10.96.0.12:53 -s rr",
        "-a -t 10.96.0.10:80 -r 10.244.2.3:8080 -m -w 1",
    ]
    assert ipvs_changes(after, after) == ""


def test_a_management_network_over_the_node_network_is_refused_in_one_line() -> None:
    data = local_spec_data(name="klvmbad")
    data["substrate"] = {"kind": "vagrant", "management_cidr": "192.168.56.0/25"}
    data["nodes"] = data["nodes"][:2]
    with pytest.raises(EnvironmentMissing) as caught:
        Lab(parse_spec(data, "test")).check()
    assert str(caught.value) == (
        "substrate.management_cidr: 192.168.56.0/25 overlaps network.node_cidr; "
        "give the management network another range"
    )
    assert caught.value.exit_code == 2


@pytest.mark.root
def test_a_vm_lab_without_vagrant_stops_in_one_line_and_builds_nothing(tmp_path: Path) -> None:
    empty = tmp_path / "bin"
    empty.mkdir()
    proc = subprocess.run(
        [sys.executable, "-m", "kubelab.cli", "up", str(ROOT / "labs" / "vm-ipvs.yaml")],
        capture_output=True, text=True, cwd=ROOT, timeout=120, check=False,
        env={**os.environ, "PATH": str(empty)},
    )  # fmt: skip
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "missing tools; install the Debian packages" in lines[0], lines
    assert "vagrant" in lines[0] and "libvirt-daemon-system" in lines[0]
    assert vm_leftovers("vmipvs") == []


def test_a_client_named_like_the_vm_namespace_is_refused() -> None:
    data = local_spec_data(name="klvmbad", client={"name": "vms"})
    data["substrate"] = {"kind": "vagrant"}
    refused = r"^client\.name: 'vms' names the VM lab's own namespace"
    with pytest.raises(EnvironmentMissing, match=refused):
        Lab(parse_spec(data, "test")).check()
