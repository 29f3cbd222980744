"""Who forwards packets. One abstract base; one concrete dataplane per file."""

from __future__ import annotations

from abc import ABC, abstractmethod

from kubelab.model import ServiceState
from kubelab.substrates.base import Substrate
from kubelab.topology import PodInfo


class Dataplane(ABC):
    kind: str

    def __init__(self, substrate: Substrate) -> None:
        self.substrate = substrate
        self.topology = substrate.topology

    @abstractmethod
    def up(self, services: list[ServiceState], pods: list[PodInfo]) -> None:
        """Pod network, pods, and the first full sync of the Service rules."""

    @abstractmethod
    def down(self) -> None:
        """Forget per-lab state after the substrate removed everything."""

    @abstractmethod
    def sync(self, services: list[ServiceState]) -> dict[str, str]:
        """Program every node for `services`; returns the text applied per node."""

    @abstractmethod
    def add_pod(self, pod: PodInfo) -> None: ...

    @abstractmethod
    def kill_pod(self, pod: PodInfo) -> None:
        """The pod's server dies at once: listeners closed, open connections reset."""

    @abstractmethod
    def stop_pod(self, pod: PodInfo) -> None:
        """Graceful stop: no new connections, open ones finish."""

    @abstractmethod
    def remove_pod(self, pod: PodInfo) -> None:
        """The pod's sandbox (namespace, veth) goes away."""

    @abstractmethod
    def dump_rules(self, node: str) -> str:
        """The node's forwarding rules as its tools print them (iptables-save, ...)."""

    @abstractmethod
    def node_addresses(self, node: str) -> set[str]:
        """Every source address traffic masqueraded on `node` can carry."""

    @property
    @abstractmethod
    def proxy_mode(self) -> str: ...

    @property
    @abstractmethod
    def cni(self) -> tuple[str, str]:
        """(CNI name, its mode) as the results table records them."""
