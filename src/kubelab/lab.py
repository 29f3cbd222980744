"""The Lab: what scenarios may do to any lab, whatever its substrate and dataplane.

A Lab is a substrate (where nodes live) plus a dataplane (who forwards packets) plus the
cluster state kube-proxy reads: Services, pods and their endpoint conditions, node health.
Its lifecycle is data (UP_STEPS); `down` removes everything, including what a crashed
earlier run left, so `up` starts with it.

Churn happens as in a cluster: the change is accepted, the endpoints (or Service) object
changes (at once, or after the detection delay for a pod that died or a node that failed),
and every node is re-synced. Each re-sync records its network-programming latency (change
published -> rules applied on every node), kube-proxy's network_programming_duration_seconds.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from kubelab.dataplanes.base import Dataplane
from kubelab.dataplanes.reference.dataplane import ReferenceDataplane
from kubelab.errors import EnvironmentMissing, LabError
from kubelab.hosts import CommandResult, Runner
from kubelab.model import Endpoint, Service, ServiceState, allocate_node_port, service_from_spec
from kubelab.spec import LabSpec, ServiceSpec, WorkloadSpec
from kubelab.substrates.base import Substrate
from kubelab.substrates.netns import NetnsSubstrate
from kubelab.topology import PodInfo, Topology

STATE_ROOT = Path(os.environ.get("KUBELAB_STATE_DIR", "/run/kubelab"))
NETNS_TOOLS = ("ip", "iptables-restore", "iptables-save", "ssh", "ssh-keygen", "conntrack")
MODE_TOOLS = {"nftables": ("nft",), "ipvs": ("ipvsadm", "ipset")}

Progress = Callable[[str], None]
Phase = Literal["Running", "Terminating", "Dead"]


def _quiet(_: str) -> None:
    pass


def check_environment(spec: LabSpec) -> None:
    """Stop with one line, before building anything, when the machine cannot run the lab."""
    if spec.substrate.kind == "netns":
        if os.geteuid() != 0:
            raise EnvironmentMissing(
                "the netns lab needs root (network namespaces, iptables); "
                "run as root, e.g. with sudo"
            )
        mode = spec.dataplane.proxy_mode
        missing = [t for t in (*NETNS_TOOLS, *MODE_TOOLS.get(mode, ())) if shutil.which(t) is None]
        if missing:
            raise EnvironmentMissing(
                f"missing tools: {', '.join(missing)}; install the Debian "
                "packages iproute2 iptables nftables conntrack ipset ipvsadm "
                "openssh-client openssh-server"
            )
        if not Path("/usr/sbin/sshd").exists():
            raise EnvironmentMissing("/usr/sbin/sshd is missing; install openssh-server")
        if mode == "ipvs" and not Path("/proc/net/ip_vs").exists():
            raise EnvironmentMissing(
                "dataplane.proxy_mode ipvs needs the kernel's ip_vs, and this kernel has none "
                "(no /proc/net/ip_vs); run IPVS labs in VMs, or use iptables or nftables here"
            )


def _present(**fields: Any) -> dict[str, Any]:
    """The fields that are set, as the API server omits unset ones."""
    return {k: v for k, v in fields.items() if v is not None}


@dataclass
class PodRecord:
    info: PodInfo
    phase: Phase = "Running"
    death_noticed: bool = False  # the endpoints controller has seen that it died


@dataclass(frozen=True)
class ProgrammingEvent:
    change: str
    published_at: float  # time.time() when the changed object was published
    seconds: float  # published -> rules applied on every node


class Lab:
    UP_STEPS = ("remove leftovers", "nodes and node network", "pods, pod network and rules")

    def __init__(self, spec: LabSpec, state_root: Path = STATE_ROOT) -> None:
        self.spec = spec
        self.topology = Topology(spec)
        self.state_dir = state_root / spec.lab_id
        self.substrate: Substrate = NetnsSubstrate(self.topology, self.state_dir)
        self.dataplane: Dataplane = ReferenceDataplane(self.substrate, spec.dataplane)
        self.detection_delay = spec.dataplane.endpoint_detection_delay_s
        self.services: dict[str, Service] = {}
        self._taken_ports = {p.node_port for s in spec.services for p in s.ports if p.node_port}
        self._taken_ports |= {
            s.health_check_node_port for s in spec.services if s.health_check_node_port
        }
        for i, svc_spec in enumerate(spec.services):
            svc = service_from_spec(svc_spec, i, spec, self._taken_ports)
            self.services[svc.key] = svc
        self.pods: dict[str, PodRecord] = {p.name: PodRecord(p) for p in self.topology.pods}
        self.failed_nodes: dict[str, bool] = {}  # node -> failure noticed
        self._last_host: dict[str, int] = {}  # node -> last pod address offset handed out
        self.workloads: dict[str, WorkloadSpec] = {w.name: w for w in spec.workloads}
        self.programming: list[ProgrammingEvent] = []
        self.save_status = True  # benchmarks with 10,000s of Services turn this off
        self._lock = threading.RLock()
        self._timers: list[threading.Thread] = []

    # --- lifecycle ----------------------------------------------------------------------------

    def up(self, progress: Progress = _quiet) -> None:
        check_environment(self.spec)
        pods = [r.info for r in self.pods.values()]
        steps: Sequence[tuple[str, Callable[[], None]]] = (
            (self.UP_STEPS[0], self.substrate.down),
            (self.UP_STEPS[1], self.substrate.up),
            (self.UP_STEPS[2], lambda: self.dataplane.up(self.service_states(), pods)),
        )
        try:
            for label, step in steps:
                progress(label)
                step()
            self._save_state()
        except BaseException:
            self.down()
            raise

    def down(self) -> None:
        self.settle()
        self.substrate.down()
        self.dataplane.down()

    def exists(self) -> bool:
        return self.substrate.exists()

    def settle(self, timeout: float = 60.0) -> None:
        """Wait for every delayed change (detections, graceful deletes) to be applied."""
        deadline = time.monotonic() + timeout
        for thread in list(self._timers):
            thread.join(max(0.0, deadline - time.monotonic()))
        self._timers = [t for t in self._timers if t.is_alive()]

    # --- endpoints ----------------------------------------------------------------------------

    def endpoints_of(self, service: Service) -> tuple[Endpoint, ...]:
        """The Service's EndpointSlice as the control plane would publish it now."""
        out = []
        for record in self.pods.values():
            pod = record.info
            if pod.workload != service.workload:
                continue
            if record.phase == "Dead" and record.death_noticed:
                continue  # the endpoints controller removed it
            up = not self.failed_nodes.get(pod.node, False)
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

    def service(self, key: str) -> Service:
        if key not in self.services:
            raise LabError(f"no Service {key!r}; Services are {sorted(self.services)}")
        return self.services[key]

    def service_state(self, key: str) -> ServiceState:
        svc = self.service(key)
        return ServiceState(svc, self.endpoints_of(svc))

    def service_states(self) -> list[ServiceState]:
        return [self.service_state(key) for key in self.services]

    def sync(self, change: str, published_at: float | None = None) -> ProgrammingEvent:
        """Re-program every node and record the network-programming latency."""
        with self._lock:
            published = published_at if published_at is not None else time.time()
            self.dataplane.sync(self.service_states())
            event = ProgrammingEvent(change, published, time.time() - published)
            self.programming.append(event)
            self._save_state()
            return event

    def _later(self, delay: float, action: Callable[[], None]) -> None:
        def run() -> None:
            time.sleep(delay)
            action()

        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        self._timers.append(thread)

    # --- Services -----------------------------------------------------------------------------

    def create_service(self, spec: ServiceSpec) -> ProgrammingEvent:
        return self.create_services([spec])

    def create_services(self, specs: Sequence[ServiceSpec]) -> ProgrammingEvent:
        """Create Services and program them in one sync (as one kube-proxy sync would)."""
        with self._lock:
            for spec in specs:
                svc = service_from_spec(spec, 0, self.spec, self._taken_ports)
                if svc.key in self.services:
                    raise LabError(f"Service {svc.key} exists; delete it or pick another name")
                if spec.cluster_ip is None:
                    svc = svc.with_changes(cluster_ip=self._free_cluster_ip())
                self.services[svc.key] = svc
            names = ", ".join(f"{s.namespace}/{s.name}" for s in specs[:3])
            more = f" (+{len(specs) - 3} more)" if len(specs) > 3 else ""
            return self.sync(f"create Service {names}{more}")

    def _free_cluster_ip(self) -> Any:
        used = {s.cluster_ip for s in self.services.values()}
        net = self.spec.network.service_cidr
        for offset in range(10, net.num_addresses - 1):
            if net.network_address + offset not in used:
                return net.network_address + offset
        raise LabError(f"service_cidr {net} is full")

    def update_service(self, key: str, **changes: Any) -> float:
        """Change a Service (e.g. external_traffic_policy="Local") and re-sync every node.
        Returns the network-programming latency in seconds."""
        with self._lock:
            svc = self.service(key).with_changes(**changes)
            if svc.external_local and svc.health_check_node_port is None:
                svc = svc.with_changes(health_check_node_port=allocate_node_port(self._taken_ports))
            if not svc.external_local and svc.health_check_node_port is not None:
                self._taken_ports.discard(svc.health_check_node_port)
                svc = svc.with_changes(health_check_node_port=None)
            self.services[key] = svc
            return self.sync(f"update Service {key}: {changes}").seconds

    def delete_service(self, key: str) -> ProgrammingEvent:
        return self.delete_services([key])

    def delete_services(self, keys: Sequence[str]) -> ProgrammingEvent:
        with self._lock:
            for key in keys:
                self.service(key)
                del self.services[key]
            more = f" (+{len(keys) - 3} more)" if len(keys) > 3 else ""
            return self.sync(f"delete Service {', '.join(keys[:3])}{more}")

    def nodeport_target(self, key: str, node: str, port_name: str | None = None) -> tuple[str, int]:
        port = self.service(key).port_by_name(port_name)
        if port.node_port is None:
            raise LabError(f"Service {key} port {port.name or port.port} has no NodePort")
        return str(self.topology.node(node).ip), port.node_port

    def clusterip_target(self, key: str, port_name: str | None = None) -> tuple[str, int]:
        svc = self.service(key)
        if svc.cluster_ip is None:
            raise LabError(f"Service {key} is headless; it has no ClusterIP")
        return str(svc.cluster_ip), svc.port_by_name(port_name).port

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

    def kill_pod(self, name: str) -> None:
        """The pod's process dies now; its endpoint leaves the rules after the detection
        delay, as when the endpoints controller notices a failed pod."""
        with self._lock:
            record = self.pod(name)
            self.dataplane.kill_pod(record.info)
            record.phase = "Dead"

        def notice() -> None:
            with self._lock:
                record.death_noticed = True
                published = time.time()
                self.sync(f"pod {name} died", published)
                self.dataplane.remove_pod(record.info)
                self.pods.pop(name, None)

        self._later(self.detection_delay, notice)

    def delete_pod(self, name: str, grace_s: float = 1.0, wait: bool = True) -> None:
        """Graceful delete: the endpoint turns terminating and leaves the rules first; after
        `grace_s` the pod stops accepting, finishes open requests, and goes away."""
        with self._lock:
            record = self.pod(name)
            record.phase = "Terminating"
            self.sync(f"pod {name} terminating")

        def finish() -> None:
            self.dataplane.stop_pod(record.info)
            with self._lock:
                self.dataplane.remove_pod(record.info)
                self.pods.pop(name, None)
                self.sync(f"pod {name} deleted")

        if wait:
            time.sleep(grace_s)
            finish()
        else:
            self._later(grace_s, finish)

    def create_workload(self, spec: WorkloadSpec) -> None:
        """Add a workload and its pods while the lab runs (as `kubectl create deployment`)."""
        with self._lock:
            if spec.name in self.workloads:
                raise LabError(f"workload {spec.name!r} exists; pick another name")
            self.workloads[spec.name] = spec
        total = (
            spec.replicas
            if spec.replicas is not None
            else ((spec.pods_per_node or 0) * len(self.topology.nodes))
        )
        self.scale(spec.name, total)

    def delete_workload(self, name: str) -> None:
        """Delete every pod of the workload gracefully, then the workload."""
        try:
            self.scale(name, 0)
            self.settle()
        finally:
            self.workloads.pop(name, None)

    def scale(self, workload: str, replicas: int) -> None:
        """Add pods on the least loaded allowed nodes, or delete the newest gracefully."""
        if workload not in self.workloads:
            raise LabError(f"no workload {workload!r}; workloads are {sorted(self.workloads)}")
        current = self.running_pods(workload)
        if replicas < len(current):
            for pod in current[replicas:][::-1]:
                self.delete_pod(pod.name, grace_s=0.2)
            return
        with self._lock:
            for _ in range(replicas - len(current)):
                pod = self._next_pod(workload)
                self.dataplane.add_pod(pod)
                self.pods[pod.name] = PodRecord(pod)
            self.sync(f"scale {workload} to {replicas}")

    def _next_pod(self, workload: str) -> PodInfo:
        spec = self.workloads[workload]

        def load(node: str) -> int:
            return sum(1 for r in self.pods.values() if r.info.node == node)

        allowed = [n for n in self.topology.nodes if not spec.nodes or n.name in spec.nodes]
        node = min(allowed, key=lambda n: (load(n.name), n.index))
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
        names = {r.info.name for r in self.pods.values()}
        k = next(k for k in range(10_000) if f"{workload}-{node.name}-{k}" not in names)
        return self.topology.pod_info(spec, node, k, host)

    # --- nodes --------------------------------------------------------------------------------

    def fail_node(self, name: str) -> None:
        """Unplug the node now; its endpoints turn not-ready after the detection delay."""
        self.topology.node(name)
        self.substrate.set_node_link(name, up=False)
        self.failed_nodes[name] = False

        def notice() -> None:
            with self._lock:
                self.failed_nodes[name] = True
                self.sync(f"node {name} not ready", time.time())

        self._later(self.detection_delay, notice)

    def heal_node(self, name: str) -> None:
        self.substrate.set_node_link(name, up=True)

        def notice() -> None:
            with self._lock:
                self.failed_nodes.pop(name, None)
                self.sync(f"node {name} ready", time.time())

        self._later(self.detection_delay, notice)

    # --- members ------------------------------------------------------------------------------

    def runner(self, member: str) -> Runner:
        return self.substrate.runner(member)

    def exec(self, member: str, argv: Sequence[str], timeout: float = 60) -> CommandResult:
        return self.runner(member).run(argv, check=False, timeout=timeout)

    def dump_rules(self, node: str) -> str:
        return self.dataplane.dump_rules(node)

    def clear_time_wait(self, port: int) -> int:
        """Delete TCP conntrack entries in TIME_WAIT for destination `port` on every node;
        returns how many there were. A new connection that reuses the 5-tuple of such an
        entry reopens it and keeps its old NAT decision, whatever the rules say now; a
        scenario that needs every probe to be a new flow clears them first."""
        cleared = 0
        for node in self.topology.nodes:
            result = self.exec(
                node.name,
                ["conntrack", "-D", "-p", "tcp", "--dport", str(port), "--state", "TIME_WAIT"],
            )
            match = re.search(r"(\d+) flow entries have been deleted", result.stderr)
            cleared += int(match.group(1)) if match else 0
        return cleared

    def node_addresses(self, node: str) -> set[str]:
        return self.dataplane.node_addresses(node)

    @property
    def ssh_config(self) -> Path:
        return self.substrate.ssh_config

    def status(self) -> dict[str, Any]:
        """Nodes, pods, client and Services with addresses and namespaces (`kubelab status`)."""
        topo = self.topology
        return {
            "lab": self.spec.lab_id,
            "up": self.exists(),
            "substrate": self.spec.substrate.kind,
            "dataplane": self.spec.dataplane.kind,
            "proxy_mode": self.dataplane.proxy_mode,
            "pod_network": self.dataplane.cni[1],
            "state_dir": str(self.state_dir),
            "ssh_config": str(self.ssh_config),
            "nodes": [
                {
                    "name": n.name,
                    "ip": str(n.ip),
                    "pod_cidr": str(n.pod_cidr),
                    "netns": n.netns,
                    "failed": n.name in self.failed_nodes,
                }
                for n in topo.nodes
            ],
            "client": {
                "name": topo.client.name,
                "ip": str(topo.client.ip),
                "netns": topo.client.netns,
            },
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
                }
                for r in self.pods.values()
            ],
            "services": [
                {
                    "name": s.key,
                    "type": s.type,
                    "cluster_ip": str(s.cluster_ip) if s.cluster_ip else "None",
                    "external_traffic_policy": s.external_traffic_policy,
                    "internal_traffic_policy": s.internal_traffic_policy,
                    "session_affinity": s.session_affinity,
                    "health_check_node_port": s.health_check_node_port,
                    "ports": [
                        {
                            "name": p.name,
                            "protocol": p.protocol,
                            "port": p.port,
                            "target_port": p.target_port,
                            "node_port": p.node_port,
                        }
                        for p in s.ports
                    ],
                    "endpoints": [
                        {
                            "address": e.address,
                            "node": e.node,
                            "ready": e.ready,
                            "terminating": e.terminating,
                        }
                        for e in st.endpoints
                    ],
                }
                for st in self.service_states()
                for s in [st.service]
            ],
        }

    def objects(self) -> dict[str, Any]:
        """Services and EndpointSlices as `kubectl get svc,endpointslices -A -o json` prints
        them, so the rule auditor computes the expected table the same way for labs and
        for real clusters."""
        items: list[dict[str, Any]] = []
        for state in self.service_states():
            svc = state.service
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
                "sessionAffinity": svc.session_affinity,
                "internalTrafficPolicy": svc.internal_traffic_policy,
            }
            if svc.session_affinity == "ClientIP":
                spec["sessionAffinityConfig"] = {
                    "clientIP": {"timeoutSeconds": svc.session_affinity_timeout_s}
                }
            if svc.type == "NodePort":
                spec["externalTrafficPolicy"] = svc.external_traffic_policy
            if svc.health_check_node_port:
                spec["healthCheckNodePort"] = svc.health_check_node_port
            items.append(
                {
                    "apiVersion": "v1",
                    "kind": "Service",
                    "metadata": {"namespace": svc.namespace, "name": svc.name},
                    "spec": spec,
                }
            )
            items.append(
                {
                    "apiVersion": "discovery.k8s.io/v1",
                    "kind": "EndpointSlice",
                    "metadata": {
                        "namespace": svc.namespace,
                        "name": f"{svc.name}-lab",
                        "labels": {"kubernetes.io/service-name": svc.name},
                    },
                    "addressType": "IPv4",
                    "ports": [
                        _present(name=p.name, protocol=p.protocol, port=p.target_port)
                        for p in svc.ports
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
            )
        return {"apiVersion": "v1", "kind": "List", "items": items}

    # --- saved state (so `kubelab status` in another process sees run-time changes) ------------

    @property
    def state_file(self) -> Path:
        return self.state_dir / "status.json"

    def _save_state(self) -> None:
        if self.state_dir.exists() and self.save_status:
            tmp = self.state_file.with_suffix(".tmp")
            tmp.write_text(json.dumps(self.status(), indent=1))
            os.replace(tmp, self.state_file)

    def saved_status(self) -> dict[str, Any]:
        """What the process running the lab last saved, or the spec's view if none."""
        try:
            saved: dict[str, Any] = json.loads(self.state_file.read_text())
        except (OSError, ValueError):
            return self.status()
        saved["up"] = self.exists()
        return saved
