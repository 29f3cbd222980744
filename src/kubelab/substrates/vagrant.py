"""The vagrant substrate: each node is a VM with its own kernel (IPVS included), made by
the project's Vagrantfile and prepared by playbooks/site.yml through ansible-runner.

    substrate: {kind: vagrant, cpus: 1, memory_mib: 1024, client: namespace}

Layout, all inside the lab (nothing in the host's own namespace):

    kl-<lab>-vms      libvirtd, virtlogd, virtlockd, dnsmasq, QEMU; the management network
                      (isolated, DHCP for Vagrant) and the private node network (the spec's
                      node CIDR, no forwarding) as bridges; the VMs' taps
    kl-<lab>-<client> (client: namespace) eth0 plugged into the node network's bridge
    /var/lib/kubelab/labs/<lab>/libvirt   libvirt's folders for this lab, volumes included

Steps of `up`: the box (built once, cached), KVM or emulation (a boot check), libvirtd in
the namespace, `vagrant up --no-provision`, ssh_config and inventory from `vagrant
ssh-config` (Vagrant has replaced its insecure key with one of this lab's), site.yml.
The harness stays in the host's namespace and reaches the VMs over SSH through a
ProxyCommand that enters the lab's namespace (`nsenter --net ... nc`).
"""

from __future__ import annotations

import fcntl
import ipaddress
import json
import os
import shutil
import subprocess
import sys
from functools import cached_property
from pathlib import Path
from typing import Any, Literal

from pydantic import Field

from kubelab import netns_util
from kubelab.errors import KubelabError, LabError
from kubelab.hosts import LocalRunner, NetnsRunner, Runner, SshRunner
from kubelab.inventory import Inventory, Member
from kubelab.naming import lab_netns, lab_prefix
from kubelab.spec_common import SubstrateOptions
from kubelab.substrates.base import Progress, Substrate, planned_inventory
from kubelab.vm import box as boxes
from kubelab.vm.accel import choose_driver
from kubelab.vm.ansible_play import playbook_plays, run_playbook
from kubelab.vm.libvirt_daemon import LabLibvirt
from kubelab.vm.vagrant_cli import Vagrant, parse_ssh_config, project_file
from kubelab.vm.wheelhouse import CLIENT_PYTHON, CLIENT_VENV, build_wheelhouse

VM_ROOT = Path(os.environ.get("KUBELAB_VM_ROOT", "/var/lib/kubelab/labs"))
# Vagrant's log and the playbooks' artifacts outlive `down` (a failed `up` names them);
# the next `up` of the lab starts them afresh, and a run folder gets a copy.
LOG_ROOT = Path(os.environ.get("KUBELAB_LOG_ROOT", "/var/log/kubelab"))
TOOLS = {
    "vagrant": "vagrant",
    "virsh": "libvirt-clients",
    "libvirtd": "libvirt-daemon-system",
    "qemu-system-x86_64": "qemu-system-x86",
    "nc": "netcat-openbsd",
    "nsenter": "util-linux",
    "debootstrap": "debootstrap",
    "qemu-img": "qemu-utils",
}
UP_TIMEOUT = 900.0


class VagrantOptions(SubstrateOptions):
    """Nodes are VMs (Vagrant + libvirt + QEMU), each with its own kernel."""

    kind: Literal["vagrant"]
    provider: Literal["libvirt"] = "libvirt"
    cpus: int = Field(1, ge=1, le=16)
    memory_mib: int = Field(1024, ge=512, le=65536)
    # the external client: a namespace on the node network (cheap), or a VM of its own
    client: Literal["namespace", "vm"] = "namespace"
    accel: Literal["auto", "kvm", "tcg"] = "auto"  # auto: KVM only if it boots the box
    management_cidr: ipaddress.IPv4Network = ipaddress.IPv4Network("192.168.121.0/24")


class VagrantSubstrate(Substrate):
    kind = "vagrant"
    nodes_route_out = False
    Options = VagrantOptions
    disposable = True
    members_before_up = False

    @property
    def options(self) -> VagrantOptions:
        assert isinstance(self.spec.substrate, VagrantOptions)
        return self.spec.substrate

    @property
    def netns(self) -> str:
        return lab_netns(self.spec.lab_id, "vms")

    @property
    def client_netns(self) -> str:
        return lab_netns(self.spec.lab_id, self.spec.client.name)

    @property
    def client_is_vm(self) -> bool:
        return self.options.client == "vm"

    @cached_property
    def libvirt(self) -> LabLibvirt:
        return LabLibvirt(self.netns, VM_ROOT / self.spec.lab_id / "libvirt")

    @cached_property
    def _inventory(self) -> Inventory:
        return planned_inventory(self.spec)

    def inventory(self) -> Inventory:
        return self._inventory

    @property
    def machines(self) -> list[Member]:
        inv = self._inventory
        return [*inv.nodes, inv.client] if self.client_is_vm else list(inv.nodes)

    def domain(self, member: str) -> str:
        return f"{self.spec.lab_id}-{member}"  # the Vagrantfile's default_prefix + name

    @property
    def network_name(self) -> str:
        return f"{lab_prefix(self.spec.lab_id)}nodes"

    # --- checks -------------------------------------------------------------------------------

    def check(self) -> list[str]:
        net = self.spec.network
        for field in ("node_cidr", "pod_cidr", "service_cidr"):
            if self.options.management_cidr.overlaps(getattr(net, field)):
                return [
                    f"substrate.management_cidr: {self.options.management_cidr} overlaps "
                    f"network.{field}; give the management network another range"
                ]
        if self.client_netns == self.netns:
            return ["client.name: 'vms' names the VM lab's own namespace; rename the client"]
        if os.geteuid() != 0:
            return ["the VM lab needs root (libvirtd in a lab namespace); run as root"]
        missing = sorted({pkg for tool, pkg in TOOLS.items() if shutil.which(tool) is None})
        lines = []
        if missing:
            lines.append(f"missing tools; install the Debian packages {' '.join(missing)}")
        elif "vagrant-libvirt" not in _vagrant_plugins():
            lines.append("Vagrant lacks its libvirt provider; install the package vagrant-libvirt")
        for name in ("Vagrantfile", "playbooks"):
            try:
                project_file(name)
            except KubelabError as e:
                lines.append(str(e))
        return lines

    # --- lifecycle ----------------------------------------------------------------------------

    def up(self, progress: Progress) -> None:
        box = boxes.build_box(say=progress)
        driver = choose_driver(box, self.options.accel)
        progress(f"libvirtd in netns {self.netns} ({'KVM' if driver == 'kvm' else 'QEMU TCG'})")
        self.state_dir.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(self.log_dir, ignore_errors=True)
        self.log_dir.mkdir(parents=True)
        (self.state_dir / "box.json").write_text(json.dumps(box.provenance()))
        netns_util.create_netns(self.netns)
        self.libvirt.start()
        self._write_lab_json(box, driver)
        progress(f"vagrant up --no-provision: {', '.join(m.name for m in self.machines)}")
        self.vagrant.run(
            ["up", "--no-provision", "--provider", self.options.provider], UP_TIMEOUT, progress
        )
        self._write_access(self.playbook_vars(progress))
        if not self.client_is_vm:
            self._plug_client_namespace()
        progress("site.yml (ansible-runner)")
        run_playbook("site.yml", self.ansible_inventory, self.log_dir / "ansible" / "site")

    def node_interface(self) -> str | None:
        # Vagrant puts the management network on eth0 and the private node network next;
        # the box boots with net.ifnames=0
        return "eth1"

    def plan(self) -> dict[str, Any]:
        box = boxes.planned_box()
        vms = self.render(box, "kvm" if self.options.accel == "kvm" else "qemu (or kvm)")
        return {
            "kind": self.kind,
            "box": f"{box.name} {box.version} (built by `kubelab box build`, cached)",
            "netns": f"{self.netns} (libvirtd, the bridges and the VMs' taps)",
            "vms": vms["machines"],
            "client": (
                f"a VM, {self.spec.client.name}"
                if self.client_is_vm
                else f"netns {self.client_netns} on the node network, {self._inventory.client.ip}"
            ),
            "management_network": f"{self.options.management_cidr} (isolated, DHCP, no route out)",
            "inventory": {
                "nodes": {n.name: {"node_ip": str(n.ip)} for n in self._inventory.nodes},
                "client": [self.spec.client.name] if self.client_is_vm else [],
                "vars": [
                    "ansible_user vagrant",
                    "ansible_become true",
                    f"ssh_config {self.ssh_config}",
                ],
            },
            "playbooks": {"site.yml": playbook_plays("site.yml")},
        }

    def playbook_vars(self, progress: Progress) -> dict[str, Any]:
        """site.yml's variables, kept in the inventory so that `ansible-playbook -i
        inventory.yml playbooks/site.yml` by hand does what `up` did."""
        scheduler = getattr(self.spec.dataplane, "scheduler", None)
        wheelhouse = str(build_wheelhouse(progress)) if self.client_is_vm else ""
        return {
            "common_ipvs_schedulers": [scheduler] if scheduler else ["rr"],
            "client_venv": CLIENT_VENV,
            "client_wheelhouse_tar": wheelhouse,
        }

    @property
    def log_dir(self) -> Path:
        return LOG_ROOT / self.spec.lab_id

    @cached_property
    def vagrant(self) -> Vagrant:
        lab_json = self.state_dir / "vagrant.json"
        return Vagrant(self.netns, self.state_dir, lab_json, self.libvirt.uri, self.log_dir)

    def render(self, box: boxes.Box, driver: str) -> dict[str, Any]:
        """The lab as the Vagrantfile reads it."""
        net = self.spec.network.node_cidr
        return {
            "lab": self.spec.lab_id,
            "box": box.name,
            "box_version": box.version,
            "kernel": str(box.kernel),
            "initrd": str(box.initrd),
            "driver": driver,
            "libvirt_uri": self.libvirt.uri,
            "network": {"name": self.network_name, "netmask": str(net.netmask)},
            "management": {
                "name": f"{lab_prefix(self.spec.lab_id)}mgmt",
                "cidr": str(self.options.management_cidr),
            },
            "machines": [
                {
                    "name": m.name,
                    "ip": str(m.ip),
                    "cpus": self.options.cpus,
                    "memory": self.options.memory_mib,
                }
                for m in self.machines
            ],
        }

    def _write_lab_json(self, box: boxes.Box, driver: str) -> None:
        (self.state_dir / "vagrant.json").write_text(json.dumps(self.render(box, driver), indent=1))

    def _plug_client_namespace(self) -> None:
        """The client namespace's eth0, its peer a port of the node network's bridge."""
        bridge = self.libvirt.bridge_of(self.network_name)
        port = f"kc-{self.spec.client.name}"[:15]
        netns_util.create_netns(self.client_netns)
        plen = self.spec.network.node_cidr.prefixlen
        client = self._inventory.client
        script = (
            f"ip link add {port} type veth peer name eth0 netns {self.client_netns}\n"
            f"ip link set {port} master {bridge} up\n"
        )
        _sh(["ip", "netns", "exec", self.netns, "sh", "-ec", script])
        inner = f"ip addr add {client.ip}/{plen} dev eth0\nip link set eth0 up\nip link set lo up\n"
        _sh(["ip", "netns", "exec", self.client_netns, "sh", "-ec", inner])

    def down(self) -> None:
        """`vagrant destroy`, then whatever is left: the lab's processes, namespaces and
        folders. Works on a half-built or crashed lab too."""
        if self.libvirt.running() and (self.state_dir / "vagrant.json").exists():
            self.vagrant.run(["destroy", "-f"], 300, check=False)
        namespaces = [ns for ns in (self.netns, self.client_netns) if _netns_exists(ns)]
        pids: list[int] = []
        for ns in namespaces:
            pids += netns_util.pids_in(ns)
        pids += netns_util.pids_mentioning(str(self.libvirt.folder))
        pids += netns_util.pids_mentioning(f"{self.state_dir}/")
        netns_util.kill_and_wait(sorted(set(pids)), timeout=10)
        for ns in namespaces:
            netns_util.remove_netns(ns)
        shutil.rmtree(self.libvirt.folder.parent, ignore_errors=True)
        shutil.rmtree(self.state_dir, ignore_errors=True)
        forget_machines(f"{self.state_dir}/")

    def exists(self) -> bool:
        return (
            _netns_exists(self.netns)
            or self.state_dir.exists()
            or self.libvirt.folder.parent.exists()
        )

    # --- access -------------------------------------------------------------------------------

    @property
    def ssh_config(self) -> Path:
        return self.state_dir / "ssh_config"

    @property
    def ansible_inventory(self) -> Path:
        return self.state_dir / "inventory.yml"

    def _write_access(self, playbook_vars: dict[str, Any]) -> None:
        """ssh_config and an Ansible inventory from `vagrant ssh-config`."""
        found = parse_ssh_config(self.vagrant.run(["ssh-config"], 120))
        d = self.state_dir
        entries = []
        for m in self.machines:
            e = found[m.name]
            entries.append(
                f"Host {m.name}\n  HostName {e.hostname}\n  Port {e.port}\n  User {e.user}\n"
                f"  IdentityFile {e.identity}\n  IdentitiesOnly yes\n  BatchMode yes\n"
                f"  ConnectTimeout 30\n  LogLevel ERROR\n  StrictHostKeyChecking accept-new\n"
                f"  UserKnownHostsFile {d}/known_hosts\n"
                f"  ControlMaster auto\n  ControlPath {d}/cm-%C\n  ControlPersist 600\n"
                f"  ProxyCommand nsenter --net=/run/netns/{self.netns} nc %h %p\n"
            )
        self.ssh_config.write_text("\n".join(entries))
        common = {
            **playbook_vars,
            "ansible_user": "vagrant",
            "ansible_become": True,
            "ansible_python_interpreter": "/usr/bin/python3",
            "ansible_ssh_common_args": f"-F {self.ssh_config}",
        }
        nodes = {n.name: {"node_ip": str(n.ip)} for n in self._inventory.nodes}
        inventory = {
            "all": {
                "vars": common,
                "children": {
                    "nodes": {"hosts": nodes},
                    "client": {"hosts": {self.spec.client.name: {}} if self.client_is_vm else {}},
                },
            }
        }
        self.ansible_inventory.write_text(json.dumps(inventory, indent=1))

    def runner(self, member: str) -> Runner:
        names = [m.name for m in self._inventory.members()]
        if member not in names:
            raise LabError(f"no member named {member!r}; members are {names}")
        if member == self.spec.client.name and not self.client_is_vm:
            return NetnsRunner(member, self.client_netns, python=sys.executable)
        if not self.ssh_config.exists():
            raise LabError(f"lab {self.spec.lab_id} is not up (no {self.ssh_config})")
        python = CLIENT_PYTHON if member == self.spec.client.name else "python3"
        return SshRunner(member, str(self.ssh_config), become=True, python=python)

    def probe_runner(self, member: str) -> Runner:
        if member == self.spec.client.name and not self.client_is_vm:
            return LocalRunner(member, python=sys.executable)
        return self.runner(member)

    def become(self, member: str) -> bool:
        return member != self.spec.client.name or self.client_is_vm

    def location(self, member: str) -> str:
        if member == self.spec.client.name and not self.client_is_vm:
            return f"netns {self.client_netns}"
        return f"vm {self.domain(member)} (libvirt in netns {self.netns})"

    def set_node_link(self, node: str, up: bool) -> None:
        """Pull (or plug back) the VM's cable on the node network; SSH keeps using the
        management network."""
        self._inventory.node(node)
        domain = self.domain(node)
        for line in self.libvirt.virsh("domiflist", domain).stdout.splitlines():
            words = line.split()
            if len(words) >= 5 and words[2] == self.network_name:
                self.libvirt.set_link(domain, words[4], up)
                return
        raise LabError(f"VM {domain} has no interface on network {self.network_name}")

    # --- records ------------------------------------------------------------------------------

    def provenance(self) -> dict[str, Any]:
        try:
            return dict(json.loads((self.state_dir / "box.json").read_text()))
        except OSError:
            return {}

    def keep_records(self, run_dir: Path) -> None:
        for name in ("ansible", "vagrant.log"):
            source = self.log_dir / name
            if source.is_dir():
                shutil.copytree(source, run_dir / name, dirs_exist_ok=True)
            elif source.exists():
                shutil.copy(source, run_dir / name)

    def run_playbook(self, name: str, extravars: dict[str, Any]) -> None:
        artifacts = self.log_dir / "ansible" / Path(name).stem
        run_playbook(name, self.ansible_inventory, artifacts, extravars=extravars)

    def collect(self, folder: Path) -> None:
        run_playbook(
            "collect.yml",
            self.ansible_inventory,
            folder.parent / "ansible" / "collect",
            extravars={"collect_dest": str(folder.resolve())},
        )


def _vagrant_plugins() -> str:
    return subprocess.run(
        ["vagrant", "plugin", "list"], capture_output=True, text=True, cwd="/"
    ).stdout


def _netns_exists(name: str) -> bool:
    return (netns_util.NETNS_DIR / name).exists()


def _sh(argv: list[str]) -> None:
    result = subprocess.run(argv, capture_output=True, text=True)
    if result.returncode != 0:
        raise LabError(f"{' '.join(argv[:4])}: {result.stderr.strip()}")


def forget_machines(prefix: str) -> None:
    """Drop the lab's machines from Vagrant's global index, where a run killed before
    `vagrant destroy` leaves them (`vagrant global-status --prune` cannot: it loads every
    indexed Vagrantfile, and kubelab's needs KUBELAB_LAB). Under the index's own lock."""
    home = Path(os.environ.get("VAGRANT_HOME", Path.home() / ".vagrant.d"))
    index = home / "data" / "machine-index" / "index"
    if not index.exists():
        return
    with (index.parent / "index.lock").open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            doc = json.loads(index.read_text())
        except (OSError, ValueError):
            return
        machines = doc.get("machines") or {}
        kept = {
            uuid: m for uuid, m in machines.items()
            if not str(m.get("local_data_path", "")).startswith(prefix)
        }  # fmt: skip
        if len(kept) != len(machines):
            doc["machines"] = kept
            partial = index.with_suffix(".kubelab.tmp")
            partial.write_text(json.dumps(doc))
            partial.replace(index)
