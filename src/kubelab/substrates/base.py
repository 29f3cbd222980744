"""Where nodes live. One abstract base; one concrete substrate per file, named in
`substrates/registry.py`."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from kubelab.errors import LabError
from kubelab.hosts import Runner
from kubelab.inventory import Inventory, Member
from kubelab.spec_common import SubstrateOptions

if TYPE_CHECKING:
    from kubelab.spec import LabSpec
    from kubelab.tunnel import SshTunnel

Progress = Callable[[str], None]
NODE_HOST_OFFSET = 10  # node i (1-based) gets node_cidr + 10 + i, as Vagrant labs usually do
# What `collect` reads on each node into reports/<run>/nodes/<node>/ (playbooks/roles/
# collect reads the same with Ansible).
COLLECTED = {
    "iptables-save.txt": ["iptables-save"],
    "nft-ruleset.json": ["nft", "-j", "list", "ruleset"],
    "ipvsadm-S-n.txt": ["ipvsadm", "-S", "-n"],
    "conntrack-L.txt": ["conntrack", "-L"],
    "kernel.txt": ["uname", "-a"],
    "modules.txt": ["cat", "/proc/modules"],
}


def planned_inventory(spec: LabSpec) -> Inventory:
    """Addresses a substrate that makes its own members assigns: node i gets node_cidr +
    10 + i, the client the network's last address."""
    net = spec.network.node_cidr
    nodes = tuple(
        Member(n.name, net.network_address + NODE_HOST_OFFSET + i)
        for i, n in enumerate(spec.nodes, start=1)
    )
    return Inventory(nodes, Member(spec.client.name, net.broadcast_address - 1))


class Substrate(ABC):
    kind: ClassVar[str]
    Options: ClassVar[type[SubstrateOptions]]
    # True when `down` removes the members themselves (namespaces, VMs): nothing a
    # dataplane made on them needs undoing one by one.
    disposable: ClassVar[bool] = False
    # False when the members exist only after `up` (VMs): the dataplane's checks of what
    # they have installed then run right after the substrate's `up`.
    members_before_up: ClassVar[bool] = True
    # False when the nodes must not reach the internet (the VM labs' VMs have no route
    # out): what they need is copied in from this machine
    nodes_route_out: ClassVar[bool] = True

    def __init__(self, spec: LabSpec, state_dir: Path) -> None:
        self.spec = spec
        self.state_dir = state_dir

    @classmethod
    def complete(cls, data: dict[str, Any], base_dir: Path, source: str) -> dict[str, Any]:
        """The raw spec mapping with what this substrate knows filled in, before it is
        validated (paths made absolute, nodes taken from an inventory). Default: as is."""
        return data

    @abstractmethod
    def plan(self) -> dict[str, Any]:
        """What `up` would make or reach, creating nothing (`kubelab plan`)."""

    def node_interface(self) -> str | None:
        """The node network's interface name on every node, where the substrate fixes
        it (CNIs and MetalLB are told it); None where each node's may differ."""
        return None

    @abstractmethod
    def check(self) -> list[str]:
        """What this machine (or the hosts) lacks to run the lab, one line each with its
        fix; empty when nothing is missing. Builds nothing."""

    @abstractmethod
    def inventory(self) -> Inventory:
        """The nodes and the client, by name and address."""

    @abstractmethod
    def up(self, progress: Progress) -> None:
        """Create (or reach) the nodes, the client and the node network."""

    @abstractmethod
    def down(self) -> None:
        """Remove everything this lab created, including what a crashed run left."""

    @abstractmethod
    def exists(self) -> bool:
        """Whether any part of this lab is present."""

    @abstractmethod
    def runner(self, member: str) -> Runner:
        """How to run commands on a node or the client once the lab is up."""

    def probe_runner(self, member: str) -> Runner:
        """A runner for checking a member before `up` (what it has installed)."""
        return self.runner(member)

    @abstractmethod
    def set_node_link(self, node: str, up: bool) -> None:
        """Fail (up=False) or heal a node's link to the node network."""

    @property
    @abstractmethod
    def ssh_config(self) -> Path:
        """An ssh_config with one Host entry per node and the client, used by testinfra."""

    def become(self, member: str) -> bool:
        """Whether commands on the member need sudo (its SSH user is not root)."""
        return False

    @abstractmethod
    def location(self, member: str) -> str:
        """Where a member is, for people (`kubelab status`): a namespace, a host."""

    def kernels(self) -> dict[str, str]:
        """Each node's own kernel release, as results record it."""
        return {
            m.name: self.runner(m.name).run(["uname", "-r"]).stdout.strip()
            for m in self.inventory().nodes
        }

    def provenance(self) -> dict[str, Any]:
        """What a run's provenance records of this substrate (a VM box, say)."""
        return {}

    def forward(self, member: str, port: int) -> SshTunnel:
        """A local port forwarded to `port` on the member's loopback (over SSH)."""
        from kubelab.tunnel import SshTunnel

        self.runner(member)  # a member the lab reaches: its ssh_config entry is written
        return SshTunnel(self.ssh_config, member, port)

    def run_playbook(self, name: str, extravars: dict[str, Any]) -> None:
        """Run playbooks/<name> against the members (ansible-runner), for a dataplane
        that provisions them (the kubernetes dataplane's cluster)."""
        raise LabError(f"the {self.kind} substrate runs no playbooks; {name} needs machines")

    def keep_records(self, run_dir: Path) -> None:  # noqa: B027 - most keep no records
        """Copy what `up` recorded (logs, playbook artifacts) into a run folder."""

    def collect(self, folder: Path) -> None:
        """Each node's rules, conntrack table, kernel and modules, into folder/<node>/."""
        for node in self.inventory().nodes:
            out = folder / node.name
            out.mkdir(parents=True, exist_ok=True)
            runner = self.runner(node.name)
            for name, argv in COLLECTED.items():
                result = runner.run(argv, check=False, timeout=60)
                (out / name).write_text(result.stdout if result.ok else result.stderr)
