"""The Lab: what scenarios may do to any lab, whatever its substrate and dataplane.

A thin facade over one substrate (where nodes live) and one dataplane (who forwards
packets and holds the cluster's state), both picked from their registries by the spec's
`kind`. It holds no cluster state of its own. `up` starts with `down`, so a crashed
earlier run is cleaned first; a failed `up` tears down what it built.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from kubelab import status
from kubelab.dataplanes.base import Dataplane, ProgrammingEvent
from kubelab.dataplanes.registry import dataplane_class
from kubelab.errors import EnvironmentMissing, LabError
from kubelab.hosts import CommandResult, Runner
from kubelab.model import Service, ServiceState
from kubelab.naming import state_dir
from kubelab.signals import shielded
from kubelab.spec import LabSpec
from kubelab.spec_common import ServiceSpec, WorkloadSpec
from kubelab.substrates.base import Progress, Substrate
from kubelab.substrates.registry import SUBSTRATES
from kubelab.topology import PodInfo, Topology


class Lab:
    def __init__(self, spec: LabSpec, state_root: Path | None = None) -> None:
        self.spec = spec
        self.state_dir = state_dir(spec.lab_id, state_root)
        self.substrate: Substrate = SUBSTRATES[spec.substrate.kind](spec, self.state_dir)
        self.dataplane: Dataplane = dataplane_class(spec)(spec, self.substrate)
        self.dataplane.after_sync.append(self._save_state)
        self.save_status = True  # benchmarks with 10,000s of Services turn this off

    # --- lifecycle ----------------------------------------------------------------------------

    def problems(self) -> list[str]:
        """Every missing thing, one line each (what `kubelab doctor` lists)."""
        existed, lines = self.exists(), self.dataplane.check_host() or self.substrate.check()
        lines = lines or (self.dataplane.check() if self.substrate.members_before_up else [])
        if lines and not existed:
            self.substrate.down()  # what reaching the members left (SSH connections)
        return lines

    def check(self) -> None:
        """Stop on the first missing thing, with the doctor's line for it."""
        if lines := self.problems():
            raise EnvironmentMissing.first_of(lines)

    def up(self, progress: Progress = lambda _: None) -> None:
        self.check()
        try:
            progress("remove leftovers")
            self.down()
            progress("nodes and node network")
            self.substrate.up(progress)
            if lines := [] if self.substrate.members_before_up else self.dataplane.check():
                raise EnvironmentMissing.first_of(lines)  # VMs, checked once they exist
            self.dataplane.up(progress)
            self._save_state()
        except BaseException:
            self.down()
            raise

    def down(self) -> None:
        with shielded():  # a second Ctrl-C or SIGTERM must not leave half a lab
            if self.substrate.exists() or not self.substrate.disposable:
                self.dataplane.down()
            self.substrate.down()

    def exists(self) -> bool:
        return self.substrate.exists()

    def settle(self, timeout: float = 60.0) -> None:
        self.dataplane.settle(timeout)

    # --- the cluster (the dataplane's verbs) --------------------------------------------------

    def create_service(self, spec: ServiceSpec) -> ProgrammingEvent:
        return self.dataplane.create_services([spec])

    def create_services(self, specs: Sequence[ServiceSpec]) -> ProgrammingEvent:
        return self.dataplane.create_services(specs)

    def update_service(self, key: str, **changes: Any) -> float:
        return self.dataplane.update_service(key, **changes)

    def delete_service(self, key: str) -> ProgrammingEvent:
        return self.dataplane.delete_services([key])

    def delete_services(self, keys: Sequence[str]) -> ProgrammingEvent:
        return self.dataplane.delete_services(keys)

    def create_workload(self, spec: WorkloadSpec) -> None:
        self.dataplane.create_workload(spec)

    def delete_workload(self, name: str) -> None:
        self.dataplane.delete_workload(name)

    def scale(self, workload: str, replicas: int) -> None:
        self.dataplane.scale(workload, replicas)

    def kill_pod(self, name: str) -> None:
        self.dataplane.kill_pod(name)

    def delete_pod(self, name: str, grace_s: float = 1.0, wait: bool = True) -> None:
        self.dataplane.delete_pod(name, grace_s, wait)

    def fail_node(self, name: str) -> None:
        self.dataplane.fail_node(name)

    def heal_node(self, name: str) -> None:
        self.dataplane.heal_node(name)

    def set_pod_ready(self, name: str, ready: bool) -> None:
        self.dataplane.set_pod_ready(name, ready)

    def set_proxy_running(self, node: str, running: bool) -> None:
        self.dataplane.set_proxy_running(node, running)

    def sync(self, change: str) -> ProgrammingEvent:
        return self.dataplane.sync(change)

    def service(self, key: str) -> Service:
        return self.dataplane.service(key)

    def service_states(self) -> list[ServiceState]:
        return self.dataplane.service_states()

    def running_pods(self, workload: str, node: str | None = None) -> list[PodInfo]:
        return self.dataplane.running_pods(workload, node)

    def objects(self) -> dict[str, Any]:
        return self.dataplane.objects()

    @property
    def programming(self) -> list[ProgrammingEvent]:
        return self.dataplane.programming

    @property
    def topology(self) -> Topology:
        """The address plan: nodes with their pod slices, the client, the first pods."""
        return self.dataplane.topology

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

    # --- members ------------------------------------------------------------------------------

    def runner(self, member: str) -> Runner:
        """A node, the client (the substrate's members), or a pod (the dataplane's)."""
        if self.dataplane.has_pod(member):
            return self.dataplane.pod_runner(member)
        return self.substrate.runner(member)

    def exec(self, member: str, argv: Sequence[str], timeout: float = 60) -> CommandResult:
        return self.runner(member).run(argv, check=False, timeout=timeout)

    def dump_rules(self, node: str) -> str:
        return self.dataplane.dump_rules(node)

    def clear_time_wait(self, port: int, every_state: bool = False) -> int:
        return self.dataplane.clear_time_wait(port, every_state)

    def node_addresses(self, node: str) -> set[str]:
        return self.dataplane.node_addresses(node)

    @property
    def ssh_config(self) -> Path:  # testinfra reaches the nodes with it
        return self.substrate.ssh_config

    # --- status (saved, so `kubelab status` in another process sees run-time changes) --------

    def status(self) -> dict[str, Any]:
        return status.describe(self.spec, self.substrate, self.dataplane, self.exists())

    def _save_state(self) -> None:
        if self.state_dir.exists() and self.save_status:
            status.save(self.state_dir / "status.json", self.status())

    def saved_status(self) -> dict[str, Any]:
        """What the process running the lab last saved, or the spec's view if none."""
        saved = status.load_saved(self.state_dir / "status.json") or self.status()
        return {**saved, "up": self.exists()}
