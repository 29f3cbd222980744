"""Real requests from inside lab members, for tests that need more than Locust probes."""

from __future__ import annotations

import subprocess
import sys
from typing import Any

from conftest import ROOT
from kubelab.lab import Lab
from kubelab.traffic import inline


def http_get(lab: Lab, member: str, url: str, count: int = 1, timeout: float = 2.0) -> list[dict]:
    """`count` GETs from inside `member`, a new connection each: ok, body or error, seconds."""
    return inline.http_get(lab.runner(member), lab.topology.require_own(url), count, timeout)


def bodies(results: list[dict[str, Any]]) -> list[str]:
    assert all(r["ok"] for r in results), [r for r in results if not r["ok"]][:3]
    return [r["body"] for r in results]


def udp_ask(lab: Lab, member: str, *args: Any, **kwargs: Any) -> list[str | None]:
    """inline.udp_ask from inside `member`, to the lab's own addresses only."""
    lab.topology.require_own(str(args[0]))
    return inline.udp_ask(lab.runner(member), *args, **kwargs)


def kubelab(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """The command line, as a person runs it, from the checkout."""
    return subprocess.run(
        [sys.executable, "-m", "kubelab.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
        check=False,
    )
