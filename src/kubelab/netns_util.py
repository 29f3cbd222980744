"""Small helpers over pyroute2's namespace calls, for code that runs on this kernel."""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from pyroute2 import netns

NETNS_DIR = Path("/run/netns")


def list_netns(prefix: str = "") -> list[str]:
    return sorted(n for n in netns.listnetns() if n.startswith(prefix))


@contextmanager
def entered(name: str) -> Iterator[None]:
    """Run the block with this thread inside namespace `name`, and always come back."""
    home = os.open("/proc/self/ns/net", os.O_RDONLY)
    try:
        netns.setns(name, flags=0)
        yield
    finally:
        netns.setns(home, flags=0)
        os.close(home)


def set_sysctl(name: str, key: str, value: str) -> None:
    """Set a per-namespace sysctl such as net/ipv4/ip_forward inside namespace `name`."""
    with entered(name), open(f"/proc/sys/{key}", "w") as f:
        f.write(value)


def pids_in(name: str) -> list[int]:
    """Processes whose network namespace is `name` (what `ip netns pids` prints)."""
    target = os.stat(NETNS_DIR / name)
    out = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            st = os.stat(entry / "ns" / "net")
        except OSError:
            continue
        if (st.st_dev, st.st_ino) == (target.st_dev, target.st_ino):
            out.append(int(entry.name))
    return out


def pids_mentioning(text: str) -> list[int]:
    """Processes whose command line contains `text` (never this process)."""
    out = []
    me = os.getpid()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == me:
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if text in cmdline:
            out.append(int(entry.name))
    return out


def kill_and_wait(pids: list[int], timeout: float = 3.0) -> None:
    """SIGKILL every pid and wait until each is gone (reaped or re-parented and reaped)."""
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + timeout
    for pid in pids:
        while time.monotonic() < deadline:
            try:
                done, _ = os.waitpid(pid, os.WNOHANG)  # our own child: reap it
                if done:
                    break
            except ChildProcessError:
                try:
                    state = Path(f"/proc/{pid}/stat").read_text().split()[2:3]
                except OSError:
                    break  # gone
                if state == ["Z"]:  # a zombie of another parent holds no namespace
                    break
            time.sleep(0.01)


def create_netns(name: str) -> None:
    netns.create(name)


def remove_netns(name: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        netns.remove(name)
