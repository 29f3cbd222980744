"""Pod server processes (one per node) and their control client, through the node's Runner.

The pod server is one self-contained file (podserver.py, standard library only). It is
copied to the node, started there with the node's interpreter, and driven over its stdin
and stdout, so the same code serves namespaces on this kernel, VMs and hosts over SSH.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from kubelab.errors import LabError
from kubelab.hosts import Process, Runner
from kubelab.naming import member_dir
from kubelab.topology import NodeInfo, PodInfo

READY_TIMEOUT = 15.0
CONTROL_TIMEOUT = 30.0
PROGRAM = Path(__file__).with_name("podserver.py")


def program_path(lab_id: str, node: str) -> str:
    return f"{member_dir(lab_id, node)}/podserver.py"


class PodServers:
    """Starts, drives and stops the pod servers of one lab."""

    def __init__(self, lab_id: str, runner: Callable[[str], Runner]) -> None:
        self.lab_id = lab_id
        self.runner = runner
        self._procs: dict[str, Process] = {}

    def launch(self, node: NodeInfo, pods: list[PodInfo]) -> None:
        """Start the node's server with its first pods (of `pods`, those on the node)."""
        runner = self.runner(node.name)
        path = program_path(self.lab_id, node.name)
        runner.put(path, PROGRAM.read_text())
        argv = [runner.python, path, "--lab", self.lab_id]
        for pod in pods:
            if pod.node == node.name:
                argv += ["--pod", f"{pod.name}={pod.netns}={pod.port}={pod.udp_port}"]
        self._procs[node.name] = runner.start(argv)

    def wait_ready(self) -> None:
        """Wait until every launched server listens on all its pods' ports."""
        for name, proc in self._procs.items():
            line = proc.readline(READY_TIMEOUT)
            if line is None or "ready" not in line:
                raise LabError(f"pod server on {name} did not start: {proc.stderr_tail}")

    def call(self, node: NodeInfo, **message: Any) -> None:
        """Send one control message to the node's server and wait for its answer."""
        proc = self._procs.get(node.name)
        if proc is None:
            raise LabError(f"pod server on {node.name} is not running")
        try:
            reply = json.loads(proc.ask(json.dumps(message), CONTROL_TIMEOUT))
        except (LabError, ValueError) as exc:
            raise LabError(f"pod server on {node.name}: {message['op']} failed: {exc}") from None
        if not reply.get("ok"):
            raise LabError(f"pod server on {node.name}: {message['op']}: {reply.get('error')}")

    def stop(self) -> None:
        """Kill every server this process started (a crashed run's are found by path)."""
        for proc in self._procs.values():
            proc.kill()
        self._procs.clear()
