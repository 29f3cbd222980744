"""The reference dataplane: kubelab's pod network, pod servers and kube-proxy-layout proxier."""

from __future__ import annotations

from kubelab.dataplanes.base import Dataplane
from kubelab.dataplanes.reference import network
from kubelab.dataplanes.reference.pods import PodServers
from kubelab.dataplanes.reference.proxier import ProxierContext, proxier_for
from kubelab.dataplanes.reference.proxier.nftables import NftablesProxier
from kubelab.model import ServiceState, categorize
from kubelab.spec import ReferenceDataplane as ReferenceOptions
from kubelab.substrates.base import Substrate
from kubelab.topology import PodInfo

DUMP_COMMANDS = {
    "iptables": ["iptables-save"],
    "nftables": ["nft", "list", "ruleset"],
    "ipvs": ["ipvsadm", "-S", "-n"],
}


class ReferenceDataplane(Dataplane):
    kind = "reference"

    def __init__(self, substrate: Substrate, options: ReferenceOptions) -> None:
        super().__init__(substrate)
        self.options = options
        node_ips = {n.name: str(n.ip) for n in self.topology.nodes}
        self.proxier = proxier_for(options.proxy_mode, options.scheduler, node_ips)
        self.servers = PodServers(self.topology.lab_id, substrate.state_dir)
        self._last: list[ServiceState] = []
        self._health: dict[str, dict[int, int]] = {}  # node -> health port -> local count

    @property
    def proxy_mode(self) -> str:
        return self.options.proxy_mode

    @property
    def cni(self) -> tuple[str, str]:
        return ("reference", self.options.pod_network)

    def up(self, services: list[ServiceState], pods: list[PodInfo]) -> None:
        network.build(self.topology, pods, self.options.pod_network)
        self.servers.start(self.topology.nodes, pods)
        self.sync(services)

    def down(self) -> None:
        self.servers.forget()
        if isinstance(self.proxier, NftablesProxier):
            self.proxier.forget()
        self._last = []
        self._health = {}

    def sync(self, services: list[ServiceState]) -> dict[str, str]:
        applied = {}
        cluster_cidr = self.topology.spec.network.pod_cidr
        for node in self.topology.nodes:
            ctx = ProxierContext(node=node.name, cluster_cidr=cluster_cidr)
            runner = self.substrate.runner(node.name)
            applied[node.name] = self.proxier.sync(runner, services, ctx)
        self._clear_stale_udp(services)
        self._sync_health_checks(services)
        self._last = services
        return applied

    # --- what kube-proxy does after writing rules ---------------------------------------------

    def _sync_health_checks(self, services: list[ServiceState]) -> None:
        """healthCheckNodePort: 200 on nodes with local ready endpoints, 503 elsewhere."""
        for node in self.topology.nodes:
            wanted: dict[int, tuple[str, int]] = {}
            for state in services:
                svc = state.service
                if svc.health_check_node_port is None or not svc.external_local:
                    continue
                local = categorize(svc, state.endpoints, node.name).local
                wanted[svc.health_check_node_port] = (svc.key, sum(1 for e in local if e.ready))
            current = self._health.setdefault(node.name, {})
            for port in [p for p in current if p not in wanted]:
                self.servers.call(node, op="health", port=port, service="", local=-1)
                del current[port]
            for port, (key, count) in wanted.items():
                if current.get(port) != count:
                    self.servers.call(node, op="health", port=port, service=key, local=count)
                    current[port] = count

    def _clear_stale_udp(self, services: list[ServiceState]) -> None:
        """Delete conntrack entries of UDP flows whose endpoint left, as kube-proxy does:
        UDP has no connection to break, so the entry would keep sending to a dead pod."""
        now = {s.service.key: s for s in services}
        for old in self._last:
            svc = old.service
            if svc.headless:
                continue
            new = now.get(svc.key)
            still = {e.ip for e in new.endpoints if e.ready} if new else set()
            for port in (p for p in svc.ports if p.protocol == "UDP"):
                for ep in old.endpoints_for(port):
                    if not ep.ready or ep.ip in still:
                        continue
                    self._conntrack_delete(
                        ["--orig-dst", str(svc.cluster_ip), "-p", "udp", "--dst-nat", str(ep.ip)]
                    )
                    if port.node_port is not None:
                        self._conntrack_delete(
                            [
                                "-p",
                                "udp",
                                "--orig-port-dst",
                                str(port.node_port),
                                "--dst-nat",
                                str(ep.ip),
                            ]
                        )

    def _conntrack_delete(self, args: list[str]) -> None:
        for node in self.topology.nodes:
            # exit 1 = "0 flow entries have been deleted": nothing stale, which is fine
            self.substrate.runner(node.name).run(["conntrack", "-D", *args], check=False)

    # --- pods ---------------------------------------------------------------------------------

    def add_pod(self, pod: PodInfo) -> None:
        node = self.topology.node(pod.node)
        network.build_pod(pod, node, self.options.pod_network)
        self.servers.call(
            node, op="add", name=pod.name, netns=pod.netns, port=pod.port, udp_port=pod.udp_port
        )

    def kill_pod(self, pod: PodInfo) -> None:
        self.servers.call(self.topology.node(pod.node), op="kill", name=pod.name)

    def stop_pod(self, pod: PodInfo) -> None:
        self.servers.call(self.topology.node(pod.node), op="stop", name=pod.name)

    def remove_pod(self, pod: PodInfo) -> None:
        network.remove_pod(pod, self.topology.node(pod.node))

    # --- inspection ---------------------------------------------------------------------------

    def dump_rules(self, node: str) -> str:
        return self.substrate.runner(node).run(DUMP_COMMANDS[self.proxy_mode]).stdout

    def node_addresses(self, node: str) -> set[str]:
        return network.node_addresses(self.topology.node(node), self.options.pod_network)
