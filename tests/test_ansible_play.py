"""Playbooks through ansible-runner, for real, against this machine (connection local):
the progress tally counts ok / changed per host, and a failed task stops the run with one
line naming the task, the host and Ansible's message."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import pytest
from rich.console import Console

from kubelab import signals
from kubelab.errors import LabError
from kubelab.vm.ansible_play import run_playbook

PLAY = """
- name: A small play
  hosts: all
  gather_facts: false
  tasks:
    - name: Write a file
      ansible.builtin.copy:
        content: "hello\\n"
        dest: "{{ out }}"
        mode: "0644"
    - name: Read it back
      ansible.builtin.command: cat {{ out }}
      changed_when: false
"""
FAILING = (
    PLAY
    + """    - name: Say boom
      ansible.builtin.fail:
        msg: boom went the task
"""
)


def _inventory(tmp_path: Path) -> Path:
    inventory = tmp_path / "inventory.ini"
    inventory.write_text("here ansible_connection=local ansible_python_interpreter=python3\n")
    return inventory


def test_a_play_reports_ok_and_changed_per_host_and_a_second_run_changes_nothing(
    tmp_path: Path,
) -> None:
    play = tmp_path / "play.yml"
    play.write_text(PLAY)
    out = tmp_path / "hello.txt"
    console = Console(file=open(tmp_path / "console.txt", "w"))  # noqa: SIM115
    first = run_playbook(play, _inventory(tmp_path), tmp_path / "a1", {"out": str(out)}, console)
    assert out.read_text() == "hello\n"
    assert dict(first.tally["here"]) == {"changed": 1, "ok": 1}
    second = run_playbook(play, _inventory(tmp_path), tmp_path / "a2", {"out": str(out)}, console)
    assert dict(second.tally["here"]) == {"ok": 2}
    assert (tmp_path / "a2" / "artifacts").is_dir()


def test_a_failed_task_stops_the_run_with_one_line(tmp_path: Path) -> None:
    play = tmp_path / "fail.yml"
    play.write_text(FAILING)
    console = Console(file=open(tmp_path / "console.txt", "w"))  # noqa: SIM115
    with pytest.raises(LabError) as caught:
        run_playbook(
            play, _inventory(tmp_path), tmp_path / "a", {"out": str(tmp_path / "x")}, console
        )
    message = str(caught.value)
    assert "task 'Say boom' failed on here: boom went the task" in message
    assert "\n" not in message


SLOW = """
- name: A slow play
  hosts: all
  gather_facts: false
  tasks:
    - name: Wait
      ansible.builtin.command: sleep 30
      changed_when: false
"""


def test_sigterm_during_a_play_cancels_it_and_stops_kubelab(tmp_path: Path) -> None:
    """ansible-runner installs its own SIGINT/SIGTERM handlers unless handed a cancel
    callback; kubelab's must stay, and a stop must end the play and reach kubelab."""
    play = tmp_path / "slow.yml"
    play.write_text(SLOW)
    console = Console(file=open(tmp_path / "console.txt", "w"))  # noqa: SIM115
    signals.install()
    try:
        threading.Timer(3.0, os.kill, (os.getpid(), signal.SIGTERM)).start()
        started = time.monotonic()
        with pytest.raises(signals.Terminated):
            run_playbook(play, _inventory(tmp_path), tmp_path / "a", {}, console)
        assert time.monotonic() - started < 25, "the play ran on after the stop"
        assert signal.getsignal(signal.SIGTERM) is signals._stop  # kubelab's, not runner's
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.default_int_handler)
