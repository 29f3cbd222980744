"""The netns substrate: nodes and the client are network namespaces on the local kernel.

Layout (every namespace named kl-<lab>-<member>):

    kl-<lab>-fabric   bridge br0 = the node network; one veth port per member
    kl-<lab>-<node>   eth0 on the node network, ip_forward=1
    kl-<lab>-<client> eth0 on the node network, nothing else

Nothing is created in the host's own namespace: every veth is created inside a lab
namespace and its peer moved straight into another lab namespace. No namespace has a
default route or any link outside the lab.

The harness runs commands in members with `ip netns exec` (NetnsRunner), and testinfra
reaches nodes over real SSH: ssh's ProxyCommand starts `sshd -i` inside the node's
namespace, speaking over a pipe, so testinfra's ssh backend runs unchanged against these
nodes and against VMs, and no address is opened on the host.
"""

from __future__ import annotations

import os
import shlex
import shutil
import sys
from functools import cached_property
from pathlib import Path
from typing import Any, Literal

from pyroute2 import IPRoute

from kubelab import inetd_sshd, netns_util
from kubelab.errors import LabError
from kubelab.hosts import LocalRunner, NetnsRunner, Runner
from kubelab.inetd_sshd import SSHD
from kubelab.inventory import Inventory
from kubelab.naming import lab_netns, lab_prefix
from kubelab.spec_common import SubstrateOptions
from kubelab.substrates.base import Progress, Substrate, planned_inventory

FABRIC = "fabric"  # the member holding the node network's bridge
FABRIC_BRIDGE = "br0"
TOOLS = ("ip", "ssh", "ssh-keygen")


class NetnsOptions(SubstrateOptions):
    """Nodes are network namespaces on the local kernel (the embedded lab)."""

    kind: Literal["netns"]


class NetnsSubstrate(Substrate):
    kind = "netns"
    Options = NetnsOptions
    disposable = True

    @property
    def prefix(self) -> str:
        return lab_prefix(self.spec.lab_id)

    def netns(self, member: str) -> str:
        return lab_netns(self.spec.lab_id, member)

    @cached_property
    def _inventory(self) -> Inventory:
        return planned_inventory(self.spec)

    def inventory(self) -> Inventory:
        return self._inventory

    def check(self) -> list[str]:
        if os.geteuid() != 0:
            return [
                "the netns lab needs root (network namespaces, iptables); "
                "run as root, e.g. with sudo"
            ]
        missing = [t for t in TOOLS if shutil.which(t) is None]
        lines = []
        if missing:
            lines.append(
                f"missing tools: {', '.join(missing)}; install the Debian packages "
                "iproute2 openssh-client"
            )
        if not Path(SSHD).exists():
            lines.append(f"{SSHD} is missing; install openssh-server")
        return lines

    # --- lifecycle ----------------------------------------------------------------------------

    def up(self, progress: Progress) -> None:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        fabric = self.netns(FABRIC)
        netns_util.create_netns(fabric)
        plen = self.spec.network.node_cidr.prefixlen
        with IPRoute(netns=fabric) as switch:  # one session for every port of the fabric
            switch.link("add", ifname=FABRIC_BRIDGE, kind="bridge")
            bridge = switch.link_lookup(ifname=FABRIC_BRIDGE)[0]
            switch.link("set", index=bridge, state="up")
            switch.link("set", index=switch.link_lookup(ifname="lo")[0], state="up")
            for member in self._inventory.members():
                self._attach(self.netns(member.name), member.name, str(member.ip), plen)
                port = switch.link_lookup(ifname=member.name)[0]
                switch.link("set", index=port, master=bridge, state="up")
        self._write_ssh_access()

    def _attach(self, ns: str, port_name: str, ip: str, prefixlen: int) -> None:
        """A member namespace with eth0, its peer `port_name` in the fabric namespace."""
        netns_util.create_netns(ns)
        with IPRoute(netns=ns) as ipr:
            ipr.link(
                "add",
                ifname="eth0",
                kind="veth",
                peer={"ifname": port_name, "net_ns_fd": self.netns(FABRIC)},
            )
            eth0 = ipr.link_lookup(ifname="eth0")[0]
            ipr.addr("add", index=eth0, address=ip, prefixlen=prefixlen)
            ipr.link("set", index=eth0, state="up")
            ipr.link("set", index=ipr.link_lookup(ifname="lo")[0], state="up")

    def down(self) -> None:
        """Kill every process in the lab's namespaces or naming its state dir, then delete
        the namespaces and the state dir. Works on a half-built or crashed lab too."""
        namespaces = netns_util.list_netns(self.prefix)
        pids: list[int] = []
        for ns in namespaces:
            pids += netns_util.pids_in(ns)
        pids += netns_util.pids_mentioning(str(self.state_dir))
        netns_util.kill_and_wait(sorted(set(pids)))
        for ns in namespaces:
            netns_util.remove_netns(ns)
        shutil.rmtree(self.state_dir, ignore_errors=True)

    def exists(self) -> bool:
        return bool(netns_util.list_netns(self.prefix)) or self.state_dir.exists()

    def runner(self, member: str) -> Runner:
        """Nodes, the client and `fabric`. The members share this machine's file system,
        so the harness's own interpreter (with Locust) is theirs too."""
        known = [m.name for m in self._inventory.members()] + [FABRIC]
        ns = self.netns(member)
        if member not in known or not (netns_util.NETNS_DIR / ns).exists():
            raise LabError(f"no member named {member!r} (no namespace {ns}); members are {known}")
        return NetnsRunner(member, ns, python=sys.executable)

    def location(self, member: str) -> str:
        return f"netns {self.netns(member)}"

    def plan(self) -> dict[str, Any]:
        inv = self._inventory
        return {
            "kind": self.kind,
            "namespaces": [self.netns(m.name) for m in inv.members()] + [self.netns(FABRIC)],
            "members": {m.name: str(m.ip) for m in inv.members()},
            "node_network": f"{self.spec.network.node_cidr}, a bridge in {self.netns(FABRIC)}",
        }

    def probe_runner(self, member: str) -> Runner:
        return LocalRunner(member, python=sys.executable)  # the members are this machine

    def set_node_link(self, node: str, up: bool) -> None:
        """Plug or unplug a node from the node network (its port on the fabric bridge)."""
        self._inventory.node(node)
        with IPRoute(netns=self.netns(FABRIC)) as ipr:
            port = ipr.link_lookup(ifname=node)[0]
            ipr.link("set", index=port, state="up" if up else "down")

    # --- SSH access ---------------------------------------------------------------------------

    @property
    def ssh_config(self) -> Path:
        return self.state_dir / "ssh_config"

    def _write_ssh_access(self) -> None:
        if not Path(SSHD).exists():
            raise LabError(f"{SSHD} is missing; install the Debian package openssh-server")
        d = self.state_dir
        inetd_sshd.make_keys(d, f"kubelab-{self.spec.lab_id}")
        shutil.copy(d / f"{inetd_sshd.CLIENT_KEY}.pub", d / "authorized_keys")
        (d / "sshd_config").write_text(inetd_sshd.sshd_config(str(d)))
        members = [(m.name, self.netns(m.name)) for m in self._inventory.members()]
        (d / "known_hosts").write_text(inetd_sshd.known_hosts(d, [name for name, _ in members]))
        Path("/run/sshd").mkdir(exist_ok=True)  # sshd's privilege-separation directory
        sshd = shlex.join(inetd_sshd.sshd_command(f"{d}/sshd_config"))
        entries = [
            f"Host {name}\n"
            f"  User root\n  IdentityFile {d}/{inetd_sshd.CLIENT_KEY}\n  IdentitiesOnly yes\n"
            f"  UserKnownHostsFile {d}/known_hosts\n  StrictHostKeyChecking yes\n"
            f"  BatchMode yes\n  LogLevel ERROR\n"
            f"  ControlPath {d}/cm-%h\n"
            f"  ProxyCommand nsenter --net=/run/netns/{ns} {sshd}\n"
            for name, ns in members
        ]
        self.ssh_config.write_text("\n".join(entries))
