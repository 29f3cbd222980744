"""Real requests from inside lab members, for tests that need more than Locust probes;
`kubelab` and `kubelab run` as a person runs them; interruption points and lab traces."""

from __future__ import annotations

import ipaddress
import os
import random
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from conftest import ROOT, leftovers, vm_leftovers
from kubelab.lab import Lab
from kubelab.model import Endpoint, Service, ServicePort, ServiceState
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


QUICK = "source_ip and policy"  # three source-IP cases (~12 s): enough to interrupt and rerun


def run_args(spec_file: Path, reports: Path, *extra: str) -> list[str]:
    """`kubelab run` of a spec with the repository's scenarios into `reports`."""
    return [
        "run",
        str(spec_file),
        "--scenarios",
        str(ROOT / "scenarios"),
        "--reports",
        str(reports),
        *extra,
    ]


SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGKILL)


@dataclass(frozen=True)
class Point:
    """Where a run is interrupted: `delay` seconds after it starts, with `sig`."""

    index: int
    sig: signal.Signals
    delay: float
    after_kill: str  # SIGKILL only: what cleans up: the next "up" (then down) or "down"
    fraction: bool = False  # delay is a share of the run's measured length, not seconds

    @property
    def id(self) -> str:
        then = f"-then-{self.after_kill}" if self.sig == signal.SIGKILL else ""
        at = f"{self.delay:.0%}" if self.fraction else f"{self.delay:.2f}s"
        return f"{self.index:02d}-{self.sig.name}-{at}{then}"

    def seconds(self, run_length: float | None = None) -> float:
        if self.fraction:
            assert run_length is not None, "a fractional point needs the run's length"
            return self.delay * run_length
        return self.delay


def interrupt_at(
    proc: subprocess.Popen[bytes], point: Point, log: Path, run_length: float | None = None
) -> None:
    """Wait until the point's delay, then send its signal: SIGINT to the whole process
    group (a terminal's Ctrl-C), any other to kubelab alone."""
    delay = point.seconds(run_length)
    time.sleep(delay)
    assert proc.poll() is None, f"the run ended before {delay:.2f}s: {log.read_text()[-1500:]}"
    if point.sig == signal.SIGINT:
        os.killpg(proc.pid, signal.SIGINT)
    else:
        os.kill(proc.pid, point.sig)


def interruption_points(
    seed: int,
    count: int,
    signals: tuple[signal.Signals, ...],
    window: tuple[float, float],
    fraction: bool = False,
) -> list[Point]:
    """`count` points: each signal about as often, delays uniform over `window` (seconds,
    or shares of the run's measured length when `fraction`)."""
    rng = random.Random(seed)
    sigs = [signals[i % len(signals)] for i in range(count)]
    rng.shuffle(sigs)
    points, kills = [], 0
    for i, sig in enumerate(sigs):
        after = ""
        if sig == signal.SIGKILL:
            after, kills = ("up" if kills % 2 == 0 else "down"), kills + 1
        points.append(Point(i, sig, round(rng.uniform(*window), 2), after, fraction))
    return points


def lab_traces(lab_id: str, vm: bool = False) -> list[str]:
    """leftovers() (vm_leftovers() for a VM lab) plus mounts and unix sockets naming it."""
    found = vm_leftovers(lab_id) if vm else leftovers(lab_id)
    marks = (f"kl-{lab_id}-", f"/run/kubelab/{lab_id}", f"/var/lib/kubelab/labs/{lab_id}")
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        if any(m in line for m in marks):
            found.append(f"mount {line.split()[4]}")
    for line in Path("/proc/net/unix").read_text().splitlines()[1:]:
        if any(m in line for m in marks):
            found.append(f"socket {line.split()[-1]}")
    return found


LAB_TOOL_MARKS = ("kubelab", "vagrant", "ansible", "libvirt", "qemu", "locust", "kl-")


def scratch_entries() -> set[str]:
    """What in the machine's temporary folders looks like it came from a lab or its tools
    (other programs may come and go there meanwhile)."""
    return {
        f"{d}/{n}"
        for d in ("/tmp", "/dev/shm", "/var/tmp")
        for n in os.listdir(d)
        if any(mark in n.lower() for mark in LAB_TOOL_MARKS)
    }


def private_tmp(folder: Path) -> dict[str, str]:
    """An environment whose TMPDIR is an empty folder of the test's own: whatever the lab
    and its tools leave as temporary files stays in there, to be counted."""
    folder.mkdir(parents=True, exist_ok=True)
    return {**os.environ, "TMPDIR": str(folder)}


IP = ipaddress.IPv4Address


def upstream_services() -> list[ServiceState]:
    """The six Services of kube-proxy's TestOverallNFTablesRules and
    TestOverallIPTablesRules (tests/data/dumps/SOURCES.md), in kubelab's model, seen from
    node `test-node`; svc5's health-check port is left out, as kube-proxy ignores it under
    policy Cluster."""

    def svc(name: str, ip: str, kind: str, node_port: int | None = None, **more: Any) -> Service:
        port = ServicePort("p80", "TCP", 80, 80, node_port)
        return Service(name.replace("svc", "ns"), name, kind, IP(ip), (port,), name, **more)  # type: ignore[arg-type]

    def eps(*addresses: str, node: str = "") -> tuple[Endpoint, ...]:
        return tuple(Endpoint(IP(a), 80, node, f"p-{a}") for a in addresses)

    net = ipaddress.IPv4Network
    return [
        ServiceState(svc("svc1", "172.30.0.41", "ClusterIP"), eps("10.180.0.1")),
        ServiceState(
            svc(
                "svc2",
                "172.30.0.42",
                "LoadBalancer",
                3001,
                external_traffic_policy="Local",
                external_ips=(IP("192.168.99.22"),),
                load_balancer_ips=(IP("1.2.3.4"),),
                health_check_node_port=30000,
            ),
            eps("10.180.0.2"),
        ),
        ServiceState(svc("svc3", "172.30.0.43", "NodePort", 3003), eps("10.180.0.3")),
        ServiceState(
            svc("svc4", "172.30.0.44", "NodePort", external_ips=(IP("192.168.99.33"),)),
            eps("10.180.0.4") + eps("10.180.0.5", node="test-node"),
        ),
        ServiceState(
            svc(
                "svc5",
                "172.30.0.45",
                "LoadBalancer",
                3002,
                load_balancer_ips=(IP("5.6.7.8"),),
                load_balancer_source_ranges=(net("203.0.113.0/25"),),
                session_affinity="ClientIP",
            ),
            eps("10.180.0.3"),
        ),
        ServiceState(svc("svc6", "172.30.0.46", "ClusterIP"), ()),
    ]
