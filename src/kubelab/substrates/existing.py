"""The existing substrate: hosts you already have, named by an Ansible inventory, or a
cluster's nodes reached through its API alone.

    substrate: {kind: existing, inventory: hosts.ini}   # relative to the spec file
    substrate: {kind: existing}                         # the kubeconfig's cluster

The inventory (INI or YAML, read with Ansible's own parser) has a group `nodes` (the
spec's `nodes` may be left out: they are then the group's hosts, by inventory name) and a
group `client` with the one external client. kubelab reaches each host as Ansible would:
`ansible_host`, `ansible_port`, `ansible_user` (sudo when it is not root),
`ansible_ssh_private_key_file`, `ansible_ssh_common_args` (`-o` options, a ProxyCommand
included) and `ansible_python_interpreter`. A node's address is `ansible_host` unless a
`node_ip` host variable says otherwise.

kubelab writes one ssh_config for the hosts (multiplexed connections, a known_hosts file
of the lab's own) and reaches them only through it. It creates nothing on a host by itself:
the dataplane builds what it needs there and undoes it at `down`; this module removes the
lab's folder and processes on each host, and the partition rules that fail a node.

Without an inventory (a kubernetes dataplane with a kubeconfig; the spec names the
cluster's `nodes` and the node whose host network plays the external `client`), each of
those is reached by SSH all the same, through an access pod on it: the ssh_config's
ProxyCommand runs the node's own `sshd -i` in that pod (dataplanes/kubernetes/
node_access.py), with keys this lab made. A node's address is its InternalIP; the
partition then spares the kubelet's port, the way in, instead of SSH's.
"""

from __future__ import annotations

import ipaddress
import shlex
import shutil
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import model_validator

from kubelab import inetd_sshd
from kubelab.errors import LabError, SpecError
from kubelab.hosts import Runner, SshRunner, interface_of, kill_under, missing_commands
from kubelab.inventory import Inventory, Member
from kubelab.naming import STATE_ROOT, member_dir
from kubelab.spec_common import SubstrateOptions
from kubelab.substrates.base import Progress, Substrate

if TYPE_CHECKING:
    from kubelab.dataplanes.kubernetes.node_access import ClusterNode, NodeAccess

NODES_GROUP = "nodes"
CLIENT_GROUP = "client"


class ExistingOptions(SubstrateOptions):
    """Hosts named by an Ansible inventory (groups `nodes` and `client`), or without one
    the nodes of the dataplane's kubeconfig, reached through access pods."""

    kind: Literal["existing"]
    inventory: str | None = None  # made absolute by `complete`
    python: str | None = None  # the nodes' interpreter, without an inventory (python3)

    @model_validator(mode="after")
    def _python_only_through_api(self) -> ExistingOptions:
        if self.python is not None and self.inventory is not None:
            raise ValueError(
                "substrate.python: read only without an inventory; set the hosts' "
                "ansible_python_interpreter there instead"
            )
        return self


class HostAccess:
    """How Ansible would reach one host, read from its inventory variables."""

    def __init__(self, name: str, variables: dict[str, Any], source: str) -> None:
        self.name = name
        self.host = str(variables.get("ansible_host", name))
        self.port = int(variables.get("ansible_port", 22))
        self.user = str(variables.get("ansible_user", "root"))
        key = variables.get("ansible_ssh_private_key_file")
        self.key = str(key) if key else None
        self.python = str(variables.get("ansible_python_interpreter", "python3"))
        self.options = _ssh_options(str(variables.get("ansible_ssh_common_args", "")), name)
        interface = variables.get("node_interface")  # the node network's, where known
        self.interface = str(interface) if interface else None
        self.access_port = self.port  # what a partition of the node must still let through
        self.via: str | None = None  # the access pod, for a host reached through the API
        address = str(variables.get("node_ip", self.host))
        try:
            self.address = ipaddress.IPv4Address(address)
        except ValueError:
            raise SpecError(
                f"{source}: host {name}: address {address!r} is not an IPv4 address; set "
                "ansible_host or a node_ip host variable to the host's address"
            ) from None

    @classmethod
    def through_pod(
        cls, node: ClusterNode, proxy_command: str, key: Path, python: str, via: str
    ) -> HostAccess:
        """A cluster's node, its sshd reached through its access pod (ProxyCommand)."""
        variables = {
            "ansible_host": str(node.address),
            "ansible_ssh_private_key_file": str(key),
            "ansible_python_interpreter": python,
        }
        host = cls(node.name, variables, "the cluster's Node objects")
        host.options = [
            ("ProxyCommand", proxy_command),
            ("StrictHostKeyChecking", "yes"),  # the host key is the lab's own
            ("HostKeyAlias", node.name),  # known_hosts names the node, not its address
        ]
        host.access_port = node.kubelet_port  # exec streams come in there
        host.via = via
        return host

    @property
    def become(self) -> bool:
        return self.user != "root"

    def ssh_entry(self, state_dir: Path) -> str:
        # ssh takes the first value it reads for an option: the inventory's own come first
        lines = [f"Host {self.name}", *[f"  {k} {v}" for k, v in self.options]]
        lines += [f"  HostName {self.host}", f"  Port {self.port}", f"  User {self.user}"]
        if self.key:
            lines += [f"  IdentityFile {self.key}", "  IdentitiesOnly yes"]
        lines += [
            "  BatchMode yes",
            "  ConnectTimeout 10",
            "  LogLevel ERROR",
            "  StrictHostKeyChecking accept-new",
            f"  UserKnownHostsFile {state_dir}/known_hosts",
            "  ControlMaster auto",
            f"  ControlPath {state_dir}/cm-%C",
            "  ControlPersist 120",
        ]
        return "\n".join(lines) + "\n"


def _ssh_options(args: str, host: str) -> list[tuple[str, str]]:
    """`-o Key=Value` / `-o 'Key Value'` pairs of ansible_ssh_common_args."""
    words = shlex.split(args)
    out = []
    while words:
        word = words.pop(0)
        if word == "-o" and words:
            option = words.pop(0)
        elif word.startswith("-o") and len(word) > 2:
            option = word[2:]
        else:
            raise SpecError(
                f"host {host}: ansible_ssh_common_args {word!r} is not supported; "
                "use -o Key=Value options only"
            )
        key, _, value = option.replace("=", " ", 1).partition(" ")
        out.append((key, value.strip()))
    return out


def read_inventory(path: Path) -> dict[str, list[HostAccess]]:
    """The hosts of the groups `nodes` and `client`, with their variables resolved as
    Ansible resolves them (group_vars, host_vars, children groups)."""
    from ansible.inventory.manager import InventoryManager  # heavy; only this substrate
    from ansible.parsing.dataloader import DataLoader
    from ansible.vars.manager import VariableManager

    if not path.is_file():
        raise SpecError(f"substrate.inventory: {path} does not exist; name an inventory file")
    loader = DataLoader()
    manager = InventoryManager(loader=loader, sources=[str(path)])
    variables = VariableManager(loader=loader, inventory=manager)
    groups = manager.get_groups_dict()
    out = {}
    for group in (NODES_GROUP, CLIENT_GROUP):
        names = groups.get(group, [])
        if not names:
            raise SpecError(
                f"substrate.inventory: {path} has no hosts in group {group!r}; "
                f"add a [{group}] group"
            )
        out[group] = [
            HostAccess(n, variables.get_vars(host=manager.get_host(n)), str(path)) for n in names
        ]
    if len(out[CLIENT_GROUP]) != 1:
        raise SpecError(
            f"substrate.inventory: group {CLIENT_GROUP!r} of {path} has "
            f"{len(out[CLIENT_GROUP])} hosts; give it exactly one"
        )
    return out


def _check_through_api(data: dict[str, Any]) -> None:
    """A spec without an inventory: its nodes are a cluster's, reached through its API."""
    dataplane = data.get("dataplane")
    if not (
        isinstance(dataplane, dict)
        and dataplane.get("kind") == "kubernetes"
        and dataplane.get("kubeconfig")
    ):
        raise SpecError(
            "substrate.inventory: required unless the dataplane is kubernetes with a "
            "kubeconfig (the cluster's nodes are then reached through its API); name an "
            "Ansible inventory file"
        )
    for field in ("nodes", "client"):
        if field not in data:
            raise SpecError(
                f"{field}: without substrate.inventory, name the cluster's nodes the lab "
                "uses under nodes: and the node that plays the external client under "
                "client: (`kubectl get nodes` lists them)"
            )


class ExistingSubstrate(Substrate):
    kind = "existing"
    Options = ExistingOptions

    @classmethod
    def complete(cls, data: dict[str, Any], base_dir: Path, source: str) -> dict[str, Any]:
        """Make the inventory path absolute and take nodes and client from it if unset;
        without an inventory, the spec must say which of the cluster's nodes to use."""
        substrate = dict(data["substrate"])
        if substrate.get("inventory") is None:
            _check_through_api(data)
            return data
        if not isinstance(substrate.get("inventory"), str):
            return data  # validation names the wrong field
        path = (base_dir / substrate["inventory"]).resolve()
        substrate["inventory"] = str(path)
        groups = read_inventory(path)
        out = {**data, "substrate": substrate}
        out.setdefault("nodes", [{"name": h.name} for h in groups[NODES_GROUP]])
        out.setdefault("client", {"name": groups[CLIENT_GROUP][0].name})
        return out

    @property
    def options(self) -> ExistingOptions:
        assert isinstance(self.spec.substrate, ExistingOptions)
        return self.spec.substrate

    @property
    def through_api(self) -> bool:
        return self.options.inventory is None

    @cached_property
    def node_access(self) -> NodeAccess:
        from kubelab.dataplanes.kubernetes.node_access import NodeAccess

        dataplane = self.spec.dataplane
        kubeconfig = getattr(dataplane, "kubeconfig", None)
        assert kubeconfig is not None  # complete() lets no other spec through
        return NodeAccess(kubeconfig, getattr(dataplane, "context", None), self.spec.lab_id)

    @property
    def _members(self) -> list[tuple[str, str]]:
        return [
            *((f"nodes[{i}].name", n.name) for i, n in enumerate(self.spec.nodes)),
            ("client.name", self.spec.client.name),
        ]

    @cached_property
    def hosts(self) -> dict[str, HostAccess]:
        return self._cluster_hosts() if self.through_api else self._inventory_hosts()

    def _cluster_hosts(self) -> dict[str, HostAccess]:
        from kubelab.dataplanes.kubernetes import node_access

        found = self.node_access.nodes()
        sshd = ["sh", "-c", 'mkdir -p /run/sshd && exec "$@"', "sh",
                *inetd_sshd.sshd_command(f"{self._access_folder}/sshd_config")]  # fmt: skip
        out = {}
        for path, name in self._members:
            if name not in found:
                raise SpecError(
                    f"{path}: {name!r} is not a node of the cluster in "
                    f"{self.node_access.kubeconfig}; use one of {sorted(found)}"
                )
            pod = f"{self.node_access.namespace}/{node_access.pod_name(name)}"
            out[name] = HostAccess.through_pod(
                found[name], self.node_access.proxy_command(name, sshd),
                self.state_dir / inetd_sshd.CLIENT_KEY, self.options.python or "python3",
                f"pod {pod}",
            )  # fmt: skip
        return out

    def _inventory_hosts(self) -> dict[str, HostAccess]:
        assert self.options.inventory is not None
        groups = read_inventory(Path(self.options.inventory))
        by_name = {h.name: h for h in groups[NODES_GROUP]}
        wanted = [n.name for n in self.spec.nodes]
        unknown = [n for n in wanted if n not in by_name]
        if unknown:
            raise SpecError(
                f"nodes: {unknown[0]!r} is not in group {NODES_GROUP!r} of "
                f"{self.options.inventory}; use one of {sorted(by_name)}"
            )
        client = groups[CLIENT_GROUP][0]
        if client.name != self.spec.client.name:
            raise SpecError(
                f"client.name: {self.spec.client.name!r} is not the inventory's client "
                f"{client.name!r}; remove client: from the spec or name that host"
            )
        return {**{n: by_name[n] for n in wanted}, client.name: client}

    def inventory(self) -> Inventory:
        nodes = tuple(Member(n.name, self.hosts[n.name].address) for n in self.spec.nodes)
        client = self.hosts[self.spec.client.name]
        return Inventory(nodes, Member(client.name, client.address))

    # --- access -------------------------------------------------------------------------------

    @property
    def ssh_config(self) -> Path:
        return self.state_dir / "ssh_config"

    def _write_access(self) -> None:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        entries = [h.ssh_entry(self.state_dir) for h in self.hosts.values()]
        self.ssh_config.write_text("\n".join(entries))

    def runner(self, member: str) -> Runner:
        if member not in self.hosts:
            raise LabError(f"no member named {member!r}; members are {sorted(self.hosts)}")
        if not self.ssh_config.exists():
            self._write_access()
        host = self.hosts[member]
        return SshRunner(member, str(self.ssh_config), become=host.become, python=host.python)

    def become(self, member: str) -> bool:
        return self.hosts[member].become

    def location(self, member: str) -> str:
        host = self.hosts[member]
        if host.via:
            return f"ssh over exec into {host.via}"
        return f"ssh {host.user}@{host.host}:{host.port}"

    def node_interface(self) -> str | None:
        """The `node_interface` host variable, when every node gives the same one."""
        names = {self.hosts[n.name].interface for n in self.spec.nodes}
        return names.pop() if len(names) == 1 else None

    def plan(self) -> dict[str, Any]:
        if self.through_api:  # what the cluster holds is read at `up`, not here
            from kubelab.dataplanes.kubernetes.node_access import pod_name

            namespace = self.node_access.namespace
            access = "exec into pod {}/{}, then ssh to the node's own sshd -i"
            return {
                "kind": self.kind,
                "cluster": self.node_access.kubeconfig,
                "hosts": {
                    name: {"access": access.format(namespace, pod_name(name))}
                    for _, name in self._members
                },
                "creates": f"namespace {namespace}: one privileged hostNetwork access pod "
                "per node, removed at down; the lab's folder on each node; the dataplane's "
                "objects",
            }
        return {
            "kind": self.kind,
            "inventory": self.options.inventory,
            "hosts": {
                name: {
                    "address": str(h.address),
                    "ssh": f"{h.user}@{h.host}:{h.port}" + (" (sudo)" if h.become else ""),
                }
                for name, h in self.hosts.items()
            },
            "creates": "nothing but the lab's folder on each host; the dataplane's objects",
        }

    def check(self) -> list[str]:
        """SSH to every host, as root or with sudo (Lab.check removes what this leaves
        when it fails)."""
        if shutil.which("ssh") is None:
            return ["ssh is missing here; install the Debian package openssh-client"]
        if self.through_api:
            self.hosts  # noqa: B018 - every node named is in the cluster (SpecError if not)
            return []  # the nodes are reached once `up` has made their access pods
        lines = []
        for name in self.hosts:
            result = self.runner(name).run(["id", "-u"], check=False, timeout=30)
            if not result.ok:
                why = (result.stderr.strip().splitlines() or [f"exit {result.rc}"])[-1]
                lines.append(
                    f"host {name}: cannot run commands as root over SSH ({why}); check its "
                    "inventory variables, and allow sudo without a password for ansible_user"
                )
        return lines

    # --- lifecycle ----------------------------------------------------------------------------

    def run_playbook(self, name: str, extravars: dict[str, Any]) -> None:
        from kubelab.vm.ansible_play import run_playbook  # ansible-runner: heavy, rarely used

        if self.options.inventory is None:
            super().run_playbook(name, extravars)  # refuses: no inventory to play on
            return
        artifacts = self.state_dir / "ansible" / Path(name).stem
        run_playbook(name, Path(self.options.inventory), artifacts, extravars=extravars)

    def up(self, progress: Progress) -> None:
        if self.through_api:
            progress("access pods on the cluster's nodes")
            self._open_node_access()
        self._write_access()
        for name in self.hosts:
            self.runner(name).run(["mkdir", "-p", member_dir(self.spec.lab_id, name)])

    def _open_node_access(self) -> None:
        """Keys of the lab's own, an access pod per member, and on each node the sshd
        files under node_access.folder, once the node is known to run python and sshd."""
        from kubelab.dataplanes.kubernetes.node_access import install_sshd

        d = self.state_dir
        inetd_sshd.make_keys(d, f"kubelab-{self.spec.lab_id}")
        (d / "known_hosts").write_text(inetd_sshd.known_hosts(d, list(self.hosts)))
        self.node_access.open(list(self.hosts))
        where = self._access_folder
        host_key = (d / inetd_sshd.HOST_KEY).read_text()
        client_key = (d / f"{inetd_sshd.CLIENT_KEY}.pub").read_text()
        for name, host in self.hosts.items():
            runner = self.node_access.runner(name, host.python)
            missing = missing_commands(runner, [host.python, inetd_sshd.SSHD])
            if missing:
                raise LabError(
                    f"node {name}: {', '.join(missing)} missing on the node; install python3 "
                    "and openssh-server there (kubelab starts `sshd -i` per connection: no "
                    "sshd need run), or give substrate.inventory"
                )
            install_sshd(runner, host_key, client_key, inetd_sshd.sshd_config(where), where)

    def down(self) -> None:
        """On each host: the partition rules, the lab's processes and folder. Here: the
        SSH connections and the state dir. A host that cannot be reached is skipped."""
        lab_root = f"{STATE_ROOT}/{self.spec.lab_id}"
        remove = (
            f'nft delete table inet {self._partition_table}; root="$1"; shift; rm -rf "$@"; '
            'rmdir "$root/members" "$root"'  # empty only when no other host shares them
        )
        reachable = not self.through_api or self.node_access.running()
        for name in self.hosts if reachable else ():
            runner = self.runner(name)
            folder = member_dir(self.spec.lab_id, name)
            kill_under(runner, folder)
            # the sshd serving this very session has read its files: they may go with it
            access = [self._access_folder] if self.through_api else []
            runner.run(["sh", "-c", remove, "sh", lab_root, folder, *access], check=False)
        self._close_connections()
        if self.through_api:
            self.node_access.close()  # the access pods, last: they were the way in
        shutil.rmtree(self.state_dir, ignore_errors=True)

    @property
    def _access_folder(self) -> str:
        from kubelab.dataplanes.kubernetes.node_access import folder

        return folder(self.spec.lab_id)

    def _close_connections(self) -> None:
        from kubelab import netns_util  # the SSH control masters run on this machine

        netns_util.kill_and_wait(netns_util.pids_mentioning(f"{self.state_dir}/cm-"))

    def exists(self) -> bool:
        return self.state_dir.exists()

    # --- node failure: a partition, since the link may carry our own SSH --------------------

    @property
    def _partition_table(self) -> str:
        return f"kubelab_{self.spec.lab_id}_partition"

    def set_node_link(self, node: str, up: bool) -> None:
        """Fail a node by dropping everything on its node-network interface but SSH."""
        runner = self.runner(node)
        if up:
            runner.run(["nft", "delete", "table", "inet", self._partition_table], check=False)
            return
        iface = interface_of(runner, str(self.hosts[node].address))
        ssh = self.hosts[node].access_port  # our way in: SSH, or the kubelet's exec
        table = self._partition_table
        runner.run(
            ["nft", "-f", "-"],
            input=(
                f"table inet {table} {{\n"
                "  chain pre { type filter hook prerouting priority -300; policy accept;\n"
                f'    iifname "{iface}" tcp dport {ssh} accept\n'
                f'    iifname "{iface}" drop\n'
                "  }\n"
                "  chain post { type filter hook postrouting priority 300; policy accept;\n"
                f'    oifname "{iface}" tcp sport {ssh} accept\n'
                f'    oifname "{iface}" drop\n'
                "  }\n"
                "}\n"
            ),
        )
