"""Playbooks run from Python with ansible-runner: its events drive a rich progress line
(play, task, host, ok / changed / failed), its artifacts are kept, and a failed task stops
the run with one line naming the task, the host and Ansible's message."""

from __future__ import annotations

import os
import sys
from collections import Counter
from pathlib import Path
from typing import Any

from rich.console import Console

from kubelab import signals
from kubelab.errors import LabError
from kubelab.vm.vagrant_cli import project_file

FAILED = ("runner_on_failed", "runner_on_unreachable")
COUNTED = {"runner_on_ok": "ok", "runner_on_skipped": "skipped", **dict.fromkeys(FAILED, "failed")}


class PlayProgress:
    """Turns ansible-runner events into one live status line and a tally per host."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self.status = console.status("ansible")
        self.play = ""
        self.task = ""
        self.hosts: dict[str, str] = {}  # this task's outcome per host so far
        self.tally: dict[str, Counter[str]] = {}
        self.failure: str | None = None

    def __call__(self, event: dict[str, Any]) -> bool:
        data = event.get("event_data", {})
        kind = event.get("event", "")
        if kind == "playbook_on_play_start":
            self.play = data.get("play", "")
        elif kind == "playbook_on_task_start":
            self.task, self.hosts = data.get("task", ""), {}
            self._show()
        elif kind in COUNTED:
            host = data.get("host", "?")
            result = data.get("res", {})
            changed = kind == "runner_on_ok" and result.get("changed")
            outcome = "changed" if changed else COUNTED[kind]
            if kind in FAILED and data.get("ignore_errors"):
                outcome = "ignored"
            self.tally.setdefault(host, Counter())[outcome] += 1
            self.hosts[host] = outcome
            self._show()
            if outcome == "failed" and self.failure is None:
                message = result.get("msg") or result.get("stderr") or "no message"
                first = str(message).strip().splitlines()[:1] or ["no message"]
                self.failure = f"task {data.get('task', '?')!r} failed on {host}: {first[0]}"
        return True

    def _show(self) -> None:
        done = " ".join(f"{h} {o}" for h, o in sorted(self.hosts.items()))
        self.status.update(f"[cyan]{self.play}[/]: {self.task}  [dim]{done}[/]")

    def summary(self) -> str:
        return "; ".join(
            f"{host} " + " ".join(f"{k}={v}" for k, v in sorted(c.items()))
            for host, c in sorted(self.tally.items())
        )


def playbook_plays(name: str) -> list[dict[str, Any]]:
    """The plays of playbooks/<name> as `kubelab plan` shows them: name, hosts, roles."""
    import yaml

    plays = yaml.safe_load(project_file("playbooks").joinpath(name).read_text())
    return [
        {
            "name": play["name"],
            "hosts": play["hosts"],
            "roles": [r["role"] if isinstance(r, dict) else r for r in play.get("roles", [])],
        }
        for play in plays
    ]


def run_playbook(
    name: str | Path,
    inventory: Path,
    artifacts: Path,
    extravars: dict[str, Any] | None = None,
    console: Console | None = None,
) -> PlayProgress:
    """Run playbooks/<name> (or a playbook at a path) against the inventory; raise
    LabError on the first failure."""
    import ansible_runner  # heavy; only VM labs use it

    console = console or Console(stderr=True, highlight=False)
    progress = PlayProgress(console)
    artifacts.mkdir(parents=True, exist_ok=True)
    # ansible-runner starts ansible-playbook from PATH: this interpreter's bin comes first
    bin_dir = str(Path(sys.executable).parent)
    env = {
        "PATH": f"{bin_dir}:{os.environ.get('PATH', '/usr/bin:/bin')}",
        "ANSIBLE_FORCE_COLOR": "0",
        "ANSIBLE_NOCOLOR": "1",
        "ANSIBLE_RETRY_FILES_ENABLED": "0",
        "ANSIBLE_ROLES_PATH": str(project_file("playbooks") / "roles"),
    }
    # ansible-runner would install its own SIGINT/SIGTERM handlers and never put ours
    # back; handed a cancel callback it installs none: a stop cancels the play, then is
    # raised here as kubelab's interrupt
    with progress.status, signals.shielded() as stop:
        result = ansible_runner.run(
            private_data_dir=str(artifacts),
            playbook=str(project_file("playbooks") / name),  # an absolute name stays as is
            inventory=str(inventory),
            extravars=extravars or {},
            envvars=env,
            event_handler=progress,
            quiet=True,
            suppress_env_files=True,
            cancel_callback=lambda: bool(stop),
        )
    if progress.failure:
        raise LabError(f"{name}: {progress.failure} (artifacts: {artifacts})")
    if result.rc != 0:
        raise LabError(f"{name}: ansible-playbook exited {result.rc} (artifacts: {artifacts})")
    console.print(f"  {name}: {progress.summary()}")
    return progress
