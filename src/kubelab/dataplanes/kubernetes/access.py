"""How kubelab reaches a cluster's API server.

An existing cluster: the user's kubeconfig, as it is. A cluster kubelab built: the
control plane's `/etc/kubernetes/admin.conf`, pointed at a local end of an SSH tunnel to
the control plane's loopback (`ssh -N -L 127.0.0.1:PORT:127.0.0.1:6443`), so nothing of
the lab is routed to this host: the VMs stay reachable only through the lab's namespace,
as the ssh_config's ProxyCommand enters it. The API server's certificate names 127.0.0.1
(kubeadm.py's certSANs).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

import yaml

from kubelab.dataplanes.kubernetes.kubeadm import API_PORT
from kubelab.errors import LabError
from kubelab.substrates.base import Substrate

if TYPE_CHECKING:
    from kubelab.tunnel import SshTunnel

ADMIN_CONF = "/etc/kubernetes/admin.conf"


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
        self._tunnel: SshTunnel | None = None

    @property
    def path(self) -> Path:
        return Path(self.given) if self.given else self.state_dir / "kubeconfig"

    def open(self) -> Path:
        """The kubeconfig to use; for a built cluster, the tunnel is up when this returns."""
        if self.given:
            return self.path
        admin = self.substrate.runner(self.control_plane).run(["cat", ADMIN_CONF]).stdout
        self._tunnel = self.substrate.forward(self.control_plane, API_PORT)
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.path.write_text(pointed_at(admin, f"https://127.0.0.1:{self._tunnel.local_port}"))
        os.chmod(self.path, 0o600)  # the cluster's admin credentials
        return self.path

    def close(self) -> None:
        if self._tunnel is not None:
            self._tunnel.close()
            self._tunnel = None
        if not self.given:
            self.path.unlink(missing_ok=True)
