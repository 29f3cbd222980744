"""What kube-proxy does on a node besides writing rules: answer the healthCheckNodePort of
Local Services, and delete conntrack entries of UDP flows whose endpoint left."""

from __future__ import annotations

from kubelab.dataplanes.reference.pods import PodServers
from kubelab.model import ServiceState, categorize
from kubelab.topology import NodeInfo


class HealthChecks:
    """healthCheckNodePort: 200 on nodes with local ready endpoints, 503 elsewhere (the
    node's pod server answers it)."""

    def __init__(self, servers: PodServers) -> None:
        self.servers = servers
        self._current: dict[str, dict[int, int]] = {}  # node -> health port -> local count

    def sync(self, nodes: tuple[NodeInfo, ...], services: list[ServiceState]) -> None:
        for node in nodes:
            wanted: dict[int, tuple[str, int]] = {}
            for state in services:
                svc = state.service
                if svc.health_check_node_port is None or not svc.external_local:
                    continue
                local = categorize(svc, state.endpoints, node.name).local
                wanted[svc.health_check_node_port] = (svc.key, sum(1 for e in local if e.ready))
            current = self._current.setdefault(node.name, {})
            for port in [p for p in current if p not in wanted]:
                self.servers.call(node, op="health", port=port, service="", local=-1)
                del current[port]
            for port, (key, count) in wanted.items():
                if current.get(port) != count:
                    self.servers.call(node, op="health", port=port, service=key, local=count)
                    current[port] = count

    def forget(self) -> None:
        self._current.clear()


def stale_udp_flows(before: list[ServiceState], after: list[ServiceState]) -> list[list[str]]:
    """`conntrack -D` arguments for UDP flows whose endpoint left, as kube-proxy deletes
    them: UDP has no connection to break, so the entry would keep sending to a dead pod.
    Every node runs each of them."""
    now = {s.service.key: s for s in after}
    out: list[list[str]] = []
    for old in before:
        svc = old.service
        udp = [p for p in svc.ports if p.protocol == "UDP"]
        if svc.headless or not udp:
            continue
        new = now.get(svc.key)
        still = {e.ip for e in new.endpoints if e.ready} if new else set()
        for port in udp:
            for ep in old.endpoints_for(port):
                if not ep.ready or ep.ip in still:
                    continue
                out.append(
                    ["--orig-dst", str(svc.cluster_ip), "-p", "udp", "--dst-nat", str(ep.ip)]
                )
                if port.node_port is not None:
                    nodeport = str(port.node_port)
                    out.append(["-p", "udp", "--orig-port-dst", nodeport, "--dst-nat", str(ep.ip)])
    return out
