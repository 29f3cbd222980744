"""Shared helpers. Tests that need root say so with @pytest.mark.root and skip without it."""

from __future__ import annotations

import copy
import os
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from kubelab.lab import Lab
from kubelab.spec import LabSpec, parse_spec
from kubelab.substrates.vagrant import VM_ROOT

ROOT = Path(__file__).resolve().parent.parent
DATA = Path(__file__).resolve().parent / "data"
LOCAL_SPEC = ROOT / "labs" / "local.yaml"
TEST_LAB = "kltest"  # never collides with a lab a person is running from labs/


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--run-vm", action="store_true", help="run the VM-lab tests (tox -e vm: ~15 min)"
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if not config.getoption("--run-vm"):
        skip_vm = pytest.mark.skip(reason="a VM lab (minutes under emulation): tox -e vm runs it")
        for item in items:
            if "vm" in item.keywords:
                item.add_marker(skip_vm)
    if os.geteuid() == 0:
        return
    skip = pytest.mark.skip(reason="needs root: network namespaces, iptables, sshd")
    for item in items:
        if "root" in item.keywords:
            item.add_marker(skip)


def local_spec_data(**changes: Any) -> dict[str, Any]:
    data = yaml.safe_load(LOCAL_SPEC.read_text())
    data = copy.deepcopy(data)
    data["name"] = TEST_LAB
    data.update(changes)
    return data


def test_spec(**changes: Any) -> LabSpec:
    return parse_spec(local_spec_data(**changes), "test")


test_spec.__test__ = False  # type: ignore[attr-defined]


def _run(argv: list[str]) -> str:
    return subprocess.run(argv, capture_output=True, text=True, check=False).stdout


def host_network_snapshot() -> dict[str, str]:
    """The host namespace's links, addresses, routes, rules and rulesets (IPv4 and IPv6),
    without what changes by itself: counters, address lifetimes, route expiry."""

    def save(tool: str) -> str:
        out = "\n".join(line for line in _run([tool]).splitlines() if not line.startswith("#"))
        return re.sub(r"\[\d+:\d+\]", "[]", out)

    def steady(text: str) -> str:
        text = re.sub(r"(valid|preferred)_lft \S+", r"\1_lft", text)
        return re.sub(r" expires \S+", "", text)

    return {
        "links": _run(["ip", "-o", "link", "show"]),
        "addresses": steady(_run(["ip", "-o", "addr", "show"])),
        "routes": steady(_run(["ip", "route", "show", "table", "all"])),
        "routes6": steady(_run(["ip", "-6", "route", "show", "table", "all"])),
        "rules": _run(["ip", "rule", "show"]),
        "rules6": _run(["ip", "-6", "rule", "show"]),
        "iptables": save("iptables-save"),
        "ip6tables": save("ip6tables-save"),
        "nft": re.sub(r"packets \d+ bytes \d+", "", _run(["nft", "list", "ruleset"])),
        "netns": _run(["ip", "netns", "list"]),
    }


def leftovers(lab_id: str) -> list[str]:
    """Anything of lab `lab_id` still present: namespaces, processes, state files."""
    found = [
        f"netns {n}" for n in _run(["ip", "netns", "list"]).split() if n.startswith(f"kl-{lab_id}-")
    ]
    for pid in os.listdir("/proc"):
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if f"/run/kubelab/{lab_id}" in cmd or f"--lab {lab_id} " in cmd:
            found.append(f"process {pid}: {cmd[:80]}")
    if Path(f"/run/kubelab/{lab_id}").exists():
        found.append(f"state dir /run/kubelab/{lab_id}")
    return found


VM_DAEMONS = ("qemu-system-x86", "libvirtd", "virtlogd", "virtlockd", "dnsmasq")
MACHINE_INDEX = Path.home() / ".vagrant.d" / "data" / "machine-index" / "index"


def vm_leftovers(lab_id: str) -> list[str]:
    """What a VM lab may leave: namespaces, state, libvirt folders, daemons, VMs that
    Vagrant still lists."""
    found = leftovers(lab_id)
    if (VM_ROOT / lab_id).exists():
        found.append(f"libvirt folder {VM_ROOT / lab_id}")
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            continue
        name, state = stat.split("(", 1)[1].rsplit(")", 1)[0], stat.rsplit(")", 1)[1].split()[0]
        if name in VM_DAEMONS and state != "Z":
            found.append(f"process {pid} {name}")
    if MACHINE_INDEX.exists() and f"/run/kubelab/{lab_id}/" in MACHINE_INDEX.read_text():
        found.append("Vagrant's machine index still lists the lab's VMs")
    return found


@pytest.fixture(scope="module")
def running_lab() -> Iterator[Lab]:
    """A real test lab for a whole module, always torn down."""
    lab = Lab(test_spec())
    lab.up()
    try:
        yield lab
    finally:
        lab.down()
