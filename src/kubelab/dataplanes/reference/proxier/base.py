"""The proxier interface: one pure render step and one atomic apply step per mode, and
every fact about the mode (tools, kernel features, dump command, rule counts, how to undo
it on a host that outlives the lab), with defaults here. One module per mode; the
registry in `proxier/__init__.py` names them."""

from __future__ import annotations

import ipaddress
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import ClassVar

from kubelab.hosts import Runner, missing_commands
from kubelab.model import ServiceState

IPTABLES_TABLES = ("filter", "nat")  # the tables the iptables-based modes write


@dataclass(frozen=True)
class ProxierContext:
    """What a proxier knows about the node it programs."""

    node: str
    cluster_cidr: ipaddress.IPv4Network  # the pod CIDR: traffic from inside it is not masqueraded
    service_cidr: ipaddress.IPv4Network | None = None  # unallocated ClusterIPs in it are dropped


@dataclass(frozen=True)
class KernelFeature:
    """A file the node's kernel shows when it has a feature, and what to say without it."""

    path: str
    missing: str


class Proxier(ABC):
    mode: ClassVar[str]
    # whose rule layout it writes: the kube-proxy source it follows (run provenance)
    layout: ClassVar[str]
    # what the node needs, and the Debian packages that bring it
    tools: ClassVar[tuple[str, ...]] = ("iptables-restore", "iptables-save", "conntrack")
    packages: ClassVar[str] = "iptables conntrack"
    kernel_features: ClassVar[tuple[KernelFeature, ...]] = ()
    # the dump the rule auditor reads (kubelab audit, the rules scenario)
    dump_command: ClassVar[tuple[str, ...]] = ("iptables-save",)
    # the saved ruleset a host had before the lab, restored at down (non-disposable hosts)
    SAVED_IPTABLES = "iptables.before"

    def __init__(self, scheduler: str = "rr", node_ips: dict[str, str] | None = None) -> None:
        self.scheduler = scheduler  # IPVS only
        self.node_ips = node_ips or {}
        self.last_apply_seconds: float | None = None  # set by modes that time their apply

    @abstractmethod
    def render(self, services: list[ServiceState], ctx: ProxierContext) -> str:
        """The node's whole ruleset for this mode, as the text the apply tool reads."""

    @abstractmethod
    def apply(self, runner: Runner, text: str) -> None:
        """Load `text` on the node in one atomic call."""

    def sync(self, runner: Runner, services: list[ServiceState], ctx: ProxierContext) -> str:
        text = self.render(services, ctx)
        self.apply(runner, text)
        return text

    def forget(self) -> None:  # noqa: B027 - most modes keep no incremental state
        """Drop incremental state: the next sync of every node loads everything."""

    def check(self, runner: Runner) -> list[str]:
        """What the node lacks for this mode, one line each with its fix (the caller
        names the node)."""
        missing = missing_commands(runner, self.tools)
        lines = []
        if missing:
            lines.append(
                f"missing {', '.join(missing)} for proxy mode {self.mode}; "
                f"install the Debian packages {self.packages}"
            )
        for feature in self.kernel_features:
            if not runner.run(["test", "-e", feature.path], check=False).ok:
                lines.append(feature.missing)
        return lines

    def dump(self, runner: Runner) -> str:
        return runner.run(list(self.dump_command)).stdout

    def count_rules(self, runner: Runner) -> dict[str, int]:
        """Rule and chain counts of the node's ruleset (benchmarks record them)."""
        dump = runner.run(["iptables-save"]).stdout
        return {"rules": dump.count("\n-A "), "chains": dump.count("\n:")}

    def save_host_rules(self, runner: Runner, folder: str) -> None:
        """Before the first sync on a host that outlives the lab: keep what it had."""
        saved = f"{folder}/{self.SAVED_IPTABLES}"
        if not runner.run(["test", "-e", saved], check=False).ok:
            runner.put(saved, runner.run(["iptables-save"]).stdout)

    def restore_host_rules(self, runner: Runner, folder: str) -> None:
        """At down on such a host: put back what it had before the lab. A table it did not
        have is emptied and, with the nf_tables backend, removed again."""
        saved = f"{folder}/{self.SAVED_IPTABLES}"
        if not runner.run(["test", "-e", saved], check=False).ok:
            return
        text = runner.get(saved)
        had = {line[1:].strip() for line in text.splitlines() if line.startswith("*")}
        if text.strip():
            runner.run(["iptables-restore", "-w"], input=text)
        nft_backend = "nf_tables" in runner.run(["iptables", "-V"], check=False).stdout
        for table in sorted(set(IPTABLES_TABLES) - had):
            runner.run(["iptables", "-t", table, "-F"], check=False)
            runner.run(["iptables", "-t", table, "-X"], check=False)
            if nft_backend:
                runner.run(["nft", "delete", "table", "ip", table], check=False)
