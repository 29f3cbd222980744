"""A local port forwarded to a member's loopback over SSH (`ssh -N -L`): how kubelab
reaches a service a member keeps to itself (a control plane's API server) without
routing anything of the lab to this host."""

from __future__ import annotations

import contextlib
import socket
import subprocess
import time
from pathlib import Path

from kubelab.errors import LabError

OPEN_WAIT_S = 30.0


def free_loopback_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class SshTunnel:
    """127.0.0.1:local_port here -> 127.0.0.1:remote_port on `host`; open once made."""

    def __init__(self, ssh_config: Path, host: str, remote_port: int) -> None:
        self.host = host
        self.remote_port = remote_port
        self.local_port = free_loopback_port()
        # a connection of its own, not a shared master's: the forward ends with this
        # process (a master would keep it for ControlPersist)
        argv = [
            "ssh", "-F", str(ssh_config), "-N", "-o", "ExitOnForwardFailure=yes",
            "-o", "ControlMaster=no", "-o", "ControlPath=none",
            "-L", f"127.0.0.1:{self.local_port}:127.0.0.1:{remote_port}", host,
        ]  # fmt: skip
        self._proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + OPEN_WAIT_S
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                err = (self._proc.stderr.read() if self._proc.stderr else b"").decode().strip()
                raise LabError(f"the SSH tunnel to {host}:{remote_port} closed: {err[-300:]}")
            with contextlib.suppress(OSError):
                socket.create_connection(("127.0.0.1", self.local_port), 1).close()
                return
            time.sleep(0.2)
        self.close()
        raise LabError(f"the SSH tunnel to {host}:{remote_port} did not open in {OPEN_WAIT_S:.0f}s")

    def close(self) -> None:
        if self._proc.poll() is None:
            self._proc.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._proc.wait(timeout=10)
        if self._proc.poll() is None:
            self._proc.kill()
            self._proc.wait()
