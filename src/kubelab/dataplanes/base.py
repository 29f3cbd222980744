"""Who forwards packets, and the cluster verbs scenarios use. One abstract base; one
concrete dataplane per file, named in `dataplanes/registry.py`.

A dataplane owns the cluster's state (Services, pods, endpoint conditions) and programs
the nodes, which it reaches only through the substrate's Runners. A dataplane backed by a
real API server implements the same verbs with the Kubernetes client.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

from kubelab.errors import LabError
from kubelab.hosts import Runner
from kubelab.model import Service, ServiceState
from kubelab.spec_common import DataplaneOptions, ServiceSpec, WorkloadSpec
from kubelab.substrates.base import Substrate
from kubelab.topology import NodeInfo, PodInfo, Topology

if TYPE_CHECKING:
    from kubelab.spec import LabSpec

Progress = Callable[[str], None]


@dataclass(frozen=True)
class ProgrammingEvent:
    """One change and its network-programming latency (kube-proxy's
    network_programming_duration_seconds): published -> rules applied on every node."""

    change: str
    published_at: float  # time.time() when the changed object was published
    seconds: float
    # per node: published -> that node's rules loaded, and its own sync's duration
    # (kube-proxy's sync_proxy_rules_duration_seconds); nodes whose proxy is stopped absent
    per_node: dict[str, float] = field(default_factory=dict)
    node_sync: dict[str, float] = field(default_factory=dict)


class Dataplane(ABC):
    kind: ClassVar[str]
    Options: ClassVar[type[DataplaneOptions]]

    def __init__(self, spec: LabSpec, substrate: Substrate) -> None:
        self.spec = spec
        self.substrate = substrate
        self.topology = Topology(spec, substrate.inventory())
        self.programming: list[ProgrammingEvent] = []
        self.after_sync: list[Callable[[], None]] = []  # called after every sync

    # --- lifecycle ----------------------------------------------------------------------------

    def check_host(self) -> list[str]:
        """What this machine lacks for the dataplane (files it copies to the nodes, a
        kubeconfig), one line each; checked before anything is built."""
        return []

    @abstractmethod
    def check(self) -> list[str]:
        """What the nodes and the client lack for this dataplane, one line each (before up;
        through the substrate's probe runners)."""

    @abstractmethod
    def plan(self) -> dict[str, Any]:
        """What `up` would do on the nodes, creating nothing (`kubelab plan`)."""

    def provenance(self) -> dict[str, Any]:
        """What a run's provenance records of this dataplane (whose rule layout it wrote)."""
        return {}

    @abstractmethod
    def up(self, progress: Progress) -> None:
        """Pod network, pods, and the first sync of the Service rules."""

    @abstractmethod
    def down(self) -> None:
        """Undo everything on the nodes (unless the substrate removes the nodes themselves),
        also what a crashed run left; then forget per-lab state."""

    @abstractmethod
    def settle(self, timeout: float = 60.0) -> None:
        """Wait until every delayed change (detections, graceful deletes) is applied."""

    # --- cluster verbs ------------------------------------------------------------------------

    @abstractmethod
    def create_services(self, specs: Sequence[ServiceSpec]) -> ProgrammingEvent:
        """Create Services and program them in one sync."""

    @abstractmethod
    def update_service(self, key: str, **changes: Any) -> float:
        """Change a Service (e.g. external_traffic_policy="Local"); returns the latency."""

    @abstractmethod
    def delete_services(self, keys: Sequence[str]) -> ProgrammingEvent: ...

    @abstractmethod
    def create_workload(self, spec: WorkloadSpec) -> None: ...

    @abstractmethod
    def delete_workload(self, name: str) -> None: ...

    @abstractmethod
    def scale(self, workload: str, replicas: int) -> None: ...

    @abstractmethod
    def kill_pod(self, name: str) -> None:
        """The pod dies at once; its endpoint leaves after the detection delay."""

    @abstractmethod
    def delete_pod(self, name: str, grace_s: float = 1.0, wait: bool = True) -> None:
        """Graceful delete: terminating endpoint first, the pod stops after `grace_s`."""

    @abstractmethod
    def fail_node(self, name: str) -> None: ...

    @abstractmethod
    def heal_node(self, name: str) -> None: ...

    @abstractmethod
    def sync(self, change: str) -> ProgrammingEvent:
        """Re-program every node from the current state."""

    @abstractmethod
    def set_pod_ready(self, name: str, ready: bool) -> None:
        """The pod's readiness probe fails (or passes again); its endpoint condition
        follows as the kubelet notices."""

    @abstractmethod
    def set_proxy_running(self, node: str, running: bool) -> None:
        """Stop the node's proxy (its rules go stale as the cluster changes) or start it
        again (it reconciles the rules)."""

    @abstractmethod
    def proxy_health(self) -> dict[str, dict[str, Any]]:
        """Per node: `running`, `last_sync` (epoch seconds or None) and `changes_since`
        (cluster changes its rules do not carry yet), as kube-proxy's /healthz and metrics
        tell; a dataplane that knows it adds `healthy` (False: /healthz answers 503)."""

    def restart_proxy(self, scheduler: str) -> ProgrammingEvent:
        """As kube-proxy restarted with another `--ipvs-scheduler`; a dataplane whose proxy
        cannot be reconfigured says so."""
        raise LabError(f"the {self.kind} dataplane cannot restart its proxy with new settings")

    # --- state --------------------------------------------------------------------------------

    @abstractmethod
    def service(self, key: str) -> Service: ...

    @abstractmethod
    def service_states(self) -> list[ServiceState]: ...

    @abstractmethod
    def running_pods(self, workload: str, node: str | None = None) -> list[PodInfo]: ...

    @abstractmethod
    def objects(self) -> dict[str, Any]:
        """The cluster as `kubectl get svc,endpointslices,pods,nodes -A -o json` prints it."""

    @abstractmethod
    def status(self) -> dict[str, Any]:
        """Pods and Services for `kubelab status`."""

    @property
    def nodes(self) -> tuple[NodeInfo, ...]:
        return self.topology.nodes

    # --- members and inspection ---------------------------------------------------------------

    @abstractmethod
    def has_pod(self, name: str) -> bool: ...

    @abstractmethod
    def pod_runner(self, name: str) -> Runner:
        """How to run commands inside a pod."""

    @property
    @abstractmethod
    def dump_command(self) -> tuple[str, ...]:
        """The command whose output the rule auditor reads on a node."""

    @abstractmethod
    def dump_rules(self, node: str) -> str: ...

    @abstractmethod
    def count_rules(self, node: str) -> dict[str, int]:
        """Rule, chain or virtual-server counts of the node's forwarding rules."""

    @abstractmethod
    def node_addresses(self, node: str) -> set[str]:
        """Every source address traffic masqueraded on `node` can carry."""

    @abstractmethod
    def clear_time_wait(self, port: int, every_state: bool = False) -> int:
        """Delete TIME_WAIT conntrack entries (or, with `every_state`, all entries) for
        destination `port` on every node; how many there were."""

    @property
    def proxy_mode(self) -> str:
        return self.spec.dataplane.proxy_mode

    @property
    @abstractmethod
    def cni(self) -> tuple[str, str]:
        """(CNI name, its mode) as the results table records them."""
