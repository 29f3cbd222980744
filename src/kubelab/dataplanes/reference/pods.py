"""Pod server processes (one per node, inside the node's namespace) and their control client."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from kubelab.errors import LabError
from kubelab.topology import NodeInfo, PodInfo

READY_TIMEOUT = 15.0
CONTROL_TIMEOUT = 30.0


class PodServers:
    """Starts, drives and forgets the pod servers of one lab."""

    def __init__(self, lab_id: str, state_dir: Path) -> None:
        self.lab_id = lab_id
        self.state_dir = state_dir
        self._procs: dict[str, subprocess.Popen[bytes]] = {}

    def _path(self, node: NodeInfo, suffix: str) -> Path:
        return self.state_dir / f"podserver-{node.name}.{suffix}"

    def start(self, nodes: tuple[NodeInfo, ...], pods: list[PodInfo]) -> None:
        """Start every node's server with its first pods and wait until each listens."""
        waiting = []
        for node in nodes:
            ready = self._path(node, "ready")
            ready.unlink(missing_ok=True)
            argv = [
                "ip", "netns", "exec", node.netns,
                sys.executable, "-m", "kubelab.dataplanes.reference.podserver",
                "--lab", self.lab_id, "--ready", str(ready),
                "--control", str(self._path(node, "sock")),
            ]  # fmt: skip
            for pod in pods:
                if pod.node == node.name:
                    argv += ["--pod", f"{pod.name}={pod.netns}={pod.port}={pod.udp_port}"]
            log = self._path(node, "log").open("wb")
            proc = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True
            )
            self._procs[node.name] = proc
            waiting.append((node, proc, ready))
        deadline = time.monotonic() + READY_TIMEOUT
        for node, proc, ready in waiting:
            while not ready.exists():
                if proc.poll() is not None:
                    tail = self._path(node, "log").read_text()[-400:].strip()
                    raise LabError(f"pod server on {node.name} exited: {tail}")
                if time.monotonic() > deadline:
                    raise LabError(f"pod server on {node.name} not ready in {READY_TIMEOUT}s")
                time.sleep(0.02)

    def call(self, node: NodeInfo, **message: Any) -> None:
        """Send one control message to the node's server and wait for its answer."""
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(CONTROL_TIMEOUT)
            try:
                sock.connect(str(self._path(node, "sock")))
                sock.sendall((json.dumps(message) + "\n").encode())
                reply = json.loads(sock.makefile().readline())
            except (OSError, ValueError) as exc:
                raise LabError(
                    f"pod server on {node.name}: {message['op']} failed: {exc}"
                ) from None
        if not reply.get("ok"):
            raise LabError(f"pod server on {node.name}: {message['op']}: {reply.get('error')}")

    def forget(self) -> None:
        """Reap the servers after the substrate killed them."""
        for proc in self._procs.values():
            proc.wait(timeout=5)
        self._procs.clear()
