"""How kubelab reaches a cluster's API server.

An existing cluster: the user's kubeconfig, as it is. A cluster kubelab built: the
control plane's `/etc/kubernetes/admin.conf`, pointed at a local end of an SSH tunnel to
the control plane's loopback (`ssh -N -L 127.0.0.1:PORT:127.0.0.1:6443`), so nothing of
the lab is routed to this host: the VMs stay reachable only through the lab's namespace,
as the ssh_config's ProxyCommand enters it. The API server's certificate names 127.0.0.1
(kubeadm.py's certSANs).
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import time
from pathlib import Path

import yaml

from kubelab.dataplanes.kubernetes.kubeadm import API_PORT
from kubelab.errors import LabError
from kubelab.substrates.base import Substrate

ADMIN_CONF = "/etc/kubernetes/admin.conf"
TUNNEL_WAIT_S = 30.0


def free_loopback_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def pointed_at(kubeconfig: str, server: str) -> str:
    """The kubeconfig with every cluster's server replaced by `server`."""
    doc = yaml.safe_load(kubeconfig)
    if not isinstance(doc, dict) or not doc.get("clusters"):
        raise LabError(f"{ADMIN_CONF} holds no clusters")
    for entry in doc["clusters"]:
        entry["cluster"]["server"] = server
    return yaml.safe_dump(doc, sort_keys=False)


class ApiAccess:
    def __init__(
        self,
        substrate: Substrate,
        state_dir: Path,
        control_plane: str,
        kubeconfig: str | None,
    ) -> None:
        self.substrate = substrate
        self.state_dir = state_dir
        self.control_plane = control_plane
        self.given = kubeconfig
        self._tunnel: subprocess.Popen[bytes] | None = None

    @property
    def path(self) -> Path:
        return Path(self.given) if self.given else self.state_dir / "kubeconfig"

    def open(self) -> Path:
        """The kubeconfig to use; for a built cluster, the tunnel is up when this returns."""
        if self.given:
            return self.path
        admin = self.substrate.runner(self.control_plane).run(["cat", ADMIN_CONF]).stdout
        port = free_loopback_port()
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.path.write_text(pointed_at(admin, f"https://127.0.0.1:{port}"))
        os.chmod(self.path, 0o600)  # the cluster's admin credentials
        argv = [
            "ssh", "-F", str(self.substrate.ssh_config), "-N",
            "-o", "ExitOnForwardFailure=yes",
            "-L", f"127.0.0.1:{port}:127.0.0.1:{API_PORT}", self.control_plane,
        ]  # fmt: skip
        self._tunnel = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + TUNNEL_WAIT_S
        while time.monotonic() < deadline:
            if self._tunnel.poll() is not None:
                err = (self._tunnel.stderr.read() if self._tunnel.stderr else b"").decode()
                raise LabError(f"the SSH tunnel to {self.control_plane}'s API server: {err}")
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1):
                return self.path
            time.sleep(0.2)
        self.close()
        raise LabError(f"the SSH tunnel to {self.control_plane}:{API_PORT} did not open")

    def close(self) -> None:
        if self._tunnel is not None:
            self._tunnel.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._tunnel.wait(timeout=10)
            if self._tunnel.poll() is None:
                self._tunnel.kill()
            self._tunnel = None
        if not self.given:
            self.path.unlink(missing_ok=True)
