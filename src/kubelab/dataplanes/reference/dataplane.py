"""The reference dataplane: kubelab's own control plane (cluster.py), pod network
(network.py), pod servers (pods.py) and kube-proxy-layout proxier (proxier/).

It reaches every node only through the substrate's Runner, so the same code runs in
namespaces on this kernel, in VMs and on hosts over SSH. Churn happens as in a cluster:
the change is accepted, the endpoints (or Service) object changes (at once, or after the
detection delay for a pod that died or a node that failed), and every node is re-synced;
each re-sync records its network-programming latency.
"""

from __future__ import annotations

import contextlib
import re
import threading
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field, model_validator

from kubelab.dataplanes.base import Dataplane, ProgrammingEvent, Progress
from kubelab.dataplanes.reference import network
from kubelab.dataplanes.reference.announcer import Announcer, announcements
from kubelab.dataplanes.reference.cluster import ClusterState, PodRecord
from kubelab.dataplanes.reference.kube_proxy_duties import HealthChecks, stale_udp_flows
from kubelab.dataplanes.reference.pods import PodServers
from kubelab.dataplanes.reference.proxier import Proxier, ProxierContext, proxier_for
from kubelab.errors import LabError
from kubelab.hosts import Runner, kill_under, missing_commands
from kubelab.model import Service, ServiceState
from kubelab.naming import member_dir
from kubelab.parallel import for_each
from kubelab.spec_common import DataplaneOptions, ServiceSpec, WorkloadSpec
from kubelab.substrates.base import Substrate
from kubelab.topology import NodeInfo, PodInfo

if TYPE_CHECKING:
    from kubelab.spec import LabSpec


class ReferenceOptions(DataplaneOptions):
    """kubelab's own pod network plus a proxier that writes kube-proxy's rule layout."""

    kind: Literal["reference"]
    proxy_mode: Literal["iptables", "nftables", "ipvs"] = "iptables"
    # IPVS scheduler (kube-proxy's --ipvs-scheduler); only read in ipvs mode
    scheduler: Literal["rr", "wrr", "lc", "wlc", "lblc", "lblcr", "sh", "dh", "sed", "nq", "mh"] = (
        "rr"
    )
    pod_network: Literal["host-gw", "vxlan"] = "host-gw"
    endpoint_detection_delay_s: float = Field(1.0, ge=0, le=300)

    @model_validator(mode="after")
    def _scheduler_needs_ipvs(self) -> ReferenceOptions:
        if "scheduler" in self.model_fields_set and self.proxy_mode != "ipvs":
            raise ValueError(
                f"scheduler {self.scheduler!r} is read only in proxy_mode ipvs; remove it or "
                "set proxy_mode: ipvs"
            )
        return self


class ReferenceDataplane(Dataplane):
    kind = "reference"
    Options = ReferenceOptions

    def __init__(self, spec: LabSpec, substrate: Substrate) -> None:
        super().__init__(spec, substrate)
        assert isinstance(spec.dataplane, ReferenceOptions)
        self.options = spec.dataplane
        node_ips = {n.name: str(n.ip) for n in self.nodes}
        self.proxier: Proxier = proxier_for(
            self.options.proxy_mode, self.options.scheduler, node_ips
        )
        self.cluster = ClusterState(spec, self.topology)
        self.servers = PodServers(spec.lab_id, substrate.runner)
        self.health = HealthChecks(self.servers)
        self.announcer = Announcer()
        self._last: list[ServiceState] = []
        self._lock = threading.RLock()
        self._timers: list[threading.Thread] = []
        self._stopped_proxies: set[str] = set()  # nodes whose proxier does not sync
        self._synced_at: dict[str, float] = {}  # node -> when its proxier last synced
        self._sync_seconds: dict[str, float] = {}  # node -> how long that sync took

    @property
    def cni(self) -> tuple[str, str]:
        return ("reference", self.options.pod_network)

    def plan(self) -> dict[str, Any]:
        o = self.options
        return {
            "kind": self.kind,
            "proxy_mode": o.proxy_mode,
            **({"scheduler": o.scheduler} if o.proxy_mode == "ipvs" else {}),
            "rule_layout": self.proxier.layout,
            "pod_network": f"{o.pod_network}: a bridge per node, {self.spec.network.pod_cidr} "
            f"in /{self.spec.network.node_pod_prefix} slices",
            "pods": [
                f"{p.info.name} {p.info.ip} on {p.info.node}" for p in self.cluster.pods.values()
            ],
            "services": [f"{s.namespace}/{s.name} {s.type}" for s in self.spec.services],
        }

    def provenance(self) -> dict[str, Any]:
        return {"proxier_layout": {self.proxy_mode: self.proxier.layout}}  # merged per mode

    def _folder(self, node: str) -> str:
        return member_dir(self.spec.lab_id, node)

    def _others(self, node: NodeInfo) -> list[NodeInfo]:
        return [n for n in self.nodes if n.name != node.name]

    # --- lifecycle ----------------------------------------------------------------------------

    def check(self) -> list[str]:
        """Tools, the interpreter and the mode's kernel features on every node, Locust on
        the client. One line per missing thing; nodes that lack the same thing share it."""
        missing: dict[str, list[str]] = {}  # what is missing -> the members lacking it
        for node in self.nodes:
            runner = self.substrate.probe_runner(node.name)
            absent = missing_commands(runner, [*network.TOOLS, runner.python])
            if absent:
                packages = "iproute2 procps python3"
                lack = f"missing {', '.join(absent)}; install the Debian packages {packages}"
                missing.setdefault(lack, []).append(node.name)
            for line in self.proxier.check(runner):
                missing.setdefault(line, []).append(node.name)
        client = self.substrate.probe_runner(self.topology.client.name)
        find = "import importlib.util as u, sys; sys.exit(u.find_spec('locust') is None)"
        if not client.run([client.python, "-c", find], check=False).ok:
            lack = (
                f"{client.python} cannot import locust; install it for that interpreter "
                "(pip install locust) or set ansible_python_interpreter"
            )
            missing.setdefault(lack, []).append(client.name)
        return [f"{', '.join(members)}: {lack}" for lack, members in missing.items()]

    def up(self, progress: Progress) -> None:
        """Every node, side by side: its CNI (bridge, routes, pods), its pod server, then
        its kube-proxy's first sync, as a node that joins a cluster does."""
        pods = [r.info for r in self.cluster.pods.values()]
        progress("pod network, pods, their servers and rules")

        def bring_up(node: NodeInfo) -> None:
            runner = self.substrate.runner(node.name)
            folder = self._folder(node.name)
            network.setup_node(
                runner,
                node,
                self._others(node),
                self.options.pod_network,
                self.spec.network.service_cidr,
                folder,
            )
            network.add_pods(
                runner, node, [p for p in pods if p.node == node.name], self.options.pod_network
            )
            if not self.substrate.disposable:
                self.proxier.save_host_rules(runner, folder)
            self.servers.launch(node, pods)  # its start-up overlaps the rest
            self._program(node, services)

        with self._lock:
            published, services = time.time(), self.cluster.service_states()
            for_each(self.nodes, bring_up)
            self.servers.wait_ready()
            self._synced("lab up", published, services)

    def down(self) -> None:
        self.settle()
        self.servers.stop()
        if not self.substrate.disposable:
            for node in self.nodes:
                try:
                    runner = self.substrate.runner(node.name)
                    folder = self._folder(node.name)
                    kill_under(runner, folder)  # the pod server holds the pods' sockets
                    network.clean_node(runner, self.spec.lab_id, self._others(node), folder)
                    self.proxier.restore_host_rules(runner, folder)
                except Exception:
                    continue
        if not self.substrate.disposable:
            with contextlib.suppress(Exception):  # best effort, as for the nodes above
                self.announcer.clear(self._client())
        self.announcer = Announcer()
        self.proxier.forget()
        self._last = []
        self.health.forget()

    def _client(self) -> Runner:
        return self.substrate.runner(self.topology.client.name)

    def settle(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        for thread in list(self._timers):
            thread.join(max(0.0, deadline - time.monotonic()))
        self._timers = [t for t in self._timers if t.is_alive()]

    def _later(self, delay: float, action: Callable[[], None]) -> None:
        def run() -> None:
            time.sleep(delay)
            action()

        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        self._timers.append(thread)

    # --- programming the nodes ----------------------------------------------------------------

    def sync(self, change: str, published_at: float | None = None) -> ProgrammingEvent:
        """Re-program every node and record the network-programming latency."""
        with self._lock:
            published = published_at if published_at is not None else time.time()
            services = self.cluster.service_states()
            # a stopped proxy's node keeps the rules it last had; the others sync at once,
            # each node's kube-proxy on its own, so a node's latency is its own sync's
            live = [node for node in self.nodes if node.name not in self._stopped_proxies]
            for_each(live, lambda node: self._program(node, services))
            return self._synced(change, published, services)

    def _program(self, node: NodeInfo, services: list[ServiceState]) -> None:
        ctx = ProxierContext(
            node=node.name,
            cluster_cidr=self.spec.network.pod_cidr,
            service_cidr=self.spec.network.service_cidr,
        )
        started = time.time()
        self.proxier.sync(self.substrate.runner(node.name), services, ctx)
        self._synced_at[node.name] = done = time.time()
        self._sync_seconds[node.name] = done - started

    def _synced(
        self, change: str, published: float, services: list[ServiceState]
    ) -> ProgrammingEvent:
        """What follows a sync of the nodes: stale UDP flows, health checks, the event."""
        for args in stale_udp_flows(self._last, services):
            for node in self.nodes:
                # exit 1 = "0 flow entries have been deleted": nothing stale, fine
                self.substrate.runner(node.name).run(["conntrack", "-D", *args], check=False)
        self.health.sync(self.nodes, services)
        self.announcer.sync(self._client(), announcements(services, self.nodes))
        self._last = services
        loaded = {n: t for n, t in self._synced_at.items() if t >= published}
        event = ProgrammingEvent(
            change,
            published,
            time.time() - published,
            per_node={n: t - published for n, t in loaded.items()},
            node_sync={n: self._sync_seconds[n] for n in loaded},
        )
        self.programming.append(event)
        self._save_status()
        return event

    def restart_proxy(self, scheduler: str) -> ProgrammingEvent:
        """kube-proxy restarted with another IPVS scheduler: it reconciles what the nodes
        hold, so each virtual server is edited in place (`ipvsadm -E`), none removed."""
        if self.proxy_mode != "ipvs":
            raise LabError(f"an IPVS scheduler means nothing in proxy mode {self.proxy_mode}")
        with self._lock:
            self.proxier.scheduler = scheduler
            return self.sync(f"kube-proxy restarted with --ipvs-scheduler={scheduler}")

    def set_proxy_running(self, node: str, running: bool) -> None:
        """The node's proxier stops (kube-proxy crashed there: its rules stay as they are
        while the cluster changes) or starts again (it reconciles the node's rules at once,
        trusting nothing it wrote before)."""
        self.topology.node(node)
        with self._lock:
            if running:
                self._stopped_proxies.discard(node)
                self.proxier.forget()
                self.sync(f"proxier on {node} started")
            else:
                self._stopped_proxies.add(node)
                self._save_status()

    def proxy_health(self) -> dict[str, dict[str, Any]]:
        """Per node, what kube-proxy's /healthz tells: running, and when it last synced;
        `changes_since` counts cluster changes its rules do not carry yet."""
        return {
            node.name: {
                "running": node.name not in self._stopped_proxies,
                "last_sync": self._synced_at.get(node.name),
                "changes_since": sum(
                    1
                    for e in self.programming
                    if e.published_at > self._synced_at.get(node.name, 0.0)
                ),
            }
            for node in self.nodes
        }

    def _save_status(self) -> None:
        for listener in self.after_sync:
            listener()

    def full_sync(self) -> float:
        """Forget incremental state and load every node's whole ruleset (benchmarks)."""
        self.proxier.forget()
        started = time.perf_counter()
        self.sync("full sync")
        return time.perf_counter() - started

    @property
    def last_apply_seconds(self) -> float | None:
        """The last apply step alone, in modes that time it (nftables: the nft -f)."""
        return self.proxier.last_apply_seconds

    def render_rules(self, node: str) -> str:
        """The text a full sync would load on `node` (benchmarks load it alone)."""
        ctx = ProxierContext(
            node=node,
            cluster_cidr=self.spec.network.pod_cidr,
            service_cidr=self.spec.network.service_cidr,
        )
        return self.proxier.render(self.cluster.service_states(), ctx)

    # --- Services -----------------------------------------------------------------------------

    def create_services(self, specs: Sequence[ServiceSpec]) -> ProgrammingEvent:
        with self._lock:
            self.cluster.add_services(list(specs))
            names = ", ".join(f"{s.namespace}/{s.name}" for s in specs[:3])
            more = f" (+{len(specs) - 3} more)" if len(specs) > 3 else ""
            return self.sync(f"create Service {names}{more}")

    def update_service(self, key: str, **changes: Any) -> float:
        with self._lock:
            self.cluster.change_service(key, changes)
            return self.sync(f"update Service {key}: {changes}").seconds

    def delete_services(self, keys: Sequence[str]) -> ProgrammingEvent:
        with self._lock:
            self.cluster.remove_services(list(keys))
            more = f" (+{len(keys) - 3} more)" if len(keys) > 3 else ""
            return self.sync(f"delete Service {', '.join(keys[:3])}{more}")

    def service(self, key: str) -> Service:
        return self.cluster.service(key)

    def service_states(self) -> list[ServiceState]:
        return self.cluster.service_states()

    def objects(self) -> dict[str, Any]:
        return self.cluster.objects()

    def status(self) -> dict[str, Any]:
        return {**self.cluster.status(), "proxies": self.proxy_health()}

    def set_pod_ready(self, name: str, ready: bool) -> None:
        """The pod's readiness probe starts failing (or passing again); its endpoint follows
        once the kubelet has noticed, after the detection delay."""
        record = self.cluster.pod(name)

        def notice() -> None:
            with self._lock:
                record.ready = ready
                self.sync(f"pod {name} {'ready' if ready else 'not ready'}", time.time())

        self._later(self.options.endpoint_detection_delay_s, notice)

    # --- pods ---------------------------------------------------------------------------------

    def running_pods(self, workload: str, node: str | None = None) -> list[PodInfo]:
        return self.cluster.running_pods(workload, node)

    def has_pod(self, name: str) -> bool:
        return name in self.cluster.pods

    def pod_runner(self, name: str) -> Runner:
        pod = self.cluster.pod(name).info
        return self.substrate.runner(pod.node).inside(pod.netns, name)

    def _remove_pod(self, pod: PodInfo) -> None:
        network.remove_pod(self.substrate.runner(pod.node), pod)

    def kill_pod(self, name: str) -> None:
        with self._lock:
            record = self.cluster.pod(name)
            self.servers.call(self.topology.node(record.info.node), op="kill", name=name)
            record.phase = "Dead"

        def notice() -> None:
            with self._lock:
                record.death_noticed = True
                self.sync(f"pod {name} died", time.time())
                self._remove_pod(record.info)
                self.cluster.pods.pop(name, None)

        self._later(self.options.endpoint_detection_delay_s, notice)

    def delete_pod(self, name: str, grace_s: float = 1.0, wait: bool = True) -> None:
        with self._lock:
            record = self.cluster.pod(name)
            record.phase = "Terminating"
            self.sync(f"pod {name} terminating")

        def finish() -> None:
            self.servers.call(self.topology.node(record.info.node), op="stop", name=name)
            with self._lock:
                self._remove_pod(record.info)
                self.cluster.pods.pop(name, None)
                self.sync(f"pod {name} deleted")

        if wait:
            time.sleep(grace_s)
            finish()
        else:
            self._later(grace_s, finish)

    def create_workload(self, spec: WorkloadSpec) -> None:
        with self._lock:
            if spec.name in self.cluster.workloads:
                raise LabError(f"workload {spec.name!r} exists; pick another name")
            self.cluster.workloads[spec.name] = spec
        per_node = (spec.pods_per_node or 0) * len(self.nodes)
        self.scale(spec.name, spec.replicas if spec.replicas is not None else per_node)

    def delete_workload(self, name: str) -> None:
        try:
            self.scale(name, 0)
            self.settle()
        finally:
            self.cluster.workloads.pop(name, None)

    def scale(self, workload: str, replicas: int) -> None:
        """Add pods on the least loaded allowed nodes, or delete the newest gracefully."""
        self.cluster.workload(workload)
        current = self.cluster.running_pods(workload)
        if replicas < len(current):
            for pod in current[replicas:][::-1]:
                self.delete_pod(pod.name, grace_s=0.2)
            return
        with self._lock:
            for _ in range(replicas - len(current)):
                pod = self.cluster.next_pod(workload)
                node = self.topology.node(pod.node)
                network.add_pods(
                    self.substrate.runner(pod.node), node, [pod], self.options.pod_network
                )
                self.servers.call(
                    node,
                    op="add",
                    name=pod.name,
                    netns=pod.netns,
                    port=pod.port,
                    udp_port=pod.udp_port,
                )
                self.cluster.pods[pod.name] = PodRecord(pod)
            self.sync(f"scale {workload} to {replicas}")

    # --- nodes --------------------------------------------------------------------------------

    def fail_node(self, name: str) -> None:
        """Unplug the node now; its endpoints turn not-ready after the detection delay."""
        self.topology.node(name)
        self.substrate.set_node_link(name, up=False)
        self.cluster.failed_nodes[name] = False

        def notice() -> None:
            with self._lock:
                self.cluster.failed_nodes[name] = True
                self.sync(f"node {name} not ready", time.time())

        self._later(self.options.endpoint_detection_delay_s, notice)

    def heal_node(self, name: str) -> None:
        self.substrate.set_node_link(name, up=True)

        def notice() -> None:
            with self._lock:
                self.cluster.failed_nodes.pop(name, None)
                self.sync(f"node {name} ready", time.time())

        self._later(self.options.endpoint_detection_delay_s, notice)

    # --- inspection ---------------------------------------------------------------------------

    @property
    def dump_command(self) -> tuple[str, ...]:
        return self.proxier.dump_command

    def dump_rules(self, node: str) -> str:
        return self.proxier.dump(self.substrate.runner(node))

    def count_rules(self, node: str) -> dict[str, int]:
        return self.proxier.count_rules(self.substrate.runner(node))

    def node_addresses(self, node: str) -> set[str]:
        return network.node_addresses(self.topology.node(node), self.options.pod_network)

    def clear_time_wait(self, port: int, every_state: bool = False) -> int:
        """A new connection that reuses the 5-tuple of a TIME_WAIT entry reopens it and keeps
        its old NAT decision, whatever the rules say now; a scenario that needs every probe
        to be a new flow clears them first (with `every_state`, entries of half-closed or
        lingering connections too). Returns how many there were."""
        state = [] if every_state else ["--state", "TIME_WAIT"]
        cleared = 0
        for node in self.nodes:
            result = self.substrate.runner(node.name).run(
                ["conntrack", "-D", "-p", "tcp", "--dport", str(port), *state], check=False
            )
            match = re.search(r"(\d+) flow entries have been deleted", result.stderr)
            cleared += int(match.group(1)) if match else 0
        return cleared
