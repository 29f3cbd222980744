"""`kubelab doctor [LAB]`: what this machine (and the lab's hosts) have, each with a fix.

Kernel features are tried for real in a scratch network namespace of the doctor's own
(a veth, a bridge, a VXLAN device, an nft table, iptables rules with each match kube-proxy
uses), then the namespace is deleted; nothing is loaded or changed elsewhere. The lab's own
checks (the same `Lab.check` that `up` and `run` call first) decide the exit code: 0 when
the lab can run, 1 otherwise; the other findings say what else the machine has.
"""

from __future__ import annotations

import importlib.metadata
import os
import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from kubelab.errors import EnvironmentMissing
from kubelab.lab import Lab
from kubelab.naming import lab_netns

PACKAGES = (
    "locust",
    "pytest-testinfra",
    "pandas",
    "pyarrow",
    "scipy",
    "matplotlib",
    "ansible-core",
    "ansible",
    "ansible-runner",
)
TOOLS = {  # tool -> (version argv, Debian package, what needs it)
    "ip": (["ip", "-V"], "iproute2", "every lab"),
    "iptables-restore": (["iptables", "-V"], "iptables", "proxy modes iptables and ipvs"),
    "nft": (["nft", "--version"], "nftables", "proxy mode nftables"),
    "conntrack": (["conntrack", "--version"], "conntrack", "every lab"),
    "ipvsadm": (["ipvsadm", "--version"], "ipvsadm", "proxy mode ipvs"),
    "ssh": (["ssh", "-V"], "openssh-client", "every lab"),
    "wrk": (["wrk", "--version"], "wrk", "kubelab bench load only"),
    "vagrant": (["vagrant", "--version"], "vagrant vagrant-libvirt", "VM labs"),
    "virsh": (["virsh", "--version"], "libvirt-clients libvirt-daemon-system", "VM labs"),
    "qemu-system-x86_64": (["qemu-system-x86_64", "--version"], "qemu-system-x86", "VM labs"),
    "debootstrap": (["debootstrap", "--version"], "debootstrap", "kubelab box build"),
}
IPVS_SCHEDULERS = ("rr", "wrr", "lc", "wlc", "lblc", "lblcr", "sh", "dh", "sed", "nq", "mh")


@dataclass(frozen=True)
class Finding:
    check: str
    ok: bool
    detail: str
    fix: str = ""


def _run(argv: Sequence[str]) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(list(argv), capture_output=True, text=True, timeout=20, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return subprocess.CompletedProcess(list(argv), 127, "", str(exc))


def _first_line(result: subprocess.CompletedProcess[str]) -> str:
    lines = (result.stdout or result.stderr).strip().splitlines()
    return lines[0] if lines else ""


# the capabilities lab commands use: namespaces and mounts (ip netns), rules and links,
# raw sockets (iptables, ping); bit numbers from linux/capability.h
CAPABILITIES = {"CAP_NET_ADMIN": 12, "CAP_NET_RAW": 13, "CAP_SYS_ADMIN": 21}


def capabilities(proc_status: str) -> set[str]:
    """The named capabilities in the CapEff line of a /proc/<pid>/status text."""
    line = next((x for x in proc_status.splitlines() if x.startswith("CapEff:")), "CapEff: 0")
    mask = int(line.split()[1], 16)
    return {name for name, bit in CAPABILITIES.items() if mask >> bit & 1}


def privileges(proc_status: str | None = None) -> Finding:
    """Root, or every capability the lab uses (CAP_NET_ADMIN among them)."""
    status = proc_status if proc_status is not None else Path("/proc/self/status").read_text()
    uid = int(next(x for x in status.splitlines() if x.startswith("Uid:")).split()[2])
    have = capabilities(status)
    if uid == 0:
        return Finding("root or CAP_NET_ADMIN", True, "running as root")
    missing = sorted(set(CAPABILITIES) - have)
    detail = f"uid {uid} with {', '.join(sorted(have)) or 'no capabilities'}"
    if not missing:
        return Finding(
            "root or CAP_NET_ADMIN",
            True,
            detail + "; /run/netns and /run/kubelab must be writable too (tested as root only)",
        )
    return Finding(
        "root or CAP_NET_ADMIN",
        False,
        f"{detail}; lacks {', '.join(missing)}",
        "run as root (sudo), or grant " + ", ".join(missing),
    )


def tools() -> list[Finding]:
    out = []
    for tool, (version, package, needed_by) in TOOLS.items():
        if shutil.which(tool) is None:
            out.append(
                Finding(f"tool {tool}", False, f"not found (needed by {needed_by})",
                        f"apt-get install {package}")
            )  # fmt: skip
            continue
        out.append(Finding(f"tool {tool}", True, _first_line(_run(version))))
    sshd = os.path.exists("/usr/sbin/sshd")
    out.append(Finding("tool sshd", sshd, "/usr/sbin/sshd" if sshd else "not found",
                       "apt-get install openssh-server"))  # fmt: skip
    return out


def packages() -> list[Finding]:
    out = []
    for name in PACKAGES:
        try:
            out.append(Finding(f"python {name}", True, importlib.metadata.version(name)))
        except importlib.metadata.PackageNotFoundError:
            out.append(Finding(f"python {name}", False, "not installed", f"pip install {name}"))
    return out


def kernel_features() -> list[Finding]:
    """Each feature tried in a scratch namespace; the namespace is always deleted."""
    ns = lab_netns(f"doctor{os.getpid()}", "probe")
    if _run(["ip", "netns", "add", ns]).returncode != 0:
        return [Finding("network namespaces", False, "cannot create one", "run as root")]
    inside = ["nsenter", f"--net=/run/netns/{ns}"]
    nat = [*inside, "iptables", "-t", "nat", "-A", "OUTPUT"]
    probes = {
        "veth": ["ip", "-n", ns, "link", "add", "pa", "type", "veth", "peer", "pb"],
        "bridge": ["ip", "-n", ns, "link", "add", "klbr", "type", "bridge"],
        "vxlan": ["ip", "-n", ns, "link", "add", "vx", "type", "vxlan", "id", "1",
                  "dstport", "8472", "local", "127.0.0.1", "nolearning"],
        "nf_tables": [*inside, "nft", "add", "table", "ip", "kubelab_doctor"],
        "conntrack (xt_conntrack)": [*nat, "-m", "conntrack", "--ctstate", "NEW", "-j", "RETURN"],
        "xt_statistic": [*nat, "-m", "statistic", "--mode", "random", "--probability", "0.5",
                         "-j", "RETURN"],
        "xt_recent": [*nat, "-m", "recent", "--name", "kl", "--set", "-j", "RETURN"],
        "xt_comment": [*nat, "-m", "comment", "--comment", "kl", "-j", "RETURN"],
        "bridge netfilter": [*inside, "test", "-e", "/proc/sys/net/bridge/bridge-nf-call-iptables"],
    }  # fmt: skip
    out = []
    try:
        for name, argv in probes.items():
            result = _run(argv)
            detail = "works" if result.returncode == 0 else _first_line(result)[:120]
            fix = "" if result.returncode == 0 else f"a kernel with {name} (module or built in)"
            out.append(Finding(f"kernel {name}", result.returncode == 0, detail, fix))
    finally:
        _run(["ip", "netns", "del", ns])
    out.append(ipvs())
    return out


def ipvs() -> Finding:
    if not os.path.exists("/proc/net/ip_vs"):
        return Finding(
            "kernel ip_vs",
            False,
            "no /proc/net/ip_vs: IPVS labs cannot run on this kernel",
            "run IPVS labs in VMs, or load ip_vs (modprobe ip_vs) where the kernel has it",
        )
    missing = [s for s in IPVS_SCHEDULERS if not os.path.exists(f"/sys/module/ip_vs_{s}")]
    detail = "present; schedulers not loaded yet: " + ", ".join(missing) if missing else "present"
    return Finding("kernel ip_vs", True, detail)


VM_DISK_GIB = 4  # the box (~0.8 GiB), its copy in a lab's pool, the VMs' overlays, logs


def vm_disk() -> Finding:
    from kubelab.vm.box import CACHE_ROOT

    folder = CACHE_ROOT
    while not folder.exists():
        folder = folder.parent
    free = shutil.disk_usage(folder).free / 2**30
    return Finding(
        "disk for VM labs",
        free >= VM_DISK_GIB,
        f"{free:.1f} GiB free at {folder}",
        f"free at least {VM_DISK_GIB} GiB there for the box and the VMs' disks",
    )


def vm_box() -> list[Finding]:
    """Whether the VM labs' box is built, and what runs its VMs (if already decided)."""
    from kubelab.vm.box import cached_box, planned_box

    found = [vm_disk()]
    box = cached_box()
    if box is None:
        planned = planned_box()
        detail = f"{planned.name} {planned.version} not built"
        fix = "kubelab box build (VM labs build it at their first up)"
        return [*found, Finding("vm box", False, detail, fix)]
    found.append(Finding("vm box", True, f"{box.name} {box.version} in {box.folder}"))
    accel = os.path.join(box.folder, "accel.json")
    if os.path.exists(accel):
        with open(accel) as f:
            driver = f.read()
        engine = "KVM" if '"kvm"' in driver else "QEMU software emulation (KVM did not boot it)"
        found.append(Finding("vm accelerator", True, engine))
    return found


def lab_findings(lab: Lab) -> list[Finding]:
    """The lab's own checks: every line, where `up` and `run` stop on the first."""
    try:
        lines = lab.problems()
    except EnvironmentMissing as exc:
        lines = str(exc).splitlines()
    if lines:
        return [Finding(f"lab {lab.spec.lab_id}", False, line, "") for line in lines]
    return [Finding(f"lab {lab.spec.lab_id}", True, "can run: every check passed")]


def examine(lab: Lab) -> tuple[list[Finding], bool]:
    """Every finding, and whether the lab can run (its own checks decide)."""
    findings = [privileges(), *tools(), *packages(), *vm_box()]
    if os.geteuid() == 0:
        findings += kernel_features()
    verdict = lab_findings(lab)
    return findings + verdict, all(f.ok for f in verdict)
