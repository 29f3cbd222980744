"""Pod server processes: one per node, started inside the node's namespace."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

from kubelab.errors import LabError
from kubelab.topology import NodeInfo, Topology

READY_TIMEOUT = 15.0


def _ready_file(state_dir: Path, node: NodeInfo) -> Path:
    return state_dir / f"podserver-{node.name}.ready"


def start(topology: Topology, state_dir: Path) -> list[subprocess.Popen[bytes]]:
    """Start every node's pod server and wait until each is listening."""
    waiting = []
    for node in topology.nodes:
        pods = topology.pods_on(node.name)
        if not pods:
            continue
        ready = _ready_file(state_dir, node)
        ready.unlink(missing_ok=True)
        argv = [
            "ip",
            "netns",
            "exec",
            node.netns,
            sys.executable,
            "-m",
            "kubelab.dataplanes.reference.podserver",
            "--lab",
            topology.lab_id,
            "--ready",
            str(ready),
        ]
        for pod in pods:
            argv += ["--pod", f"{pod.name}={pod.netns}={pod.port}"]
        log = (state_dir / f"podserver-{node.name}.log").open("wb")
        proc = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True
        )
        waiting.append((node, proc, ready))
    deadline = time.monotonic() + READY_TIMEOUT
    for node, proc, ready in waiting:
        while not ready.exists():
            if proc.poll() is not None:
                log_text = (state_dir / f"podserver-{node.name}.log").read_text()[-400:]
                raise LabError(f"pod server on {node.name} exited: {log_text.strip()}")
            if time.monotonic() > deadline:
                raise LabError(f"pod server on {node.name} not ready in {READY_TIMEOUT}s")
            time.sleep(0.02)
    return [proc for _, proc, _ in waiting]
