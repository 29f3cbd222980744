"""`kubelab box build`: the VM lab's Vagrant box, made offline from Debian's packages only.

    debootstrap bookworm (minbase + BOX_PACKAGES) -> rootfs, prepared for Vagrant
    mkfs.ext4 -d rootfs -> root.img (no partitions, no boot loader) -> qcow2 box.img
    metadata.json + box.img in a tar, a catalog naming it, `vagrant box add catalog.json`

The VMs boot the rootfs's own kernel and initrd directly (copied beside the box), which is
three times faster than grub under software emulation and needs no boot loader in the
image. A box is cached by the hash of what goes into it (the packages, the suite, this
builder's version) and reused while that hash stands; its name, version and hash go into
every run's provenance.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import tarfile
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from kubelab.errors import EnvironmentMissing, LabError

SUITE = "bookworm"
BOX_NAME = "kubelab/bookworm"
BUILDER_VERSION = "1"  # bump when the preparation below changes what a box contains
CACHE_ROOT = Path(os.environ.get("KUBELAB_CACHE", "/var/cache/kubelab")) / "boxes"
IMAGE_SIZE = "3G"  # the ext4 image is sparse; qcow2 stores only what is used
# What the VMs need: a kernel with ip_vs, SSH for Vagrant and Ansible, python3 for Ansible,
# the pod server and Locust's venv, and every tool the proxiers and rule dumps run.
BOX_PACKAGES = (
    "linux-image-amd64",
    "systemd-sysv",
    "udev",
    "kmod",
    "ifupdown",
    "isc-dhcp-client",
    "netbase",
    "openssh-server",
    "sudo",
    "python3",
    "python3-venv",
    "procps",
    "iproute2",
    "iptables",
    "nftables",
    "ipvsadm",
    "ipset",
    "conntrack",
    "iputils-ping",
    "netcat-openbsd",
)
HOST_TOOLS = {
    "debootstrap": "debootstrap",
    "mkfs.ext4": "e2fsprogs",
    "qemu-img": "qemu-utils",
    "vagrant": "vagrant vagrant-libvirt",
}
INSECURE_KEY_GLOB = "/usr/share/rubygems-integration/all/gems/vagrant-*/keys/vagrant.pub"

# Run in the rootfs (chroot) once the packages are in. Fresh SSH host keys and machine id
# on each VM's first boot, so no two VMs built from the box share them.
PREPARE = r"""
set -eu
useradd -m -s /bin/bash vagrant
echo 'vagrant ALL=(ALL) NOPASSWD: ALL' > /etc/sudoers.d/vagrant
chmod 0440 /etc/sudoers.d/vagrant
install -d -m 0700 -o vagrant -g vagrant /home/vagrant/.ssh
install -m 0600 -o vagrant -g vagrant /tmp/vagrant.pub /home/vagrant/.ssh/authorized_keys
rm -f /tmp/vagrant.pub /etc/ssh/ssh_host_*
cat > /etc/systemd/system/kubelab-host-keys.service <<'EOF'
[Unit]
Description=Fresh SSH host keys on first boot
Before=ssh.service
ConditionPathExists=!/etc/ssh/ssh_host_ed25519_key
[Service]
Type=oneshot
ExecStart=/usr/bin/ssh-keygen -A
[Install]
WantedBy=multi-user.target
EOF
systemctl enable kubelab-host-keys.service ssh.service networking.service
systemctl mask apt-daily.timer apt-daily-upgrade.timer e2scrub_all.timer fstrim.timer
: > /etc/machine-id
rm -f /var/lib/dbus/machine-id
echo kubelab > /etc/hostname
echo '/dev/vda / ext4 defaults,noatime 0 1' > /etc/fstab
cat > /etc/network/interfaces <<'EOF'
auto lo
iface lo inet loopback
auto eth0
iface eth0 inet dhcp
source /etc/network/interfaces.d/*
EOF
echo 'UseDNS no' > /etc/ssh/sshd_config.d/kubelab.conf
apt-get clean
rm -rf /var/lib/apt/lists/* /usr/share/doc/* /usr/share/man/*
"""


@dataclass(frozen=True)
class Box:
    """A built box: what Vagrant knows it by, and the kernel the VMs boot."""

    name: str
    version: str
    hash: str
    folder: str

    @property
    def kernel(self) -> Path:
        return Path(self.folder) / "vmlinuz"

    @property
    def initrd(self) -> Path:
        return Path(self.folder) / "initrd.img"

    @property
    def catalog(self) -> Path:
        return Path(self.folder) / "catalog.json"

    def provenance(self) -> dict[str, str]:
        return {"box": self.name, "box_version": self.version, "box_hash": self.hash}


def box_hash(packages: tuple[str, ...] = BOX_PACKAGES) -> str:
    text = json.dumps([SUITE, BUILDER_VERSION, sorted(packages), PREPARE])
    return hashlib.sha256(text.encode()).hexdigest()


def box_version(digest: str) -> str:
    """Vagrant versions are numbers: the builder version and 24 bits of the hash."""
    return f"{BUILDER_VERSION}.0.{int(digest[:6], 16)}"


def planned_box() -> Box:
    """The box for today's package list, built or not."""
    digest = box_hash()
    return Box(BOX_NAME, box_version(digest), digest, str(CACHE_ROOT / digest[:16]))


def cached_box() -> Box | None:
    """The box for today's package list, when it has been built."""
    box = planned_box()
    built = (Path(box.folder) / "box.json").exists() and box.kernel.exists()
    return box if built and box.initrd.exists() else None


def apt_sources() -> list[Path]:
    return [Path("/etc/apt/sources.list"), *sorted(Path("/etc/apt/sources.list.d").glob("*"))]


def debian_mirror(sources: list[Path] | None = None) -> str:
    """The Debian mirror this machine's apt uses for the suite (one-line or deb822)."""
    for path in apt_sources() if sources is None else sources:
        if not path.is_file() or path.suffix not in ("", ".list", ".sources"):
            continue
        text = path.read_text(errors="replace")
        for stanza in text.split("\n\n"):
            fields = dict(
                line.split(":", 1) for line in stanza.splitlines() if ":" in line and line[0] != "#"
            )
            uris = fields.get("URIs", "").split()
            suites = fields.get("Suites", "").split()
            if uris and SUITE in suites and "security" not in uris[0]:
                return uris[0].strip()
        for line in text.splitlines():
            words = re.sub(r"\[[^]]*\]", "", line).split()  # without [arch=... signed-by=...]
            if len(words) >= 3 and words[0] == "deb" and words[2] == SUITE:
                return words[1]
    raise EnvironmentMissing(
        f"no Debian {SUITE} mirror in /etc/apt/sources.list*; add one, "
        "or pass --mirror URL to kubelab box build"
    )


def missing_tools() -> list[str]:
    missing = [pkg for tool, pkg in HOST_TOOLS.items() if shutil.which(tool) is None]
    return sorted(set(missing))


def build_box(
    mirror: str | None = None, force: bool = False, say: Callable[[str], None] = print
) -> Box:
    """Build (or reuse) the box and make sure Vagrant has it. Needs root."""
    if os.geteuid() != 0:
        raise EnvironmentMissing("kubelab box build needs root (debootstrap, chroot); run as root")
    missing = missing_tools()
    if missing:
        raise EnvironmentMissing(
            f"kubelab box build needs the Debian packages {' '.join(missing)}; apt-get install them"
        )
    box = None if force else cached_box()
    if box is None:
        box = _build(mirror or debian_mirror(), say)
    else:
        say(f"box {box.name} {box.version} is cached ({box.folder})")
    _add_to_vagrant(box, say)
    return box


def _build(mirror: str, say: Callable[[str], None]) -> Box:
    box = planned_box()
    folder = Path(box.folder)
    work = folder.with_name(folder.name + ".build")
    shutil.rmtree(work, ignore_errors=True)  # a build that was killed
    work.mkdir(parents=True)
    try:
        rootfs = work / "rootfs"
        say(f"debootstrap {SUITE} with {len(BOX_PACKAGES)} packages from {mirror} (about 2.5 min)")
        _debootstrap(rootfs, mirror, say)
        say("preparing the rootfs for Vagrant (user, key, first-boot host keys, network)")
        key = sorted(Path("/").glob(INSECURE_KEY_GLOB.lstrip("/")))
        if not key:
            raise EnvironmentMissing("Vagrant's insecure public key is missing; install vagrant")
        shutil.copy(key[-1], rootfs / "tmp/vagrant.pub")
        _run(["chroot", str(rootfs), "sh", "-c", PREPARE])
        _copy_boot_files(rootfs, work)
        say("making the disk image (ext4 from the rootfs, then qcow2)")
        _run(["mkfs.ext4", "-q", "-F", "-L", "root", "-d", str(rootfs), str(work / "root.img"),
              IMAGE_SIZE])  # fmt: skip
        shutil.rmtree(rootfs)
        _run(["qemu-img", "convert", "-O", "qcow2", str(work / "root.img"), str(work / "box.img")])
        (work / "root.img").unlink()
        _write_box_file(work, box)
        shutil.rmtree(folder, ignore_errors=True)
        work.rename(folder)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    (folder / "box.json").write_text(json.dumps(asdict(box), indent=2))
    say(f"box {box.name} {box.version} built ({folder})")
    return box


def _debootstrap(rootfs: Path, mirror: str, say: Callable[[str], None]) -> None:
    argv = [
        "debootstrap",
        "--variant=minbase",
        f"--include={','.join(BOX_PACKAGES)}",
        SUITE,
        str(rootfs),
        mirror,
    ]
    log: list[str] = []
    with subprocess.Popen(
        argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    ) as proc:
        assert proc.stdout is not None
        for line in proc.stdout:
            log.append(line.rstrip())
            if line.startswith("I: ") and ("Installing" in line or "Configuring" in line):
                say(f"  {line[3:].strip()}")
    if proc.returncode != 0:
        tail = next((line for line in reversed(log) if line.startswith("E:")), log[-1:])
        raise LabError(f"debootstrap failed ({tail}); see the Debian mirror {mirror}")


def _copy_boot_files(rootfs: Path, work: Path) -> None:
    kernels = sorted((rootfs / "boot").glob("vmlinuz-*"))
    initrds = sorted((rootfs / "boot").glob("initrd.img-*"))
    if not kernels or not initrds:
        raise LabError("the rootfs has no kernel or initrd in /boot; linux-image-amd64 failed")
    shutil.copy(kernels[-1], work / "vmlinuz")
    shutil.copy(initrds[-1], work / "initrd.img")


def _write_box_file(work: Path, box: Box) -> None:
    """The libvirt box (metadata.json, a box-level Vagrantfile, box.img) as a plain tar,
    and a catalog so that Vagrant records the box's version."""
    size_gib = int(IMAGE_SIZE.rstrip("G"))
    (work / "metadata.json").write_text(
        json.dumps({"provider": "libvirt", "format": "qcow2", "virtual_size": size_gib})
    )
    (work / "Vagrantfile").write_text(
        'Vagrant.configure("2") do |config|\n'
        '  config.vm.provider :libvirt do |lv|\n    lv.driver = "qemu"\n  end\nend\n'
    )
    with tarfile.open(work / "kubelab.box", "w") as tar:
        for name in ("metadata.json", "Vagrantfile", "box.img"):
            tar.add(work / name, arcname=name)
            (work / name).unlink()
    checksum = _sha256(work / "kubelab.box")
    box_url = f"file://{Path(box.folder) / 'kubelab.box'}"
    catalog = {
        "name": box.name,
        "versions": [
            {
                "version": box.version,
                "providers": [
                    {
                        "name": "libvirt",
                        "url": box_url,
                        "checksum_type": "sha256",
                        "checksum": checksum,
                    }
                ],
            }
        ],
    }
    (work / "catalog.json").write_text(json.dumps(catalog, indent=2))


def _add_to_vagrant(box: Box, say: Callable[[str], None]) -> None:
    listed = subprocess.run(
        ["vagrant", "box", "list", "--machine-readable"], capture_output=True, text=True, cwd="/"
    ).stdout
    if f"{box.name}" in listed and f",box-version,{box.version}" in listed:
        return
    say(f"adding {box.name} {box.version} to Vagrant")
    _run(["vagrant", "box", "add", "--force", "--provider", "libvirt", str(box.catalog)], cwd="/")


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _run(argv: list[str], cwd: str | None = None) -> None:
    """Vagrant commands run from / so that no project Vagrantfile is read."""
    result = subprocess.run(argv, capture_output=True, text=True, cwd=cwd)
    if result.returncode != 0:
        why = (result.stderr.strip() or result.stdout.strip()).splitlines()[-1:] or ["?"]
        raise LabError(f"{argv[0]} failed (exit {result.returncode}): {why[0]}")
