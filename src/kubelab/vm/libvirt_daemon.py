"""libvirt for one VM lab, inside that lab's own network namespace.

virtlogd, virtlockd and libvirtd are started from one script under `ip netns exec`, which
gives them a private mount namespace: there, copies of libvirt's configuration and state
folders (kept under the lab's folder) are bind-mounted over /etc/libvirt, /var/lib/libvirt,
/var/cache/libvirt, /var/log/libvirt and /run. So every bridge, tap, dnsmasq and storage
volume libvirt makes is the lab's: in its namespace, under its folder, gone with both.
The packaged NAT network `default` is removed from the copy; the host's own namespace is
never touched. Clients reach this libvirtd through its socket file, from any namespace.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path

from kubelab.errors import LabError

BOUND = {  # lab folder's subfolder -> the path it hides inside the daemons' mount namespace
    "etc": "/etc/libvirt",
    "lib": "/var/lib/libvirt",
    "cache": "/var/cache/libvirt",
    "log": "/var/log/libvirt",
    "run": "/run",
}
LIBVIRTD_CONF = 'auth_unix_rw = "none"\nunix_sock_group = "root"\nunix_sock_rw_perms = "0770"\n'
# As root, without systemd or cgroup mounts in the namespace (`ip netns exec` remounts /sys).
QEMU_CONF = (
    'user = "root"\ngroup = "root"\nsecurity_driver = "none"\nremember_owner = 0\n'
    "cgroup_controllers = [ ]\n"
)
POOL = "default"


class LabLibvirt:
    def __init__(self, netns: str, folder: Path) -> None:
        self.netns = netns
        self.folder = folder

    @property
    def socket(self) -> Path:
        return self.folder / "run" / "libvirt" / "libvirt-sock"

    @property
    def uri(self) -> str:
        return f"qemu:///system?socket={self.socket}"

    def start(self, timeout: float = 60.0) -> None:
        self._prepare_folders()
        mounts = "".join(
            f"mount --bind '{self.folder / sub}' '{target}'\n" for sub, target in BOUND.items()
        )
        script = (
            "set -e\n"
            f"{mounts}"
            "mkdir -p /run/libvirt /run/lock\n"
            "ip link set lo up\n"
            "virtlogd -d\nvirtlockd -d\nlibvirtd -d\n"
        )
        result = subprocess.run(
            ["ip", "netns", "exec", self.netns, "sh", "-c", script],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
        )
        if result.returncode != 0:
            raise LabError(f"libvirtd did not start in {self.netns}: {result.stderr.strip()}")
        deadline = time.monotonic() + timeout
        while self.virsh("version", check=False).returncode != 0:
            if time.monotonic() > deadline:
                raise LabError(f"libvirtd in {self.netns} did not answer on {self.socket}")
            time.sleep(0.5)
        self._define_pool()

    def _prepare_folders(self) -> None:
        for sub in BOUND:
            (self.folder / sub).mkdir(parents=True, exist_ok=True)
        etc = self.folder / "etc"
        shutil.copytree("/etc/libvirt", etc, dirs_exist_ok=True, symlinks=True)
        for default_net in (etc / "qemu/networks").glob("**/default.xml"):
            default_net.unlink()
        with (etc / "libvirtd.conf").open("a") as f:
            f.write(LIBVIRTD_CONF)
        with (etc / "qemu.conf").open("a") as f:
            f.write(QEMU_CONF)
        (self.folder / "lib" / "images").mkdir(exist_ok=True)

    def _define_pool(self) -> None:
        if self.virsh("pool-info", POOL, check=False).returncode == 0:
            return
        self.virsh("pool-define-as", POOL, "dir", "--target", "/var/lib/libvirt/images")
        self.virsh("pool-start", POOL)

    def virsh(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            ["virsh", "-q", "-c", self.uri, *args], capture_output=True, text=True, timeout=120
        )
        if check and result.returncode != 0:
            raise LabError(f"virsh {args[0]} failed: {result.stderr.strip()}")
        return result

    def running(self) -> bool:
        return self.socket.exists() and self.virsh("version", check=False).returncode == 0

    def bridge_of(self, network: str) -> str:
        """The bridge device of a libvirt network (in the lab's namespace)."""
        return self.virsh("net-info", network).stdout.split("Bridge:")[1].split()[0]

    def set_link(self, domain: str, mac: str, up: bool) -> None:
        self.virsh("domif-setlink", domain, mac, "up" if up else "down")
