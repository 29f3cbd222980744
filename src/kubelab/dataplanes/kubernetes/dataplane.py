"""The kubernetes dataplane: a real cluster, driven through its API server.

`up` builds the cluster when kubelab owns the machines (playbooks/kubernetes.yml with the
cluster plan's variables, the artifacts copied in), or takes the user's kubeconfig for a
cluster that exists; then it creates the spec's workloads (agnhost netexec Deployments,
one per node) and Services, each labelled with the lab, and waits on EndpointSlice
conditions, never on sleeps. Every change's network-programming latency comes from
kube-proxy's own histogram, scraped on every node before and after the change; where no
kube-proxy exports it (Cilium's replacement), from the time until the EndpointSlices show
the change. Rules are read on the nodes over SSH and go to the same auditor.

Scenario verbs map to the API as a cluster user would act: a kill is a force delete
(grace 0), a graceful delete keeps the pod terminating for its grace period, readiness is
the pod's readiness gate, a node failure pulls its cable (the substrate's set_node_link)
and the cluster's own node lifecycle turns its endpoints not ready. What a real cluster
cannot do on demand (one node's kube-proxy stopped alone, a proxy restarted with another
scheduler) is refused with the reason.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Sequence
from functools import partial
from typing import TYPE_CHECKING, Any

from kubelab.dataplanes.base import Dataplane, ProgrammingEvent, Progress
from kubelab.dataplanes.kubernetes import manifests, node_ops
from kubelab.dataplanes.kubernetes.access import ApiAccess
from kubelab.dataplanes.kubernetes.api_objects import is_ready, pod_info, service_from_api
from kubelab.dataplanes.kubernetes.cluster_plan import plan_cluster
from kubelab.dataplanes.kubernetes.endpoint_waits import Wanted, wait_for_endpoints
from kubelab.dataplanes.kubernetes.options import KubernetesOptions
from kubelab.dataplanes.kubernetes.proxy_metrics import (
    MetricsError,
    ProxyMetrics,
    programming_event,
    read_metrics,
    synced_since,
)
from kubelab.errors import LabError
from kubelab.model import Endpoint, Service, ServiceState
from kubelab.naming import state_dir
from kubelab.parallel import for_each
from kubelab.rules.expected import endpoints_from_slices
from kubelab.spec_common import ServiceSpec, WorkloadSpec
from kubelab.substrates.base import Substrate
from kubelab.topology import PodInfo

if TYPE_CHECKING:
    from kubelab.dataplanes.kubernetes.api import ClusterApi
    from kubelab.spec import LabSpec

READY_TIMEOUT_S = 300.0  # pods pulled from the artifacts, started, probed
NODES_TIMEOUT_S = 600.0  # a CNI's agents coming up after kubeadm
PROGRAMMED_TIMEOUT_S = 30.0  # kube-proxy's sync after the slices changed
ADDRESS_TIMEOUT_S = 120.0  # MetalLB assigns in about a second; a cloud's balancer, minutes


class KubernetesDataplane(Dataplane):
    kind = "kubernetes"
    Options = KubernetesOptions

    def __init__(self, spec: LabSpec, substrate: Substrate) -> None:
        super().__init__(spec, substrate)
        assert isinstance(spec.dataplane, KubernetesOptions)
        self.options = spec.dataplane
        self.workloads: dict[str, WorkloadSpec] = {w.name: w for w in spec.workloads}
        self.services: dict[str, ServiceSpec] = {}
        self.namespace_of = manifests.workload_namespaces(spec.services)
        self.pod_labels: dict[str, dict[str, str]] = {}  # a client's own, besides kubelab's
        self.access = ApiAccess(
            substrate, state_dir(spec.lab_id), self.nodes[0].name, self.options.kubeconfig
        )
        self._api: ClusterApi | None = None

    @property
    def cni(self) -> tuple[str, str]:
        return (self.options.cni, self.options.mode)

    @property
    def builds_cluster(self) -> bool:
        return self.options.kubeconfig is None

    @property
    def api(self) -> ClusterApi:
        if self._api is None:
            from kubelab.dataplanes.kubernetes.api import ClusterApi  # the client: heavy

            self._api = ClusterApi.from_kubeconfig(
                self.access.open(), self.spec.lab_id, self.options.context
            )
        return self._api

    def plan(self) -> dict[str, Any]:
        if not self.builds_cluster:
            return {
                "kind": self.kind,
                "proxy_mode": self.options.proxy_mode,
                "cluster": f"existing, through {self.options.kubeconfig}"
                + (f" (context {self.options.context})" if self.options.context else ""),
                "objects": [
                    f"{o['kind']} {o['metadata'].get('namespace', '')}/{o['metadata']['name']}"
                    for o in self._lab_objects()
                ],
            }
        cluster = plan_cluster(self.spec, self.substrate)
        return {
            "kind": self.kind,
            "proxy_mode": self.options.proxy_mode,
            **cluster.as_dict(),
            "missing_artifacts": cluster.missing_artifacts(),
        }

    def _lab_objects(self) -> list[dict[str, Any]]:
        return manifests.lab_objects(
            self.spec.lab_id, list(self.workloads.values()), self.spec.services,
            [n.name for n in self.nodes],
        )  # fmt: skip

    # --- lifecycle ----------------------------------------------------------------------------

    def check(self) -> list[str]:
        return []  # the playbook installs what the nodes need; an existing cluster has it

    def check_host(self) -> list[str]:
        if not self.builds_cluster:
            path = self.access.path
            return [] if path.is_file() else [f"dataplane.kubeconfig: {path} does not exist"]
        if self.substrate.nodes_route_out:
            return []
        cluster = plan_cluster(self.spec, self.substrate)
        missing = cluster.missing_artifacts()
        if not missing:
            return []
        return [
            f"{cluster.artifacts_dir}: {len(missing)} artifacts missing (`kubelab plan` of "
            "this lab lists them); the nodes have no route out: `kubelab fetch` this lab on a "
            "machine with Internet access and copy the folder here"
        ]

    def up(self, progress: Progress) -> None:
        if self.builds_cluster:
            cluster = plan_cluster(self.spec, self.substrate)
            progress("playbooks/kubernetes.yml: containerd, kubeadm, the CNI, MetalLB")
            self.substrate.run_playbook("kubernetes.yml", cluster.playbook_vars())
        progress("Kubernetes API: nodes ready")
        self._wait_nodes_ready()
        progress("workloads and Services")
        published, before = time.time(), self._scrape()
        for obj in self._lab_objects():
            self.api.apply(obj)
        for spec in self.spec.services:
            self.services[f"{spec.namespace}/{spec.name}"] = spec
        self._wait_workloads()
        self._record("lab up", published, before)

    def down(self) -> None:
        """Delete the lab's objects by label (also what a crashed run left); on
        machines the substrate destroys, their cluster goes with them."""
        if not self.substrate.disposable and (self._api is not None or self.access.path.exists()):
            namespaces = sorted({*self.namespace_of.values(), "default"})
            # a cluster that is gone already (its VMs destroyed) holds nothing to delete
            with contextlib.suppress(LabError):
                self.api.delete_lab(namespaces)
        self.access.close()
        self._api = None
        self.services.clear()

    def settle(self, timeout: float = 60.0) -> None:
        """Wait until every workload's Services show its pods as they are."""
        self._wait_workloads(timeout)

    def _wait_nodes_ready(self) -> None:
        deadline = time.monotonic() + NODES_TIMEOUT_S
        want = {n.name for n in self.nodes}
        while True:
            ready = {n["metadata"]["name"] for n in self.api.nodes() if is_ready(n)}
            if want <= ready:
                return
            if time.monotonic() > deadline:
                raise LabError(f"nodes not ready after {NODES_TIMEOUT_S:.0f}s: "
                               f"{', '.join(sorted(want - ready))}")  # fmt: skip
            time.sleep(2)

    def _wait_workloads(self, timeout: float = READY_TIMEOUT_S) -> None:
        """Wait until every Service shows its workload's pods ready, admitting each new
        pod (its readiness gate) as the Deployments create them, and every LoadBalancer
        its address."""
        for spec in self.services.values():
            wait_for_endpoints(
                partial(self._admitted_slices, spec), spec.namespace, spec.name,
                Wanted(ready=self._expected_pods(spec.workload)), timeout,
            )  # fmt: skip
        self._wait_load_balancers()

    def _wait_load_balancers(self) -> None:
        """The API server allocates a Service's cluster IP and ports as it stores it; a
        LoadBalancer's address comes later, from MetalLB's controller (or a cloud's), in
        status.loadBalancer.ingress. Wait for it: scenarios send traffic to it next."""
        for spec in self.services.values():
            if spec.type != "LoadBalancer":
                continue
            deadline = time.monotonic() + ADDRESS_TIMEOUT_S
            while not self.service(f"{spec.namespace}/{spec.name}").load_balancer_ips:
                if time.monotonic() > deadline:
                    raise LabError(
                        f"{spec.namespace}/{spec.name}: no LoadBalancer IP after "
                        f"{ADDRESS_TIMEOUT_S:.0f}s; MetalLB (dataplane.metallb) assigns one "
                        "from network.load_balancer_pool: is it running, with addresses "
                        "left? (a balancer that gives a hostname only cannot be tested)"
                    )
                time.sleep(0.5)

    def _admitted_slices(self, spec: ServiceSpec) -> list[dict[str, Any]]:
        self.api.admit_pods(spec.namespace, spec.workload)
        return self.api.endpoint_slices(spec.namespace, spec.name)

    def _expected_pods(self, workload: str) -> int:
        """The pods the workload's Deployments ask for; none for a workload deleted (or
        never made) while a Service still selects it."""
        if workload not in self.workloads:
            return 0
        namespace = self.namespace_of.get(workload, "default")
        return sum(
            int(d["spec"]["replicas"])
            for d in self._deployments(workload)
            if d["metadata"].get("namespace", namespace) == namespace
        )

    def _deployments(self, workload: str) -> list[dict[str, Any]]:
        spec = self.workloads[workload]
        return manifests.deployments(
            spec, self.namespace_of.get(workload, "default"), self.spec.lab_id,
            [n.name for n in self.nodes], labels=self.pod_labels.get(workload),
        )  # fmt: skip

    # --- programming latency ------------------------------------------------------------------

    def _scrape(self) -> dict[str, ProxyMetrics]:
        """Every node's kube-proxy metrics (nodes without kube-proxy, none)."""
        if not self.options.kube_proxy:
            return {}
        found: dict[str, ProxyMetrics] = {}

        def scrape(node: str) -> None:
            text = node_ops.metrics(self.substrate.runner(node))
            if text:
                with contextlib.suppress(MetricsError):  # not kube-proxy's: no account
                    found[node] = read_metrics(text, f"{node}:metrics")

        for_each([n.name for n in self.nodes], scrape)
        return found

    def _record(
        self, change: str, published: float, before: dict[str, ProxyMetrics]
    ) -> ProgrammingEvent:
        """The change's event, once the API shows it (the verbs waited for that): by
        kube-proxy's own histogram when its nodes observed the change, after every
        scraped kube-proxy has synced since it was published; else the time until the API
        showed it."""
        shown = time.time()
        event = None
        if before:
            deadline = time.monotonic() + PROGRAMMED_TIMEOUT_S
            after = self._scrape()
            while time.monotonic() < deadline and not all(
                synced_since(m, before.get(node)) for node, m in after.items()
            ):
                time.sleep(0.5)
                after = self._scrape()
            event = programming_event(change, published, before, after)
        if event is None:
            event = ProgrammingEvent(change, published, shown - published)
        self.programming.append(event)
        for listener in self.after_sync:
            listener()
        return event

    def sync(self, change: str) -> ProgrammingEvent:
        """kube-proxy syncs by itself: wait until the cluster shows what it holds."""
        published, before = time.time(), self._scrape()
        self._wait_workloads()
        return self._record(change, published, before)

    # --- Services -----------------------------------------------------------------------------

    def create_services(self, specs: Sequence[ServiceSpec]) -> ProgrammingEvent:
        published, before = time.time(), self._scrape()
        for spec in specs:
            self.namespace_of.setdefault(spec.workload, spec.namespace)
            if spec.namespace != "default":
                self.api.apply(manifests.namespace(spec.namespace, self.spec.lab_id))
            self.api.apply(manifests.service(spec, self.spec.lab_id))
            self.services[f"{spec.namespace}/{spec.name}"] = spec
        self._wait_workloads()
        names = ", ".join(f"{s.namespace}/{s.name}" for s in specs[:3])
        return self._record(f"create Service {names}", published, before)

    def update_service(self, key: str, **changes: Any) -> float:
        spec = self._service_spec(key).model_copy(update=changes)
        published, before = time.time(), self._scrape()
        self.api.patch_service(
            spec.namespace, spec.name, manifests.service(spec, self.spec.lab_id)["spec"]
        )
        self.services[key] = spec
        self._wait_load_balancers()  # a type changed to LoadBalancer gets its address
        return self._record(f"update Service {key}: {changes}", published, before).seconds

    def delete_services(self, keys: Sequence[str]) -> ProgrammingEvent:
        published, before = time.time(), self._scrape()
        for key in keys:
            spec = self._service_spec(key)
            self.api.delete_service(spec.namespace, spec.name)
            self.services.pop(key)
        return self._record(f"delete Service {', '.join(keys[:3])}", published, before)

    def _service_spec(self, key: str) -> ServiceSpec:
        if key not in self.services:
            raise LabError(f"no Service {key}; Services are {sorted(self.services)}")
        return self.services[key]

    def _service_object(self, spec: ServiceSpec) -> dict[str, Any]:
        for obj in self.api.services(spec.namespace):
            if obj["metadata"]["name"] == spec.name:
                return obj
        raise LabError(f"Service {spec.namespace}/{spec.name} is not in the cluster")

    def service(self, key: str) -> Service:
        spec = self._service_spec(key)
        return service_from_api(spec, self._service_object(spec))

    def service_states(self) -> list[ServiceState]:
        out = []
        for spec in self.services.values():
            svc = service_from_api(spec, self._service_object(spec))
            slices = self.api.endpoint_slices(spec.namespace, spec.name)
            endpoints: tuple[Endpoint, ...] = ()
            if svc.ports:
                endpoints = endpoints_from_slices(slices, svc, svc.ports[0])
            out.append(ServiceState(svc, endpoints))
        return out

    # --- workloads and pods -------------------------------------------------------------------

    def create_workload(self, spec: WorkloadSpec) -> None:
        if spec.name in self.workloads:
            raise LabError(f"workload {spec.name!r} exists; pick another name")
        self.workloads[spec.name] = spec
        for deployment in self._deployments(spec.name):
            self.api.apply(deployment)
        self._wait_running(spec.name)
        self._wait_workloads()

    def _wait_running(self, workload: str, timeout: float = READY_TIMEOUT_S) -> None:
        """Until the workload's pods all run with an address (Service or not)."""
        want, deadline = self._expected_pods(workload), time.monotonic() + timeout
        while len(self.running_pods(workload)) != want:
            if time.monotonic() > deadline:
                raise LabError(
                    f"workload {workload}: {len(self.running_pods(workload))} of {want} pods "
                    f"running after {timeout:.0f}s"
                )
            time.sleep(1)

    def delete_workload(self, name: str) -> None:
        for deployment in self._deployments(name):
            meta = deployment["metadata"]
            self.api.delete_deployment(meta["namespace"], meta["name"])
        self.workloads.pop(name, None)
        self.pod_labels.pop(name, None)

    def scale(self, workload: str, replicas: int) -> None:
        if workload not in self.workloads:
            raise LabError(f"no workload {workload!r}; workloads are {sorted(self.workloads)}")
        spec = self.workloads[workload].model_copy(
            update={"replicas": replicas, "pods_per_node": None}
        )
        self.workloads[workload] = spec
        for deployment in self._deployments(workload):
            meta = deployment["metadata"]
            self.api.scale(meta["namespace"], meta["name"], deployment["spec"]["replicas"])
        self._wait_workloads()

    def _pod(self, name: str) -> dict[str, Any]:
        for namespace in sorted({*self.namespace_of.values(), "default"}):
            for pod in self.api.pods(namespace):
                if pod["metadata"]["name"] == name:
                    return pod
        raise LabError(f"no pod {name!r} of this lab in the cluster")

    def kill_pod(self, name: str) -> None:
        """The pod's containers killed on its node (SIGKILL, node_ops.kill_pod_processes):
        it stops answering at once, as in a crash; the kubelet notices the exit, the pod
        turns not ready and its endpoint leaves the slices (the detection delay), then the
        kubelet starts the containers again in the same pod. A force delete would be the
        other way round: the endpoint gone from the API while the pod still answers."""
        runner = self.pod_runner(name)
        if node_ops.kill_pod_processes(runner.node, runner.pid) == 0:
            raise LabError(f"pod {name}: nothing runs in it on {runner.node.name} to kill")

    def delete_pod(self, name: str, grace_s: float = 1.0, wait: bool = True) -> None:
        pod = self._pod(name)
        namespace = pod["metadata"]["namespace"]
        self.api.delete_pod(namespace, name, grace_s=max(1, round(grace_s)))
        if not wait:
            return
        workload = (pod["metadata"].get("labels") or {}).get(manifests.WORKLOAD_LABEL)
        for spec in self.services.values():
            if spec.workload == workload:
                wait_for_endpoints(
                    partial(self.api.endpoint_slices, spec.namespace, spec.name),
                    spec.namespace, spec.name, Wanted(gone_pods=frozenset({name})),
                    READY_TIMEOUT_S,
                )  # fmt: skip

    # --- DNS objects (real clusters only: the reference dataplane runs no DNS) -------------

    def create_stateful_set(
        self, name: str, replicas: int, namespace: str = "default"
    ) -> dict[str, str]:
        """A StatefulSet of agnhost netexec pods with its governing headless Service, both
        named `name`, labelled with the lab: the pods' names and IPs once all are Ready."""
        if name in self.workloads:
            raise LabError(f"workload {name!r} exists; pick another name for the StatefulSet")
        spec = WorkloadSpec(name=name, replicas=replicas)
        self.api.apply(manifests.headless_service(spec, namespace, self.spec.lab_id))
        self.api.apply(manifests.stateful_set(spec, namespace, self.spec.lab_id))
        deadline = time.monotonic() + READY_TIMEOUT_S
        while True:
            pods = {
                pod["metadata"]["name"]: pod["status"]["podIP"]
                for pod in self.api.pods(namespace, name)
                if is_ready(pod) and (pod.get("status") or {}).get("podIP")
            }
            if len(pods) == replicas:
                return pods
            if time.monotonic() > deadline:
                raise LabError(f"StatefulSet {namespace}/{name}: {len(pods)} of {replicas} "
                               f"pods ready after {READY_TIMEOUT_S:.0f}s")  # fmt: skip
            time.sleep(1)

    def delete_stateful_set(self, name: str, namespace: str = "default") -> None:
        self.api.delete_stateful_set(namespace, name)
        self.api.delete_service(namespace, name)

    def create_external_name(self, namespace: str, name: str, external_name: str) -> None:
        """A Service that is only a CNAME to `external_name`, labelled with the lab."""
        self.api.apply(
            manifests.external_name_service(namespace, name, external_name, self.spec.lab_id)
        )

    def delete_external_name(self, namespace: str, name: str) -> None:
        self.api.delete_service(namespace, name)

    # --- network policy (real clusters only: the reference dataplane enforces none) ---------

    def create_client(self, name: str, namespace: str, labels: dict[str, str]) -> PodInfo:
        """A workload of one agnhost netexec pod in `namespace` (made, labelled with the
        lab, if new), carrying `labels` besides kubelab's: a NetworkPolicy peer that dials
        from where a policy's selectors see it. `delete_workload` removes it."""
        if name in self.workloads:
            raise LabError(f"workload {name!r} exists; pick another name")
        if namespace != "default":
            self.api.apply(manifests.namespace(namespace, self.spec.lab_id))
        self.namespace_of[name] = namespace
        self.pod_labels[name] = dict(labels)
        self.create_workload(WorkloadSpec(name=name, replicas=1))
        (pod,) = self.running_pods(name)
        return pod

    def apply_network_policy(self, namespace: str, name: str, spec: dict[str, Any]) -> None:
        """A NetworkPolicy with this spec (networking.k8s.io/v1), labelled with the lab."""
        self.api.apply(manifests.network_policy(namespace, name, spec, self.spec.lab_id))

    def delete_network_policy(self, namespace: str, name: str) -> None:
        self.api.delete_network_policy(namespace, name)

    def set_pod_ready(self, name: str, ready: bool) -> None:
        pod = self._pod(name)
        self.api.set_pod_ready(pod["metadata"]["namespace"], name, ready)

    def running_pods(self, workload: str, node: str | None = None) -> list[PodInfo]:
        spec = self.workloads.get(workload)
        if spec is None:
            raise LabError(f"no workload {workload!r}; workloads are {sorted(self.workloads)}")
        out = []
        for pod in self.api.pods(self.namespace_of.get(workload, "default"), workload):
            info = pod_info(pod, spec)
            if info is not None and node in (None, info.node):
                out.append(info)
        return sorted(out, key=lambda p: p.name)

    def has_pod(self, name: str) -> bool:
        try:
            self._pod(name)
        except LabError:
            return False
        return True

    def pod_runner(self, name: str) -> node_ops.PodRunner:
        pod = self._pod(name)
        node = pod["spec"]["nodeName"]
        runner = self.substrate.runner(node)
        pid = node_ops.sandbox_pid(runner, pod["metadata"]["namespace"], name)
        return node_ops.PodRunner(runner, pid, name)

    # --- nodes and proxies --------------------------------------------------------------------

    def fail_node(self, name: str) -> None:
        """The node's cable pulled: its pods stop answering now; the cluster's node
        lifecycle controller marks it not ready after its grace period."""
        self.topology.node(name)
        self.substrate.set_node_link(name, up=False)

    def heal_node(self, name: str) -> None:
        self.substrate.set_node_link(name, up=True)

    def set_proxy_running(self, node: str, running: bool) -> None:
        raise LabError(
            "a real cluster's kube-proxy is a DaemonSet: one node's cannot be stopped alone "
            "without restarting it on every node; this scenario needs the reference dataplane"
        )

    def restart_proxy(self, scheduler: str) -> ProgrammingEvent:
        """kube-proxy restarted on every node with another IPVS scheduler (its ConfigMap,
        then a rollout restart); it reconciles the virtual servers it finds."""
        if self.proxy_mode != "ipvs":
            raise LabError(f"an IPVS scheduler means nothing in proxy mode {self.proxy_mode}")
        published, before = time.time(), self._scrape()
        stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(published))
        self.api.set_kube_proxy_scheduler(scheduler, stamp)
        deadline = time.monotonic() + READY_TIMEOUT_S
        while not self.api.kube_proxy_rolled_out():
            if time.monotonic() > deadline:
                raise LabError(f"kube-proxy not restarted on every node in {READY_TIMEOUT_S:.0f}s")
            time.sleep(1)
        return self._record(f"kube-proxy restarted with --ipvs-scheduler={scheduler}",
                            published, before)  # fmt: skip

    def proxy_health(self) -> dict[str, dict[str, Any]]:
        """Each node's kube-proxy by its /healthz and its metrics (node_ops.proxy_health);
        without kube-proxy (Cilium's replacement), none runs."""
        accounts = self._scrape()
        out: dict[str, dict[str, Any]] = {}
        for node in self.nodes:
            health = (
                node_ops.healthz(self.substrate.runner(node.name))
                if self.options.kube_proxy
                else None
            )
            out[node.name] = node_ops.proxy_health(health, accounts.get(node.name))
        return out

    # --- state and inspection -----------------------------------------------------------------

    def objects(self) -> dict[str, Any]:
        items: list[dict[str, Any]] = []
        if self._api is None:  # not connected in this process (`kubelab status` of a lab down)
            return {"apiVersion": "v1", "kind": "List", "items": items}
        for namespace in sorted({*self.namespace_of.values(), "default"}):
            items += self.api.services(namespace)
            for spec in self.services.values():
                if spec.namespace == namespace:
                    items += self.api.endpoint_slices(namespace, spec.name)
            items += self.api.pods(namespace)
        items += self.api.nodes()
        return {"apiVersion": "v1", "kind": "List", "items": items}

    def status(self) -> dict[str, Any]:
        """Pods, Services and proxies as `kubelab status` shows them; nothing of the
        cluster from a process not connected to it (the running lab saves its own)."""
        if self._api is None:
            return {"pods": [], "services": [], "proxies": {}}
        pods = []
        for workload, spec in self.workloads.items():
            for pod in self.api.pods(self.namespace_of.get(workload, "default"), workload):
                info = pod_info(pod, spec)
                pods.append({
                    "name": pod["metadata"]["name"], "workload": workload,
                    "node": (pod.get("spec") or {}).get("nodeName", ""),
                    "ip": str(info.ip) if info else "", "port": spec.port,
                    "udp_port": spec.udp_port, "netns": "",
                    "phase": (pod.get("status") or {}).get("phase", "?"),
                    "ready": is_ready(pod),
                })  # fmt: skip
        return {
            "pods": pods,
            "services": [state.as_status() for state in self.service_states()],
            "proxies": self.proxy_health(),
        }

    @property
    def dump_command(self) -> tuple[str, ...]:
        return node_ops.DUMP_COMMANDS[self.options.proxy_mode]

    def dump_rules(self, node: str) -> str:
        return self.substrate.runner(node).run(list(self.dump_command)).stdout

    def count_rules(self, node: str) -> dict[str, int]:
        return node_ops.count_rules(self.options.proxy_mode, self.dump_rules(node))

    def node_addresses(self, node: str) -> set[str]:
        return node_ops.node_addresses(self.substrate.runner(node))

    def clear_time_wait(self, port: int, every_state: bool = False) -> int:
        return sum(
            node_ops.clear_conntrack(self.substrate.runner(n.name), port, every_state)
            for n in self.nodes
        )
