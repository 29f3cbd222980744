"""Run a command on a lab member: one facade, small backends, one result type.

Arguments are lists (never a shell string), so quoting happens in one place: `shlex.join`
for backends that must hand a string to a remote shell.
"""

from __future__ import annotations

import shlex
import subprocess
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass

from kubelab.errors import LabError

DEFAULT_TIMEOUT = 60.0


@dataclass(frozen=True)
class CommandResult:
    argv: tuple[str, ...]
    rc: int
    stdout: str
    stderr: str

    @property
    def ok(self) -> bool:
        return self.rc == 0


class Runner(ABC):
    """Runs argv on one member and returns a CommandResult."""

    name: str

    @abstractmethod
    def wrap(self, argv: Sequence[str]) -> list[str]:
        """The local argv that runs `argv` on the member."""

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
            proc = subprocess.run(
                full, input=input, capture_output=True, text=True, timeout=timeout, check=False
            )
        except subprocess.TimeoutExpired:
            raise LabError(
                f"{self.name}: {shlex.join(argv)} did not finish in {timeout}s"
            ) from None
        except FileNotFoundError as exc:
            raise LabError(f"{self.name}: cannot run {full[0]!r}: {exc.strerror}") from None
        result = CommandResult(tuple(argv), proc.returncode, proc.stdout, proc.stderr)
        if check and not result.ok:
            err = (result.stderr or result.stdout).strip().splitlines()
            last = err[-1] if err else f"exit code {result.rc}"
            raise LabError(f"{self.name}: {shlex.join(argv)} failed: {last}")
        return result


class LocalRunner(Runner):
    def __init__(self, name: str = "local") -> None:
        self.name = name

    def wrap(self, argv: Sequence[str]) -> list[str]:
        return list(argv)


class NetnsRunner(Runner):
    """Runs a command inside a named network namespace on this kernel."""

    def __init__(self, name: str, netns: str) -> None:
        self.name = name
        self.netns = netns

    def wrap(self, argv: Sequence[str]) -> list[str]:
        return ["ip", "netns", "exec", self.netns, *argv]


class SshRunner(Runner):
    """Runs a command over SSH with an ssh_config the lab wrote (VMs, or netns nodes)."""

    def __init__(self, name: str, ssh_config: str, host: str | None = None) -> None:
        self.name = name
        self.ssh_config = ssh_config
        self.host = host or name

    def wrap(self, argv: Sequence[str]) -> list[str]:
        return ["ssh", "-F", self.ssh_config, self.host, shlex.join(argv)]
