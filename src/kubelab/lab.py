"""The Lab: what scenarios may do to any lab, whatever its substrate and dataplane.

A Lab is a substrate (where nodes live) plus a dataplane (who forwards packets). Its
lifecycle is data (UP_STEPS): each step is small, and `down` removes everything, including
what a crashed earlier run left, so `up` starts with it.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from kubelab.dataplanes.base import Dataplane
from kubelab.dataplanes.reference.dataplane import ReferenceDataplane
from kubelab.errors import EnvironmentMissing, LabError
from kubelab.hosts import CommandResult, Runner
from kubelab.model import Service, ServiceState, endpoints_of, service_from_spec
from kubelab.spec import LabSpec
from kubelab.substrates.base import Substrate
from kubelab.substrates.netns import NetnsSubstrate
from kubelab.topology import Topology

STATE_ROOT = Path(os.environ.get("KUBELAB_STATE_DIR", "/run/kubelab"))
NETNS_TOOLS = ("ip", "iptables-restore", "iptables-save", "ssh", "ssh-keygen")

Progress = Callable[[str], None]


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
        missing = [t for t in NETNS_TOOLS if shutil.which(t) is None]
        if missing:
            raise EnvironmentMissing(
                f"missing tools: {', '.join(missing)}; install the Debian "
                "packages iproute2 iptables openssh-client openssh-server"
            )
        if not Path("/usr/sbin/sshd").exists():
            raise EnvironmentMissing("/usr/sbin/sshd is missing; install openssh-server")


class Lab:
    UP_STEPS = ("remove leftovers", "nodes and node network", "pods, pod network and rules")

    def __init__(self, spec: LabSpec, state_root: Path = STATE_ROOT) -> None:
        self.spec = spec
        self.topology = Topology(spec)
        self.state_dir = state_root / spec.lab_id
        self.substrate: Substrate = NetnsSubstrate(self.topology, self.state_dir)
        self.dataplane: Dataplane = ReferenceDataplane(self.substrate, spec.dataplane)
        self.services: dict[str, Service] = {}
        for i, svc_spec in enumerate(spec.services):
            svc = service_from_spec(svc_spec, i, spec)
            self.services[svc.key] = svc
        self._load_saved_services()

    # --- lifecycle ----------------------------------------------------------------------------

    def up(self, progress: Progress = _quiet) -> None:
        check_environment(self.spec)
        steps: Sequence[tuple[str, Callable[[], None]]] = (
            (self.UP_STEPS[0], self.substrate.down),
            (self.UP_STEPS[1], self.substrate.up),
            (self.UP_STEPS[2], lambda: self.dataplane.up(self.service_states())),
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
        self.substrate.down()
        if isinstance(self.dataplane, ReferenceDataplane):
            self.dataplane.forget_processes()

    def exists(self) -> bool:
        return self.substrate.exists()

    # --- Services -----------------------------------------------------------------------------

    def service(self, key: str) -> Service:
        if key not in self.services:
            raise LabError(f"no Service {key!r}; Services are {sorted(self.services)}")
        return self.services[key]

    def service_states(self) -> list[ServiceState]:
        return [self.service_state(key) for key in self.services]

    def service_state(self, key: str) -> ServiceState:
        svc = self.service(key)
        return ServiceState(svc, endpoints_of(svc, self.topology))

    def update_service(self, key: str, **changes: Any) -> float:
        """Change a Service (e.g. external_traffic_policy="Local") and re-sync every node.
        Returns the network-programming latency: change accepted -> rules on every node."""
        accepted = time.monotonic()
        self.services[key] = self.service(key).with_changes(**changes)
        self.dataplane.sync(self.service_states())
        self._save_state()
        return time.monotonic() - accepted

    def nodeport_target(self, key: str, node: str, port_name: str | None = None) -> tuple[str, int]:
        svc = self.service(key)
        port = next((p for p in svc.ports if port_name in (None, p.name)), None)
        if port is None or port.node_port is None:
            raise LabError(f"Service {key} has no NodePort {port_name or ''}".strip())
        return str(self.topology.node(node).ip), port.node_port

    # --- members ------------------------------------------------------------------------------

    def runner(self, member: str) -> Runner:
        return self.substrate.runner(member)

    def exec(self, member: str, argv: Sequence[str], timeout: float = 60) -> CommandResult:
        return self.runner(member).run(argv, check=False, timeout=timeout)

    def dump_rules(self, node: str) -> str:
        return self.dataplane.dump_rules(node)

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
                {"name": n.name, "ip": str(n.ip), "pod_cidr": str(n.pod_cidr), "netns": n.netns}
                for n in topo.nodes
            ],
            "client": {
                "name": topo.client.name,
                "ip": str(topo.client.ip),
                "netns": topo.client.netns,
            },
            "pods": [
                {"name": p.name, "node": p.node, "ip": str(p.ip), "port": p.port, "netns": p.netns}
                for p in topo.pods
            ],
            "services": [
                {
                    "name": s.key,
                    "type": s.type,
                    "cluster_ip": str(s.cluster_ip),
                    "external_traffic_policy": s.external_traffic_policy,
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
                    "endpoints": [e.address for e in st.endpoints],
                }
                for st in self.service_states()
                for s in [st.service]
            ],
        }

    # --- saved state (so `status` in another process sees run-time changes) --------------------

    @property
    def _state_file(self) -> Path:
        return self.state_dir / "state.json"

    def _save_state(self) -> None:
        saved = {
            k: {"external_traffic_policy": s.external_traffic_policy}
            for k, s in self.services.items()
        }
        self._state_file.write_text(json.dumps({"services": saved}, indent=1))

    def _load_saved_services(self) -> None:
        try:
            saved = json.loads(self._state_file.read_text())["services"]
        except (OSError, ValueError, KeyError):
            return
        for key, changes in saved.items():
            if key in self.services:
                self.services[key] = self.services[key].with_changes(**changes)
