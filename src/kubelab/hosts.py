"""The only way onto a lab member (node, pod, client): one facade, small backends.

A Runner runs a command, starts a background process (wait, kill, alive, a line channel
over its stdin and stdout), puts and gets files, and names the Python interpreter to use
there. Every backend turns an argv into a local argv (`wrap`): `nsenter --net=NS ...` for
a namespace on this kernel, `ssh -F CONFIG HOST ...` for a host, and `inside(netns)` for a
namespace on a member, so nothing above this module knows whether a member shares the
harness's kernel or file system. Arguments are lists (never a shell string); quoting for a
remote shell happens in one place, `shlex.join` in SshRunner.
"""

from __future__ import annotations

import collections
import contextlib
import json
import queue
import shlex
import socket
import subprocess
import threading
from abc import ABC, abstractmethod
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from kubelab import netns_util
from kubelab.errors import LabError

DEFAULT_TIMEOUT = 60.0
# `sh -c` prints its own pid, then becomes the program: the pid is the member's, so the
# process can be killed there even when the local end (ssh) is only a pipe to it.
_PID_THEN_EXEC = 'echo "$$"; exec "$@"'


@dataclass(frozen=True)
class CommandResult:
    argv: tuple[str, ...]
    rc: int
    stdout: str
    stderr: str

    @property
    def ok(self) -> bool:
        return self.rc == 0


class Process:
    """A program running on a member, with a line channel over its stdin and stdout."""

    def __init__(self, runner: Runner, argv: Sequence[str], popen: subprocess.Popen[str]) -> None:
        self.runner = runner
        self.argv = tuple(argv)
        self._popen = popen
        self._lines: queue.Queue[str | None] = queue.Queue()
        self._stderr: collections.deque[str] = collections.deque(maxlen=40)
        self._lock = threading.Lock()
        threading.Thread(target=self._read_stdout, daemon=True).start()
        threading.Thread(target=self._read_stderr, daemon=True).start()
        first = self.readline(DEFAULT_TIMEOUT)
        if first is None or not first.strip().isdigit():
            self.kill()
            raise LabError(f"{runner.name}: {shlex.join(argv)} did not start: {self.stderr_tail}")
        self.pid = int(first)

    def _read_stdout(self) -> None:
        assert self._popen.stdout is not None
        for line in self._popen.stdout:
            self._lines.put(line.rstrip("\n"))
        self._lines.put(None)  # the end: readers stop waiting

    def _read_stderr(self) -> None:
        assert self._popen.stderr is not None
        for line in self._popen.stderr:
            self._stderr.append(line.rstrip("\n"))

    @property
    def stderr_tail(self) -> str:
        return " | ".join(list(self._stderr)[-5:]) or f"exit code {self._popen.poll()}"

    def readline(self, timeout: float) -> str | None:
        """The next line the program printed, or None at its end or after `timeout`."""
        try:
            return self._lines.get(timeout=timeout)
        except queue.Empty:
            return None

    def ask(self, line: str, timeout: float) -> str:
        """Send one line on stdin and return the one line it answers."""
        with self._lock:
            if self._popen.stdin is None or not self.alive():
                raise LabError(f"{self.runner.name}: {self.argv[0]} is not running")
            try:
                self._popen.stdin.write(line + "\n")
                self._popen.stdin.flush()
            except OSError as exc:
                raise LabError(f"{self.runner.name}: {self.argv[0]}: {exc}") from None
            reply = self.readline(timeout)
        if reply is None:
            raise LabError(f"{self.runner.name}: {self.argv[0]} did not answer in {timeout}s")
        return reply

    def alive(self) -> bool:
        return self._popen.poll() is None

    def wait(self, timeout: float) -> int | None:
        """Its exit code, or None if it still runs after `timeout` seconds."""
        try:
            return self._popen.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return None

    def kill(self) -> None:
        """SIGKILL the program on its member, then the local end of the channel."""
        pid = getattr(self, "pid", None)
        if pid is not None and self.alive():
            self.runner.run(["kill", "-KILL", str(pid)], check=False, timeout=15)
        if self.alive():
            self._popen.kill()
        self._popen.wait(timeout=15)


class Runner(ABC):
    """Runs argv on one member. Subclasses only say how (`wrap`)."""

    name: str
    python: str = "python3"  # the interpreter to use on the member

    @abstractmethod
    def wrap(self, argv: Sequence[str]) -> list[str]:
        """The local argv that runs `argv` on the member."""

    def netlink(self, protocol: int) -> socket.socket | None:
        """A netlink socket (`protocol`: NETLINK_NETFILTER, ...) into the member's kernel
        when this process can open one there, as for a namespace on this kernel; None when
        the member is reached only by running commands on it (SSH)."""
        return None

    def run(
        self,
        argv: Sequence[str],
        *,
        input: str | None = None,
        check: bool = True,
        timeout: float = DEFAULT_TIMEOUT,
    ) -> CommandResult:
        full = self.wrap(argv)
        try:
            # never the harness's own stdin: ssh sets it non-blocking while it runs, and one
            # killed midway leaves it so for the terminal (ansible then refuses to start)
            proc = subprocess.run(
                full,
                input=input,
                stdin=subprocess.DEVNULL if input is None else None,
                capture_output=True,
                text=True,
                timeout=timeout,
                check=False,
            )
        except subprocess.TimeoutExpired:
            raise LabError(
                f"{self.name}: {shlex.join(argv)} did not finish in {timeout}s"
            ) from None
        except FileNotFoundError as exc:
            raise LabError(f"{self.name}: cannot run {full[0]!r}: {exc.strerror}") from None
        return self._checked(
            CommandResult(tuple(argv), proc.returncode, proc.stdout, proc.stderr), check
        )

    def _checked(self, result: CommandResult, check: bool) -> CommandResult:
        if check and not result.ok:
            err = (result.stderr or result.stdout).strip().splitlines()
            last = err[-1] if err else f"exit code {result.rc}"
            raise LabError(f"{self.name}: {shlex.join(result.argv)} failed: {last}")
        return result

    def feed(
        self, argv: Sequence[str], chunks: Iterable[str], timeout: float = DEFAULT_TIMEOUT
    ) -> CommandResult:
        """Run `argv` with its stdin written from `chunks` as they are produced, so a
        loader parses while the producer still renders; raise LabError if it fails."""
        full = self.wrap(argv)
        try:
            proc = subprocess.Popen(
                full, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                text=True,
            )  # fmt: skip
        except FileNotFoundError as exc:
            raise LabError(f"{self.name}: cannot run {full[0]!r}: {exc.strerror}") from None
        assert proc.stdin and proc.stdout and proc.stderr
        out: dict[str, str] = {}
        readers = [
            threading.Thread(target=lambda k=k, f=f: out.__setitem__(k, f.read()), daemon=True)
            for k, f in (("stdout", proc.stdout), ("stderr", proc.stderr))
        ]
        for reader in readers:
            reader.start()
        try:
            for chunk in chunks:
                proc.stdin.write(chunk)
        except BrokenPipeError:
            pass  # the loader stopped early: its exit code and stderr say why
        finally:
            with contextlib.suppress(BrokenPipeError):
                proc.stdin.close()
        try:
            rc = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise LabError(
                f"{self.name}: {shlex.join(argv)} did not finish in {timeout}s"
            ) from None
        for reader in readers:
            reader.join()
        result = CommandResult(tuple(argv), rc, out.get("stdout", ""), out.get("stderr", ""))
        return self._checked(result, check=True)

    def start(self, argv: Sequence[str]) -> Process:
        """Start `argv` in the background on the member; its stdin and stdout are a line
        channel (Process.ask, Process.readline)."""
        popen = subprocess.Popen(
            self.wrap(["sh", "-c", _PID_THEN_EXEC, "sh", *argv]),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            bufsize=1,
            start_new_session=True,  # Ctrl-C reaches the harness, which then tears down
        )
        return Process(self, argv, popen)

    def put(self, path: str, data: str, mode: str = "644") -> None:
        """Write `data` to `path` on the member, creating its folder."""
        folder = path.rsplit("/", 1)[0] or "/"
        script = 'mkdir -p "$1" && cat > "$2" && chmod "$3" "$2"'
        self.run(["sh", "-c", script, "sh", folder, path, mode], input=data)

    def get(self, path: str) -> str:
        return self.run(["cat", path]).stdout

    def inside(self, netns: str, name: str) -> Runner:
        """A runner for network namespace `netns` on this member (a pod's sandbox)."""
        return NamespacedRunner(self, netns, name)


class LocalRunner(Runner):
    def __init__(self, name: str = "local", python: str = "python3") -> None:
        self.name = name
        self.python = python

    def wrap(self, argv: Sequence[str]) -> list[str]:
        return list(argv)


class NetnsRunner(Runner):
    """Runs a command inside a named network namespace on this kernel. nsenter, not
    `ip netns exec`: the latter gives the command a private mount namespace, and pod
    namespaces a node creates there would not be visible outside it."""

    def __init__(self, name: str, netns: str, python: str = "python3") -> None:
        self.name = name
        self.netns = netns
        self.python = python

    def wrap(self, argv: Sequence[str]) -> list[str]:
        return ["nsenter", f"--net=/run/netns/{self.netns}", *argv]

    def netlink(self, protocol: int) -> socket.socket | None:
        with netns_util.entered(self.netns):  # a socket stays in the namespace it was made in
            return socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, protocol)


class NamespacedRunner(Runner):
    """A namespace on a member, reached through the member's own runner."""

    def __init__(self, parent: Runner, netns: str, name: str) -> None:
        self.parent = parent
        self.netns = netns
        self.name = name
        self.python = parent.python

    def wrap(self, argv: Sequence[str]) -> list[str]:
        return self.parent.wrap(["ip", "netns", "exec", self.netns, *argv])


class SshRunner(Runner):
    """Runs a command over SSH with an ssh_config the lab wrote; `become` adds sudo for a
    user that is not root (as Ansible's become does)."""

    def __init__(
        self,
        name: str,
        ssh_config: str,
        host: str | None = None,
        *,
        become: bool = False,
        python: str = "python3",
    ) -> None:
        self.name = name
        self.ssh_config = ssh_config
        self.host = host or name
        self.become = become
        self.python = python

    def wrap(self, argv: Sequence[str]) -> list[str]:
        remote = ["sudo", "-n", *argv] if self.become else list(argv)
        return ["ssh", "-F", self.ssh_config, self.host, shlex.join(remote)]


def interface_of(runner: Runner, address: str) -> str:
    """The name of the interface holding `address` on the member."""
    for link in json.loads(runner.run(["ip", "-j", "-4", "addr", "show"]).stdout):
        if any(a.get("local") == address for a in link.get("addr_info", [])):
            return str(link["ifname"])
    raise LabError(f"{runner.name}: no interface holds {address}; check the node's address")


def missing_commands(runner: Runner, names: Sequence[str]) -> list[str]:
    """Which of `names` the member cannot run (not on its PATH, or no such file)."""
    probe = 'for t; do command -v "$t" >/dev/null || echo "$t"; done'
    return runner.run(["sh", "-c", probe, "sh", *names], check=False).stdout.split()


def kill_under(runner: Runner, folder: str) -> None:
    """SIGKILL every process on the member whose command line names `folder` (the
    programs the lab put there). "[/]" keeps the pattern from matching pkill's own
    parent (sudo, a shell), whose command line holds the pattern itself."""
    runner.run(["pkill", "-KILL", "-f", "[/]" + folder.strip("/") + "/"], check=False)
