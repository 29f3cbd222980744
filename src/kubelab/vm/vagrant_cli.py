"""Vagrant, run for one lab: its Vagrantfile (the project's), its own dotfile folder, the
lab rendered as JSON for the Vagrantfile, and every command inside the lab's namespace
(Vagrant's SSH must reach the VMs, which only that namespace can)."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from kubelab.errors import EnvironmentMissing, LabError


def project_file(name: str) -> Path:
    """A file at the top of kubelab's repository (Vagrantfile, playbooks/)."""
    path = Path(__file__).resolve().parents[3] / name
    if not path.exists():
        raise EnvironmentMissing(
            f"{name} is not beside kubelab's sources ({path}); install kubelab from its "
            "repository with pip install -e ."
        )
    return path


@dataclass(frozen=True)
class SshEntry:
    """One machine's entry of `vagrant ssh-config`."""

    host: str
    hostname: str
    user: str
    port: int
    identity: str


def parse_ssh_config(text: str) -> dict[str, SshEntry]:
    entries: dict[str, SshEntry] = {}
    fields: dict[str, str] = {}

    def flush() -> None:
        if "Host" in fields:
            entries[fields["Host"]] = SshEntry(
                fields["Host"],
                fields["HostName"],
                fields.get("User", "vagrant"),
                int(fields.get("Port", "22")),
                fields["IdentityFile"].strip('"'),
            )

    for line in text.splitlines():
        key, _, value = line.strip().partition(" ")
        if key == "Host":
            flush()
            fields = {}
        if key:
            fields.setdefault(key, value.strip())
    flush()
    return entries


class Vagrant:
    def __init__(
        self, netns: str, state_dir: Path, lab_json: Path, libvirt_uri: str, log_dir: Path
    ) -> None:
        self.netns = netns
        # Vagrant's own temporary files (the keys and scripts it uploads) in the lab's state
        # folder, which `down` removes: a Vagrant killed mid-step leaves them behind
        self.tmp = state_dir / "tmp"
        self.env = {
            **os.environ,
            "TMPDIR": str(self.tmp),
            "VAGRANT_CWD": str(project_file("Vagrantfile").parent),
            "VAGRANT_DOTFILE_PATH": str(state_dir / "vagrant"),
            "KUBELAB_LAB_JSON": str(lab_json),
            "VAGRANT_DEFAULT_PROVIDER": "libvirt",
            "VAGRANT_CHECKPOINT_DISABLE": "1",
            "LIBVIRT_DEFAULT_URI": libvirt_uri,
        }
        self.log = log_dir / "vagrant.log"

    def run(
        self,
        args: Sequence[str],
        timeout: float,
        say: Callable[[str], None] = lambda _: None,
        check: bool = True,
    ) -> str:
        """`vagrant ARGS` in the lab's namespace; its lines that start with "==>" are shown."""
        argv = ["ip", "netns", "exec", self.netns, "vagrant", *args]
        lines: list[str] = []
        self.log.parent.mkdir(parents=True, exist_ok=True)
        self.tmp.mkdir(parents=True, exist_ok=True)
        with self.log.open("a") as log:
            log.write(f"$ vagrant {' '.join(args)}\n")
            proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,  # it asks nothing; the terminal stays untouched
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
                env=self.env,
            )
            assert proc.stdout is not None
            try:
                for line in proc.stdout:
                    log.write(line)
                    lines.append(line.rstrip())
                    if line.startswith("==>") and " -- " not in line:  # not the domain's XML
                        say("  " + line[3:].strip())
                proc.wait(timeout=timeout)
            except BaseException:
                proc.kill()
                proc.wait()
                raise
        if check and proc.returncode != 0:
            why = next((x for x in reversed(lines) if x.strip()), f"exit {proc.returncode}")
            raise LabError(f"vagrant {args[0]} failed: {why.strip()} (whole log: {self.log})")
        return "\n".join(lines)
