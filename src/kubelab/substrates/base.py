"""Where nodes live. One abstract base; one concrete substrate per file."""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path

from kubelab.hosts import Runner
from kubelab.topology import Topology


class Substrate(ABC):
    kind: str

    def __init__(self, topology: Topology, state_dir: Path) -> None:
        self.topology = topology
        self.state_dir = state_dir

    @abstractmethod
    def up(self) -> None:
        """Create the nodes, the client and the node network. Idempotent after `down`."""

    @abstractmethod
    def down(self) -> None:
        """Remove everything this lab created, including what a crashed run left."""

    @abstractmethod
    def runner(self, member: str) -> Runner:
        """How to run a command on a member (node, client, pod)."""

    @abstractmethod
    def set_node_link(self, node: str, up: bool) -> None:
        """Fail (up=False) or heal a node's link to the node network."""

    @abstractmethod
    def exists(self) -> bool:
        """Whether any part of this lab is present."""

    @property
    @abstractmethod
    def ssh_config(self) -> Path:
        """An ssh_config with one Host entry per node (and the client), used by testinfra."""
