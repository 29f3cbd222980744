"""The reference dataplane's own small control plane: what an API server and the
endpoints controller hold on a real cluster. Services, workloads, pods and their phases,
node readiness, IP and NodePort allocation, and the EndpointSlices that follow from them.

Pure state, no I/O and no timers: the dataplane changes it and then programs the nodes.
`objects()` exports it as `kubectl get svc,endpointslices,pods,nodes -A -o json` prints a
cluster, so the rule auditor computes expected tables the same way for labs and clusters.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from kubelab.errors import LabError
from kubelab.model import (
    Endpoint,
    Service,
    ServiceState,
    service_from_spec,
    with_health_check_port,
)
from kubelab.spec_common import ServiceSpec, WorkloadSpec
from kubelab.topology import PodInfo, Topology

if TYPE_CHECKING:
    from kubelab.spec import LabSpec

Phase = Literal["Running", "Terminating", "Dead"]


@dataclass
class PodRecord:
    info: PodInfo
    phase: Phase = "Running"
    death_noticed: bool = False  # the endpoints controller has seen that it died
    ready: bool = True  # its readiness probe passes (the kubelet's view, as last noticed)


def _present(**fields: Any) -> dict[str, Any]:
    """The fields that are set, as the API server omits unset ones."""
    return {k: v for k, v in fields.items() if v is not None}


class ClusterState:
    def __init__(self, spec: LabSpec, topology: Topology) -> None:
        self.spec = spec
        self.topology = topology
        self.services: dict[str, Service] = {}
        self.taken_ports = {p.node_port for s in spec.services for p in s.ports if p.node_port}
        self.taken_ports |= {
            s.health_check_node_port for s in spec.services if s.health_check_node_port
        }
        self.lb_taken = {s.load_balancer_ip for s in spec.services if s.load_balancer_ip}
        self.lb_taken |= {ip for s in spec.services for ip in s.external_ips}
        for i, svc_spec in enumerate(spec.services):
            svc = service_from_spec(svc_spec, i, spec, self.taken_ports, self._lb_ips(svc_spec))
            self.services[svc.key] = svc
        self.pods: dict[str, PodRecord] = {p.name: PodRecord(p) for p in topology.pods}
        self.failed_nodes: dict[str, bool] = {}  # node -> failure noticed
        self.workloads: dict[str, WorkloadSpec] = {w.name: w for w in spec.workloads}
        self._last_host: dict[str, int] = {}  # node -> last pod address offset handed out
        self._endpoints: dict[str, tuple[Endpoint, ...]] = {}  # workload -> last published

    # --- Services -----------------------------------------------------------------------------

    def service(self, key: str) -> Service:
        if key not in self.services:
            raise LabError(f"no Service {key!r}; Services are {sorted(self.services)}")
        return self.services[key]

    def endpoints_of(self, service: Service) -> tuple[Endpoint, ...]:
        """The Service's EndpointSlice as the control plane would publish it now."""
        return self._endpoints_of_workload(service.workload)

    def _endpoints_of_workload(self, workload: str) -> tuple[Endpoint, ...]:
        out = []
        for record in self.pods.values():
            pod = record.info
            if pod.workload != workload:
                continue
            if record.phase == "Dead" and record.death_noticed:
                continue  # the endpoints controller removed it
            up = not self.failed_nodes.get(pod.node, False) and record.ready
            terminating = record.phase == "Terminating"
            out.append(
                Endpoint(
                    pod.ip,
                    pod.port,
                    pod.node,
                    pod.name,
                    ready=up and not terminating,
                    serving=up,
                    terminating=terminating,
                )
            )
        return tuple(out)

    def service_states(self) -> list[ServiceState]:
        """Every Service with its endpoints. A workload's endpoints are worked out once per
        call, and the tuple is the very object of the last call while it has not changed:
        at 10,000 Services the proxiers' check for unchanged Services is then an identity
        test, not 100,000 Endpoint comparisons."""
        for workload in {s.workload for s in self.services.values()}:
            now = self._endpoints_of_workload(workload)
            if self._endpoints.get(workload) != now:
                self._endpoints[workload] = now
        return [ServiceState(s, self._endpoints[s.workload]) for s in self.services.values()]

    def _lb_ips(self, spec: ServiceSpec) -> tuple[ipaddress.IPv4Address, ...]:
        """status.loadBalancer.ingress: the spec's address, or the pool's next free one,
        as MetalLB's L2 mode hands them out."""
        if spec.type != "LoadBalancer":
            return ()
        if spec.load_balancer_ip is not None:
            return (spec.load_balancer_ip,)
        for ip in self.spec.network.lb_pool.hosts():
            if ip not in self.lb_taken:
                self.lb_taken.add(ip)
                return (ip,)
        raise LabError(
            f"network.load_balancer_pool {self.spec.network.lb_pool} is exhausted; "
            "set a larger pool"
        )

    def add_services(self, specs: list[ServiceSpec]) -> None:
        for spec in specs:
            owner = {
                ip: f"used by Service {s.key}"
                for s in self.services.values()
                for _, ip in s.external_addresses
            }
            try:
                self.spec.check_external_addresses(
                    f"Service {spec.namespace}/{spec.name}", spec, owner
                )
            except ValueError as exc:
                raise LabError(str(exc)) from None
            svc = service_from_spec(spec, 0, self.spec, self.taken_ports, self._lb_ips(spec))
            if svc.key in self.services:
                raise LabError(f"Service {svc.key} exists; delete it or pick another name")
            if spec.cluster_ip is None:
                svc = svc.with_changes(cluster_ip=self._free_cluster_ip())
            self.services[svc.key] = svc

    def _free_cluster_ip(self) -> ipaddress.IPv4Address:
        used = {s.cluster_ip for s in self.services.values()}
        net = self.spec.network.service_cidr
        for offset in range(10, net.num_addresses - 1):
            if net.network_address + offset not in used:
                return net.network_address + offset
        raise LabError(f"service_cidr {net} is full")

    def change_service(self, key: str, changes: dict[str, Any]) -> None:
        svc = self.service(key).with_changes(**changes)
        self.services[key] = with_health_check_port(svc, self.taken_ports)

    def remove_services(self, keys: list[str]) -> None:
        for key in keys:
            gone = self.service(key)
            self.lb_taken -= {ip for _, ip in gone.external_addresses}
            del self.services[key]

    # --- pods ---------------------------------------------------------------------------------

    def pod(self, name: str) -> PodRecord:
        if name not in self.pods:
            raise LabError(f"no pod {name!r}; pods are {sorted(self.pods)}")
        return self.pods[name]

    def running_pods(self, workload: str, node: str | None = None) -> list[PodInfo]:
        return [
            r.info
            for r in self.pods.values()
            if r.phase == "Running" and r.info.workload == workload and node in (None, r.info.node)
        ]

    def workload(self, name: str) -> WorkloadSpec:
        if name not in self.workloads:
            raise LabError(f"no workload {name!r}; workloads are {sorted(self.workloads)}")
        return self.workloads[name]

    def next_pod(self, workload: str) -> PodInfo:
        """A new pod on the least loaded allowed node, with a free address there."""
        spec = self.workload(workload)

        def own(node: str) -> int:
            return sum(
                1 for r in self.pods.values() if (r.info.node, r.info.workload) == (node, workload)
            )

        def load(node: str) -> int:
            return sum(1 for r in self.pods.values() if r.info.node == node)

        # As the default scheduler's topology spread does: the workload's own pods first
        # (replicas = allowed nodes puts one on each, whatever else runs there), then the
        # least loaded node. By total load alone, a node that other workloads (or earlier
        # churn) had filled got none, and a later scenario's Local health check failed.
        allowed = [n for n in self.topology.nodes if not spec.nodes or n.name in spec.nodes]
        node = min(allowed, key=lambda n: (own(n.name), load(n.name), n.index))
        base = int(node.pod_cidr.network_address)
        used = {int(r.info.ip) - base for r in self.pods.values() if r.info.node == node.name}
        # like the host-local IPAM plugin: continue after the last address handed out, so a
        # just-freed address (still in neighbour caches) is not reused at once
        last = self._last_host.get(node.name, max(used, default=1))
        hosts = list(range(2, node.pod_cidr.num_addresses - 1))
        order = [h for h in hosts if h > last] + [h for h in hosts if h <= last]
        host = next((h for h in order if h not in used), None)
        if host is None:
            raise LabError(f"node {node.name}'s pod range {node.pod_cidr} is full")
        self._last_host[node.name] = host
        names = set(self.pods)
        k = next(k for k in range(10_000) if f"{workload}-{node.name}-{k}" not in names)
        return self.topology.pod_info(spec, node, k, host)

    # --- export -------------------------------------------------------------------------------

    def objects(self) -> dict[str, Any]:
        """Services, EndpointSlices, Pods and Nodes as `kubectl get ... -o json` prints them."""
        items: list[dict[str, Any]] = []
        for state in self.service_states():
            items += [_service_object(state.service), _slice_object(state)]
        for record in self.pods.values():
            pod = record.info
            items.append(
                {
                    "apiVersion": "v1",
                    "kind": "Pod",
                    "metadata": {
                        "namespace": "default",
                        "name": pod.name,
                        "labels": {"app": pod.workload},
                    },
                    "spec": {
                        "nodeName": pod.node,
                        "containers": [
                            {
                                "name": "agnhost",
                                "ports": [
                                    {"containerPort": pod.port, "protocol": "TCP"},
                                    {"containerPort": pod.udp_port, "protocol": "UDP"},
                                ],
                            }
                        ],
                    },
                    "status": {
                        "phase": record.phase,
                        "podIP": str(pod.ip),
                        "conditions": [{"type": "Ready", "status": str(self._ready(record))}],
                    },
                }
            )
        for node in self.topology.nodes:
            ready = "False" if self.failed_nodes.get(node.name) else "True"
            items.append(
                {
                    "apiVersion": "v1",
                    "kind": "Node",
                    "metadata": {"name": node.name},
                    "spec": {"podCIDR": str(node.pod_cidr)},
                    "status": {
                        "addresses": [{"type": "InternalIP", "address": str(node.ip)}],
                        "conditions": [{"type": "Ready", "status": ready}],
                    },
                }
            )
        return {"apiVersion": "v1", "kind": "List", "items": items}

    def _ready(self, record: PodRecord) -> bool:
        up = not self.failed_nodes.get(record.info.node, False)
        return up and record.ready and record.phase == "Running"

    def status(self) -> dict[str, Any]:
        """Pods and Services for `kubelab status`."""
        return {
            "pods": [
                {
                    "name": r.info.name,
                    "workload": r.info.workload,
                    "node": r.info.node,
                    "ip": str(r.info.ip),
                    "port": r.info.port,
                    "udp_port": r.info.udp_port,
                    "netns": r.info.netns,
                    "phase": r.phase,
                    "ready": self._ready(r),
                }
                for r in self.pods.values()
            ],
            "services": [state.as_status() for state in self.service_states()],
        }


def _service_object(svc: Service) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "type": svc.type,
        "clusterIP": str(svc.cluster_ip) if svc.cluster_ip else "None",
        "ports": [
            _present(
                name=p.name,
                protocol=p.protocol,
                port=p.port,
                targetPort=p.target_port,
                nodePort=p.node_port,
            )
            for p in svc.ports
        ],
        "selector": {"app": svc.workload},
        "sessionAffinity": svc.session_affinity,
        "internalTrafficPolicy": svc.internal_traffic_policy,
    }
    if svc.session_affinity == "ClientIP":
        spec["sessionAffinityConfig"] = {
            "clientIP": {"timeoutSeconds": svc.session_affinity_timeout_s}
        }
    if svc.type != "ClusterIP":
        spec["externalTrafficPolicy"] = svc.external_traffic_policy
    if svc.health_check_node_port:
        spec["healthCheckNodePort"] = svc.health_check_node_port
    if svc.external_ips:
        spec["externalIPs"] = [str(ip) for ip in svc.external_ips]
    if svc.load_balancer_source_ranges:
        spec["loadBalancerSourceRanges"] = [str(r) for r in svc.load_balancer_source_ranges]
    status: dict[str, Any] = {"loadBalancer": {}}
    if svc.load_balancer_ips:
        status["loadBalancer"]["ingress"] = [
            {"ip": str(ip), "ipMode": "VIP"} for ip in svc.load_balancer_ips
        ]
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"namespace": svc.namespace, "name": svc.name},
        "spec": spec,
        "status": status,
    }


def _slice_object(state: ServiceState) -> dict[str, Any]:
    svc = state.service
    return {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {
            "namespace": svc.namespace,
            "name": f"{svc.name}-lab",
            "labels": {"kubernetes.io/service-name": svc.name},
        },
        "addressType": "IPv4",
        "ports": [
            _present(name=p.name, protocol=p.protocol, port=p.target_port) for p in svc.ports
        ],
        "endpoints": [
            {
                "addresses": [str(e.ip)],
                "nodeName": e.node,
                "targetRef": {"kind": "Pod", "name": e.pod},
                "conditions": {
                    "ready": e.ready,
                    "serving": e.serving,
                    "terminating": e.terminating,
                },
            }
            for e in state.endpoints
        ],
    }
