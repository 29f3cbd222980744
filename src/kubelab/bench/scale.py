"""`kubelab bench scale`: how each proxy mode's cost grows with N Services x M endpoints.

For each mode the kernel supports, one node, M real endpoint pods, and Services created in
steps up to each N (every Service has the same M endpoints, so the rules hold N x M
endpoint entries as kube-proxy would write them). At each N:
- rule counts (iptables rules and chains; nftables rules, chains, map elements),
- full-sync time (render + load), and a plain `iptables-restore` or `nft -f` of the same
  text in the same run, the baseline the reference proxier must match,
- one-Service add and remove (network-programming latency, and the time of the write to
  the kernel alone); for nftables also the kernel's commit floor at this size (a batch of
  one chain and one verdict rule, which makes the kernel revalidate the whole table, next
  to one without a verdict),
- kernel memory taken by the rules (MemAvailable before and after, rough),
- first-connection latency p50/p90/p99 (sequential new TCP connects, bounded count) to the
  first Service, the last Service and a NodePort.

The run stops cleanly before a step whose predicted cost would pass the budget; a step
that fails (a load that does not finish in time) is recorded as an error row, its mode
stops there, and the run goes on with the next mode and renders what it measured.
"""

from __future__ import annotations

import json
import textwrap
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from kubelab.dataplanes.reference.dataplane import ReferenceDataplane
from kubelab.dataplanes.reference.proxier import nft_netlink
from kubelab.errors import EnvironmentMissing, LabError
from kubelab.hosts import Runner
from kubelab.lab import Lab
from kubelab.naming import NFT_TABLE
from kubelab.results import ResultRow, Verdict
from kubelab.runs import RunFolder
from kubelab.spec import LabSpec, ServiceSpec, parse_spec

DEFAULT_SIZES = (100, 1000, 5000, 10000)
LOAD_TIMEOUT_S = 600.0
# the kernel's own loader, fed the same text the proxier's full sync loads
PLAIN_LOADERS = {"iptables": ["iptables-restore"], "nftables": ["nft", "-f", "-"]}
APPLY_DETAIL = {
    "nftables": "the netlink batch alone (nft -f over SSH)",
    "iptables": "the iptables-restore --noflush of the changed chains alone",
}
NODE_PORT = 30080
GROWTH = 1.3  # a step's cost is predicted as last_cost * (n / last_n) ** GROWTH

Progress = Callable[[str], None]

_CONNECT = """
import json, socket, time
out = []
for _ in range({count}):
    s = socket.socket()
    s.settimeout(2)
    t = time.perf_counter()
    try:
        s.connect(({host!r}, {port}))
        out.append((time.perf_counter() - t) * 1e6)
    except OSError:
        out.append(None)
    finally:
        s.close()
print(json.dumps(out))
"""


@dataclass
class ScaleConfig:
    modes: list[str]
    sizes: list[int] = field(default_factory=lambda: list(DEFAULT_SIZES))
    endpoints: int = 10
    budget_s: float = 300.0
    connects: int = 200


def bench_spec(mode: str, endpoints: int) -> LabSpec:
    return parse_spec(
        {
            "name": f"klb{mode[:3]}",
            "substrate": {"kind": "netns"},
            "dataplane": {"kind": "reference", "proxy_mode": mode, "pod_network": "host-gw"},
            "nodes": [{"name": "node1"}],
            "workloads": [{"name": "echo", "pods_per_node": endpoints}],
            "services": [
                {
                    "name": "np",
                    "workload": "echo",
                    "type": "NodePort",
                    "ports": [
                        {"name": "http", "port": 80, "target_port": 8080, "node_port": NODE_PORT}
                    ],
                }
            ],
        },
        f"bench-{mode}",
    )


def connect_latencies(runner: Runner, host: str, port: int, count: int) -> list[float]:
    """Microseconds per sequential new TCP connect from inside the member."""
    result = runner.run(
        [runner.python, "-c", textwrap.dedent(_CONNECT.format(host=host, port=port, count=count))],
        timeout=count * 2 + 30,
    )
    values = [v for v in json.loads(result.stdout) if v is not None]
    if not values:
        raise LabError(f"no connection to {host}:{port} succeeded")
    return values


def _mem_available_kb() -> int:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1])
    return 0


def echo_service(name: str) -> ServiceSpec:
    """A ClusterIP Service of the echo workload, port 80 -> 8080 (the benchmarks' unit)."""
    return ServiceSpec.model_validate(
        {
            "name": name,
            "workload": "echo",
            "ports": [{"name": "http", "port": 80, "target_port": 8080}],
        }
    )


def _spec(i: int) -> ServiceSpec:
    return echo_service(f"svc-{i:05d}")


def _timed(action: Callable[[], Any]) -> float:
    t = time.perf_counter()
    action()
    return time.perf_counter() - t


class ScaleBench:
    def __init__(self, config: ScaleConfig, run: RunFolder, progress: Progress) -> None:
        self.config = config
        self.run_folder = run
        self.emit = run.writer.add_rows
        self.progress = progress
        self.started = time.monotonic()

    def remaining(self) -> float:
        return self.config.budget_s - (time.monotonic() - self.started)

    def run(self) -> None:
        for mode in self.config.modes:
            lab = Lab(bench_spec(mode, self.config.endpoints))
            try:
                lab.check()
            except EnvironmentMissing as exc:  # a mode this kernel lacks: a skip, its reason
                self.run_folder.use(replace(self.run_folder.writer.context, proxy_mode=mode))
                self.emit([self._row(mode, 0, "verdict", 0, "", Verdict.SKIP, str(exc))])
                continue
            lab.save_status = False  # the status file would hold every Service, every sync
            lab.up()
            try:
                self.run_folder.attach(lab)
                self._mode(lab, mode)
            finally:
                lab.down()

    def _row(
        self,
        mode: str,
        n: int,
        metric: str,
        value: float,
        unit: str = "",
        verdict: Verdict = Verdict.PASS,
        detail: str = "",
    ) -> ResultRow:
        return ResultRow(
            "bench_scale", f"{mode}/N={n}", metric, float(value), unit, verdict, detail
        )

    def _mode(self, lab: Lab, mode: str) -> None:
        created = 0
        last_cost: tuple[int, float] | None = None
        for n in self.config.sizes:
            if last_cost is not None:
                predicted = last_cost[1] * (n / last_cost[0]) ** GROWTH
                if predicted > self.remaining():
                    self.progress(
                        f"{mode}: stopping before N={n} (predicted {predicted:.0f}s, "
                        f"{self.remaining():.0f}s of budget left)"
                    )
                    self.emit(
                        [
                            self._row(
                                mode,
                                n,
                                "verdict",
                                0,
                                "",
                                Verdict.SKIP,
                                f"budget: N={n} predicted {predicted:.0f}s, "
                                f"{self.remaining():.0f}s left",
                            )
                        ]
                    )
                    return
            step_started = time.monotonic()
            self.progress(f"{mode}: N={n} Services x {self.config.endpoints} endpoints")
            before_kb = _mem_available_kb()
            try:
                lab.create_services([_spec(i) for i in range(created, n)])
                created = n
                rows = self._measure(lab, mode, n, before_kb)
            except LabError as exc:  # an overrun or a failed load: recorded, the mode stops
                self.progress(f"{mode}: N={n}: {exc}")
                self.emit([self._row(mode, n, "verdict", 0, "", Verdict.ERROR, str(exc))])
                return
            cost = time.monotonic() - step_started
            rows.append(self._row(mode, n, "step_seconds", cost, "s"))
            rows.append(self._row(mode, n, "verdict", 1))
            self.emit(rows)
            last_cost = (n, cost)

    def _measure(self, lab: Lab, mode: str, n: int, before_kb: int) -> list[ResultRow]:
        dataplane = lab.dataplane
        if not isinstance(dataplane, ReferenceDataplane):
            raise LabError(
                "bench scale measures the reference proxier; use the reference dataplane"
            )
        counts = dataplane.count_rules("node1")
        rows = [self._row(mode, n, f"{k}", v, "count") for k, v in counts.items()]
        rows.append(
            self._row(
                mode,
                n,
                "rules_memory",
                (before_kb - _mem_available_kb()) / 1024,
                "MB",
                detail="MemAvailable drop, rough",
            )
        )
        runner = lab.runner("node1")
        full = dataplane.full_sync()  # everything loaded, as on a kube-proxy restart
        rows.append(self._row(mode, n, "full_sync", full, "s", detail="render + load"))
        if mode in PLAIN_LOADERS:
            text = dataplane.render_rules("node1")
            tool = PLAIN_LOADERS[mode]
            plain = _timed(lambda: runner.run(tool, input=text, timeout=LOAD_TIMEOUT_S))
            rows.append(
                self._row(
                    mode,
                    n,
                    "plain_restore",
                    plain,
                    "s",
                    detail=f"{' '.join(tool)} of the same text alone",
                )
            )
        added = lab.create_service(_spec(99_999))
        rows.append(self._row(mode, n, "add_one_service", added.seconds, "s"))
        apply_seconds = dataplane.last_apply_seconds
        if apply_seconds is not None:
            rows.append(
                self._row(
                    mode,
                    n,
                    "add_one_service_apply",
                    apply_seconds,
                    "s",
                    detail=APPLY_DETAIL.get(mode, ""),
                )
            )
        if mode == "nftables":
            rows += self._commit_floor(mode, n, runner)
        removed = lab.delete_service("default/svc-99999")
        rows.append(self._row(mode, n, "remove_one_service", removed.seconds, "s"))
        pod = lab.running_pods("echo")[0].name
        targets = {
            "first_service": lab.clusterip_target("default/svc-00000"),
            "last_service": lab.clusterip_target(f"default/svc-{n - 1:05d}"),
        }
        for label, (host, port) in targets.items():
            rows += self._latency(
                mode, n, label, connect_latencies(lab.runner(pod), host, port, self.config.connects)
            )
        host, port = lab.nodeport_target("default/np", "node1")
        rows += self._latency(
            mode,
            n,
            "nodeport",
            connect_latencies(lab.runner("client"), host, port, self.config.connects),
        )
        return rows

    def _commit_floor(self, mode: str, n: int, runner: Runner) -> list[ResultRow]:
        """The kernel's own share of any one-Service change at this size (median of 5);
        nothing when the node is not reachable over netlink."""
        rows = []
        for verdict, name, detail in (
            (True, "kernel_commit_verdict", "one chain + one accept rule: table revalidated"),
            (False, "kernel_commit_plain", "one chain + one counter rule: no revalidation"),
        ):
            runs = [nft_netlink.commit_floor(runner, NFT_TABLE, verdict) for _ in range(5)]
            seconds = [r for r in runs if r is not None]
            if not seconds:
                return []
            rows.append(self._row(mode, n, name, float(np.median(seconds)), "s", detail=detail))
        return rows

    def _latency(self, mode: str, n: int, label: str, values: list[float]) -> list[ResultRow]:
        p50, p90, p99 = np.percentile(values, [50, 90, 99])
        detail = f"{len(values)} sequential new connections"
        return [
            self._row(mode, n, f"latency_{label}_p{q}", v, "us", detail=detail)
            for q, v in (("50", p50), ("90", p90), ("99", p99))
        ]
