"""SSH to a member that runs no sshd of its own: an ssh_config's ProxyCommand starts the
member's `sshd -i` (inetd mode, one per connection) and talks to it over a pipe, with
keys the lab makes for itself. The netns substrate's ProxyCommand enters a namespace on
this kernel; the existing substrate's, for a cluster reached only through its API, runs
sshd on a node through that node's access pod (dataplanes/kubernetes/node_access.py).
"""

from __future__ import annotations

import subprocess
from pathlib import Path

SSHD = "/usr/sbin/sshd"
HOST_KEY = "ssh_host_ed25519_key"
CLIENT_KEY = "id_ed25519"


def make_keys(folder: Path, comment: str) -> None:
    """A host key for the members' sshd and a client key for this machine, in `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    for key in (HOST_KEY, CLIENT_KEY):
        subprocess.run(
            ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(folder / key)],
            check=True,
        )


def sshd_config(folder: str) -> str:
    """The sshd configuration, for keys found in `folder` on the member."""
    return (
        f"HostKey {folder}/{HOST_KEY}\n"
        f"AuthorizedKeysFile {folder}/authorized_keys\n"
        "PermitRootLogin prohibit-password\nPasswordAuthentication no\n"
        "UsePAM no\nStrictModes no\nPidFile none\nLogLevel ERROR\n"
    )


def known_hosts(folder: Path, names: list[str]) -> str:
    """known_hosts lines naming the lab's host key for each member."""
    key = " ".join((folder / f"{HOST_KEY}.pub").read_text().split()[:2])
    return "".join(f"{name} {key}\n" for name in names)


def sshd_command(config: str) -> list[str]:
    """The member's sshd serving one connection on its stdin and stdout."""
    return [SSHD, "-i", "-f", config]
