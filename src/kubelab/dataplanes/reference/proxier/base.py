"""The proxier interface: one pure render step and one atomic apply step per mode."""

from __future__ import annotations

import ipaddress
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import ClassVar

from kubelab.hosts import Runner
from kubelab.model import ServiceState


@dataclass(frozen=True)
class ProxierContext:
    """What a proxier knows about the node it programs."""

    node: str
    cluster_cidr: ipaddress.IPv4Network  # the pod CIDR: traffic from inside it is not masqueraded


class Proxier(ABC):
    mode: ClassVar[str]

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
