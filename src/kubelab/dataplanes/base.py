"""Who forwards packets. One abstract base; one concrete dataplane per file."""

from __future__ import annotations

from abc import ABC, abstractmethod

from kubelab.model import ServiceState
from kubelab.substrates.base import Substrate


class Dataplane(ABC):
    kind: str

    def __init__(self, substrate: Substrate) -> None:
        self.substrate = substrate
        self.topology = substrate.topology

    @abstractmethod
    def up(self, services: list[ServiceState]) -> None:
        """Pod network, pods, and the first full sync of the Service rules."""

    @abstractmethod
    def sync(self, services: list[ServiceState]) -> dict[str, str]:
        """Program every node for `services`; returns the text applied per node."""

    @abstractmethod
    def dump_rules(self, node: str) -> str:
        """The node's forwarding rules as its tools print them (iptables-save, ...)."""

    @property
    @abstractmethod
    def proxy_mode(self) -> str: ...

    @property
    @abstractmethod
    def cni(self) -> tuple[str, str]:
        """(CNI name, its mode) as the results table records them."""
