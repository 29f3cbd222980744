"""KVM or software emulation, decided by booting the box's kernel once, not by a guess.

/dev/kvm can exist and still fail to run a stock Debian kernel (seen on this kind of
machine). So the first time a box is used, its kernel is booted under `-accel kvm` with no
disk and no network, and KVM is taken only if the kernel reaches its initramfs in time.
The answer is kept beside the box.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

from kubelab.vm.box import Box

BOOTED = "as init process"  # the kernel hands over to init (rdinit=/bin/true)
CHECK_SECONDS = 30


def choose_driver(box: Box, wanted: str) -> str:
    """libvirt's domain type: "kvm" or "qemu" (software emulation, TCG)."""
    if wanted == "tcg":
        return "qemu"
    if wanted == "kvm":
        return "kvm"
    record = Path(box.folder) / "accel.json"
    if record.exists():
        return str(json.loads(record.read_text())["driver"])
    driver = "kvm" if kvm_boots(box) else "qemu"
    record.write_text(json.dumps({"driver": driver}))
    return driver


def kvm_boots(box: Box) -> bool:
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        return False
    argv = [
        "qemu-system-x86_64", "-accel", "kvm", "-cpu", "host", "-m", "256",
        "-nographic", "-nodefaults", "-no-reboot", "-serial", "stdio", "-nic", "none",
        "-kernel", str(box.kernel), "-initrd", str(box.initrd),
        "-append", "console=ttyS0 panic=-1 rdinit=/bin/true",
    ]  # fmt: skip
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=CHECK_SECONDS).stdout
    except subprocess.TimeoutExpired as e:
        out = e.stdout.decode(errors="replace") if isinstance(e.stdout, bytes) else e.stdout or ""
    return BOOTED in out
