"""What `kubelab status` shows of a lab: its members with their addresses and where they
are, and the cluster's pods and Services."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from kubelab.atomic_write import write_atomic
from kubelab.dataplanes.base import Dataplane
from kubelab.spec import LabSpec
from kubelab.substrates.base import Substrate


def describe(spec: LabSpec, substrate: Substrate, dataplane: Dataplane, up: bool) -> dict[str, Any]:
    topo = dataplane.topology
    return {
        "lab": spec.lab_id,
        "up": up,
        "substrate": spec.substrate.kind,
        "dataplane": spec.dataplane.kind,
        "proxy_mode": dataplane.proxy_mode,
        "pod_network": dataplane.cni[1],
        "state_dir": str(substrate.state_dir),
        "ssh_config": str(substrate.ssh_config),
        "nodes": [
            {
                "name": n.name,
                "ip": str(n.ip),
                "pod_cidr": str(n.pod_cidr),
                "location": substrate.location(n.name),
            }
            for n in topo.nodes
        ],
        "client": {
            "name": topo.client.name,
            "ip": str(topo.client.ip),
            "location": substrate.location(topo.client.name),
        },
        **dataplane.status(),
        # the cluster as `kubectl get svc,endpointslices,pods,nodes -o json` shows it, for
        # `kubelab diagnose` in another process
        "objects": dataplane.objects(),
    }


def save(path: Path, status: dict[str, Any]) -> None:
    """Atomically, so `kubelab status` in another process never reads half a file."""
    write_atomic(path, lambda tmp: tmp.write_text(json.dumps(status, indent=1)))


def load_saved(path: Path) -> dict[str, Any] | None:
    try:
        saved: dict[str, Any] = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return saved
