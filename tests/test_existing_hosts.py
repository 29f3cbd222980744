"""The `existing` substrate, proven over SSH alone on hosts kubelab did not create.

The test makes bare hosts itself: network namespaces on one bridge, each running nothing
but an sshd with a key of the test's own (reached through a ProxyCommand, so no address is
opened on this machine), and an Ansible inventory for them. kubelab gets only that
inventory: it builds the pod network, pods and proxier over SSH, runs the traffic worker
on the client host, runs the default scenario suite, and at `down` leaves each host as it
found it.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pytest
import yaml

from conftest import LOCAL_SPEC, ROOT
from helpers import kubelab

pytestmark = [pytest.mark.root, pytest.mark.lab]

HOST_PREFIX = "kh-bare-"  # the test's own hosts: not a kubelab lab prefix
SWITCH = f"{HOST_PREFIX}switch"
NETWORK = "192.168.77"
HOSTS = {"node1": 11, "node2": 12, "node3": 13, "outside": 254}  # outside: the client
LAB = "klssh"
SSHD = "/usr/sbin/sshd"


def sh(*argv: str, input: str | None = None) -> str:
    return subprocess.run(argv, input=input, capture_output=True, text=True, check=True).stdout


def on(host: str, *argv: str) -> str:
    return sh("nsenter", f"--net=/run/netns/{HOST_PREFIX}{host}", *argv)


@dataclass
class BareHosts:
    folder: Path
    inventory: Path

    def snapshot(self) -> dict[str, dict[str, str]]:
        """What each host has: links, addresses, routes, rules, forwarding, namespaces."""
        out = {}
        for host in HOSTS:
            out[host] = {
                "links": on(host, "ip", "-o", "link", "show"),
                "addresses": on(host, "ip", "-o", "addr", "show"),
                "routes": on(host, "ip", "route", "show", "table", "all"),
                "iptables": "\n".join(
                    line for line in on(host, "iptables-save").splitlines() if line[:1] != "#"
                ),
                "nft": on(host, "nft", "list", "ruleset"),
                "ip_forward": on(host, "sysctl", "-n", "net.ipv4.ip_forward"),
            }
        return out


def _make_hosts(folder: Path) -> None:
    sh("ip", "netns", "add", SWITCH)
    sh("ip", "-n", SWITCH, "link", "add", "br0", "type", "bridge")
    sh("ip", "-n", SWITCH, "link", "set", "br0", "up")
    for host, last in HOSTS.items():
        ns = f"{HOST_PREFIX}{host}"
        sh("ip", "netns", "add", ns)
        for scope in ("all", "default"):  # IPv4 only: no IPv6 autoconfiguration noise
            on(host, "sysctl", "-q", "-w", f"net.ipv6.conf.{scope}.disable_ipv6=1")
        # made inside the host namespace, the peer moved straight into the switch
        sh("ip", "-n", ns, "link", "add", "eth0", "type", "veth", "peer", host, "netns", SWITCH)
        sh("ip", "-n", ns, "addr", "add", f"{NETWORK}.{last}/24", "dev", "eth0")
        sh("ip", "-n", ns, "link", "set", "eth0", "up")
        sh("ip", "-n", ns, "link", "set", "lo", "up")
        sh("ip", "-n", SWITCH, "link", "set", host, "master", "br0", "up")
    for key in ("host_key", "user_key"):
        sh("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(folder / key))
    (folder / "authorized_keys").write_text((folder / "user_key.pub").read_text())
    (folder / "sshd_config").write_text(
        f"HostKey {folder}/host_key\nAuthorizedKeysFile {folder}/authorized_keys\n"
        "PermitRootLogin prohibit-password\nPasswordAuthentication no\nUsePAM no\n"
        "StrictModes no\nPidFile none\nLogLevel ERROR\n"
    )
    Path("/run/sshd").mkdir(exist_ok=True)


def _write_inventory(folder: Path, python: dict[str, str] | None = None) -> Path:
    lines = ["[nodes]"]
    for host, last in HOSTS.items():
        if host == "outside":
            lines += ["", "[client]"]
        proxy = f"nsenter --net=/run/netns/{HOST_PREFIX}{host} {SSHD} -i -f {folder}/sshd_config"
        interpreter = (python or {}).get(host, sys.executable)
        lines.append(
            f"{host} ansible_host={NETWORK}.{last} ansible_python_interpreter={interpreter} "
            f"ansible_ssh_common_args='-o ProxyCommand=\"{proxy}\"'"
        )
    lines += [
        "",
        "[all:vars]",
        "ansible_user=root",
        f"ansible_ssh_private_key_file={folder}/user_key",
    ]
    path = folder / "hosts.ini"
    path.write_text("\n".join(lines) + "\n")
    return path


def _remove_hosts() -> None:
    listed = sh("ip", "netns", "list")
    for name in [line.split()[0] for line in listed.splitlines() if line]:
        if name.startswith(HOST_PREFIX):
            sh("ip", "netns", "del", name)


@pytest.fixture(scope="module")
def bare_hosts(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BareHosts]:
    folder = tmp_path_factory.mktemp("bare-hosts")
    _remove_hosts()
    try:
        _make_hosts(folder)
        yield BareHosts(folder, _write_inventory(folder))
    finally:
        _remove_hosts()


def _spec_file(hosts: BareHosts, mode: str, inventory: Path | None = None) -> Path:
    data = yaml.safe_load(LOCAL_SPEC.read_text())
    data["name"] = LAB
    data["substrate"] = {"kind": "existing", "inventory": (inventory or hosts.inventory).name}
    data["dataplane"]["proxy_mode"] = mode
    data["network"] = {"node_cidr": f"{NETWORK}.0/24"}
    data.pop("nodes", None)  # taken from the inventory's group `nodes`
    data.pop("client", None)
    path = hosts.folder / f"lab-{mode}.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def _kubelab_traces(hosts: BareHosts) -> list[str]:
    """Anything of the lab left on this machine or the hosts."""
    found = [n for n in sh("ip", "netns", "list").split() if n.startswith(f"kl-{LAB}-")]
    for pid in Path("/proc").iterdir():
        if not pid.name.isdigit():
            continue
        try:
            cmd = (pid / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if f"/run/kubelab/{LAB}" in cmd:
            found.append(f"process {pid.name}: {cmd[:100]}")
    if Path(f"/run/kubelab/{LAB}").exists():
        found.append(f"/run/kubelab/{LAB}")
    return found


# iptables runs the whole suite over SSH; nftables (whose whole suite runs on netns in
# test_cli_lab.py) the cases that program, read back and use its rules, to keep CI in time
SUITES = {"iptables": (), "nftables": ("-k", "rules or clusterip or nodeport or source_ip")}


@pytest.mark.parametrize("mode", sorted(SUITES))
def test_the_default_suite_passes_over_ssh_on_bare_hosts(bare_hosts: BareHosts, mode: str) -> None:
    before = bare_hosts.snapshot()
    spec = _spec_file(bare_hosts, mode)
    reports = str(bare_hosts.folder / "reports")
    run = kubelab("run", str(spec), "--reports", reports, *SUITES[mode], timeout=900)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    run_dir = Path(run.stdout.strip().splitlines()[-1]).parent
    results = pd.read_parquet(run_dir / "results.parquet")
    verdicts = results[results["metric"] == "verdict"]
    assert set(verdicts["substrate"]) == {"existing"}
    assert set(verdicts["kernel"]) == {sh("uname", "-r").strip()}  # read from the hosts
    assert not (verdicts["verdict"].isin(["fail", "error"])).any(), verdicts.to_string()
    passed = verdicts[verdicts["verdict"] == "pass"]["case"].tolist()
    assert len(passed) >= (20 if mode == "iptables" else 8), passed
    provenance = json.loads((run_dir / "provenance.json").read_text())
    assert set(provenance["node_kernels"][LAB]) == {"node1", "node2", "node3"}
    assert _kubelab_traces(bare_hosts) == []
    assert bare_hosts.snapshot() == before


def test_up_stops_on_the_first_missing_thing_and_doctor_names_each(
    bare_hosts: BareHosts,
) -> None:
    inventory = _write_inventory(
        bare_hosts.folder, {"node2": "/nonexistent/python3", "outside": "/usr/bin/python3"}
    )
    broken = inventory.rename(bare_hosts.folder / "broken.ini")
    _write_inventory(bare_hosts.folder)  # the good one stays for the other tests
    before = bare_hosts.snapshot()
    spec = str(_spec_file(bare_hosts, "iptables", broken))
    up = kubelab("up", spec)
    assert up.returncode == 2, up.stdout + up.stderr
    lines = [line for line in up.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "node2: missing /nonexistent/python3" in lines[0], lines
    assert "`kubelab doctor` on this lab lists all 2" in lines[0]
    doctor = kubelab("doctor", spec, "--json")
    assert doctor.returncode == 1, doctor.stdout + doctor.stderr
    found = json.loads(doctor.stdout)
    missing = [f["detail"] for f in found["findings"] if not f["ok"]]
    assert not found["can_run"] and any("node2: missing /nonexistent/python3" in m for m in missing)
    assert any("outside: /usr/bin/python3 cannot import locust" in m for m in missing), missing
    assert _kubelab_traces(bare_hosts) == []
    assert bare_hosts.snapshot() == before


def test_a_killed_up_is_cleaned_by_the_next_up(bare_hosts: BareHosts) -> None:
    before = bare_hosts.snapshot()
    spec = str(_spec_file(bare_hosts, "nftables"))
    first = subprocess.Popen(
        [sys.executable, "-m", "kubelab.cli", "up", spec],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and first.poll() is None:
            if any(n.startswith(f"kl-{LAB}-") for n in sh("ip", "netns", "list").split()):
                break  # pods are being made on the hosts
            time.sleep(0.05)
    finally:
        os.killpg(first.pid, signal.SIGKILL)
        first.wait()
    assert _kubelab_traces(bare_hosts), "the killed up left nothing: the test proves nothing"
    up = kubelab("up", spec)
    assert up.returncode == 0, up.stderr
    down = kubelab("down", spec)
    assert down.returncode == 0, down.stderr
    assert _kubelab_traces(bare_hosts) == []
    assert bare_hosts.snapshot() == before


def test_a_members_loopback_is_reached_through_an_ssh_tunnel(bare_hosts: BareHosts) -> None:
    """What the kubernetes dataplane reaches a built cluster's API server by: a local
    port forwarded over SSH to a service the host keeps on its own loopback."""
    import requests

    from kubelab.spec import load_spec
    from kubelab.substrates.existing import ExistingSubstrate

    host = next(iter(HOSTS))
    server = subprocess.Popen(
        ["nsenter", f"--net=/run/netns/{HOST_PREFIX}{host}", sys.executable, "-m",
         "http.server", "18080", "--bind", "127.0.0.1", "--directory", str(bare_hosts.folder)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    spec = load_spec(_spec_file(bare_hosts, "iptables"))
    substrate = ExistingSubstrate(spec, bare_hosts.folder / "tunnel-state")
    try:
        for _ in range(50):  # the server's start
            if "18080" in on(host, "ss", "-ltn"):
                break
            time.sleep(0.1)
        tunnel = substrate.forward(host, 18080)
        try:
            answer = requests.get(f"http://127.0.0.1:{tunnel.local_port}/hosts.ini", timeout=10)
            assert answer.status_code == 200 and "[nodes]" in answer.text
        finally:
            tunnel.close()
        with pytest.raises(requests.ConnectionError):
            requests.get(f"http://127.0.0.1:{tunnel.local_port}/", timeout=2)
    finally:
        server.terminate()
        server.wait()
        substrate.down()
