"""The reference dataplane: kubelab's pod network, pod servers and kube-proxy-layout proxier."""

from __future__ import annotations

import subprocess

from kubelab.dataplanes.base import Dataplane
from kubelab.dataplanes.reference import network, pods
from kubelab.dataplanes.reference.proxier import ProxierContext, proxier_for
from kubelab.model import ServiceState
from kubelab.spec import ReferenceDataplane as ReferenceOptions
from kubelab.substrates.base import Substrate

DUMP_COMMANDS = {"iptables": ["iptables-save"]}


class ReferenceDataplane(Dataplane):
    kind = "reference"

    def __init__(self, substrate: Substrate, options: ReferenceOptions) -> None:
        super().__init__(substrate)
        self.options = options
        self.proxier = proxier_for(options.proxy_mode)
        self._servers: list[subprocess.Popen[bytes]] = []

    @property
    def proxy_mode(self) -> str:
        return self.options.proxy_mode

    @property
    def cni(self) -> tuple[str, str]:
        return ("reference", self.options.pod_network)

    def up(self, services: list[ServiceState]) -> None:
        network.build(self.topology)
        self._servers = pods.start(self.topology, self.substrate.state_dir)
        self.sync(services)

    def sync(self, services: list[ServiceState]) -> dict[str, str]:
        applied = {}
        cluster_cidr = self.topology.spec.network.pod_cidr
        for node in self.topology.nodes:
            ctx = ProxierContext(node=node.name, cluster_cidr=cluster_cidr)
            applied[node.name] = self.proxier.sync(self.substrate.runner(node.name), services, ctx)
        return applied

    def dump_rules(self, node: str) -> str:
        return self.substrate.runner(node).run(DUMP_COMMANDS[self.proxy_mode]).stdout

    def forget_processes(self) -> None:
        """Reap the pod servers after the substrate killed them."""
        for proc in self._servers:
            proc.wait(timeout=5)
        self._servers = []
