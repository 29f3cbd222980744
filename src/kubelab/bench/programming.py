"""`kubelab bench programming`: network-programming latency across many nodes.

kube-proxy's network_programming_duration_seconds is the time from a change of a Service
or its endpoints to the moment a node's rules carry it. Here, for each node count and
proxy mode: a lab of that many nodes, a workload of `endpoints` pods spread over them, and
`services` Services loaded at once; then `changes` one-Service changes (add, switch to
ClientIP affinity, remove), each timed per node from its publication to that node's rules
loaded (its proxier's restore or nft transaction returned), along with each node's own
sync time (kube-proxy's sync_proxy_rules_duration_seconds). Every node's kube-proxy syncs
on its own, in parallel; on one machine they share its cores, so the tail includes the wait
for a CPU, which the report says. Before the lab goes down, the first and the last node's
rules are audited against what the Services call for.

A configuration predicted to pass the budget is skipped with its reason, and a step that
fails (a restore that times out) is recorded as an error row: the run goes on and the
report holds what was measured.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import pandas as pd

from kubelab.bench.scale import echo_service
from kubelab.dataplanes.base import ProgrammingEvent
from kubelab.errors import EnvironmentMissing, LabError
from kubelab.lab import Lab
from kubelab.results import ResultRow, Verdict
from kubelab.rules.audit import audit
from kubelab.rules.expected import diff_tables, expected_table
from kubelab.runs import RunFolder
from kubelab.spec import LabSpec, parse_spec

SCENARIO = "bench_programming"
DEFAULT_NODES = (10, 100)
Progress = Callable[[str], None]


@dataclass
class ProgrammingConfig:
    modes: list[str]
    nodes: list[int] = field(default_factory=lambda: list(DEFAULT_NODES))
    services: int = 1000
    endpoints: int = 10
    changes: int = 12
    budget_s: float = 900.0


def programming_spec(mode: str, nodes: int, endpoints: int) -> LabSpec:
    return parse_spec(
        {
            "name": "klbprog",
            "substrate": {"kind": "netns"},
            "dataplane": {"kind": "reference", "proxy_mode": mode, "pod_network": "host-gw"},
            "nodes": [{"name": f"node{i}"} for i in range(1, nodes + 1)],
            "workloads": [{"name": "echo", "replicas": endpoints}],
            "services": [],
        },
        f"bench programming ({mode}, {nodes} nodes)",
    )


def percentiles(values: list[float]) -> dict[str, float]:
    p50, p99 = np.percentile(values, [50, 99])
    return {"p50": float(p50), "p99": float(p99), "max": float(max(values))}


class ProgrammingBench:
    def __init__(self, config: ProgrammingConfig, run: RunFolder, progress: Progress) -> None:
        self.config = config
        self.run_folder = run
        self.progress = progress
        self.started = time.monotonic()

    def remaining(self) -> float:
        return self.config.budget_s - (time.monotonic() - self.started)

    def row(
        self,
        case: str,
        metric: str,
        value: float,
        unit: str = "",
        verdict: Verdict = Verdict.PASS,
        detail: str = "",
    ) -> ResultRow:
        return ResultRow(SCENARIO, case, metric, float(value), unit, verdict, detail)

    def emit(self, *rows: ResultRow) -> None:
        self.run_folder.writer.add_rows(rows)

    def run(self) -> None:
        last: dict[str, tuple[int, float]] = {}  # mode -> nodes, seconds it last took
        for nodes in sorted(self.config.nodes):
            for mode in self.config.modes:
                case = f"{mode}/nodes={nodes}"
                before = last.get(mode)
                predicted = before[1] * nodes / before[0] if before else 0.0
                if predicted > self.remaining():
                    self.progress(f"{case}: skipped, predicted {predicted:.0f}s")
                    self._skip(mode, case, f"budget: predicted {predicted:.0f}s, "
                               f"{self.remaining():.0f}s left")  # fmt: skip
                    continue
                started = time.monotonic()
                self._configuration(mode, nodes, case)
                last[mode] = (nodes, time.monotonic() - started)

    def _skip(self, mode: str, case: str, reason: str) -> None:
        self.run_folder.use(replace(self.run_folder.writer.context, proxy_mode=mode))
        self.emit(self.row(case, "verdict", 0, verdict=Verdict.SKIP, detail=reason))

    def _configuration(self, mode: str, nodes: int, case: str) -> None:
        lab = Lab(programming_spec(mode, nodes, self.config.endpoints))
        try:
            lab.check()
        except EnvironmentMissing as exc:  # a mode this kernel lacks: a skip, its reason
            self._skip(mode, case, str(exc))
            return
        lab.save_status = False  # the status file would hold every Service, every sync
        self.progress(f"{case}: lab up")
        up_started = time.perf_counter()
        lab.up()
        try:
            self.run_folder.attach(lab)
            self.emit(self.row(case, "lab_up", time.perf_counter() - up_started, "s"))
            self._measure(lab, case)
        except LabError as exc:  # an overrun or a failed restore: recorded, the run goes on
            self.progress(f"{case}: {exc}")
            self.emit(self.row(case, "verdict", 0, verdict=Verdict.ERROR, detail=str(exc)))
        finally:
            lab.down()

    def _measure(self, lab: Lab, case: str) -> None:
        n, k = self.config.services, self.config.changes
        self.progress(f"{case}: {n} Services on every node")
        loaded = lab.create_services([echo_service(f"svc-{i:05d}") for i in range(n)])
        self.emit(*self._summary(case, "initial_sync", [loaded], f"{n} Services at once"))
        events: list[ProgrammingEvent] = []
        for i in range(k):
            self.progress(f"{case}: change {i + 1} of {k}")
            events.append(self._change(lab, i))
        self.run_folder.writer.add_samples(SCENARIO, case, self._samples(events))
        detail = (
            f"{k} one-Service changes x {len(lab.topology.nodes)} nodes, published -> the "
            f"node's rules loaded, with {n} Services; the nodes share this machine's cores"
        )
        self.emit(*self._summary(case, "programming", events, detail))
        self.emit(*self._summary(case, "node_sync", events, "each node's own sync", own=True))
        problems = self._audit(lab)
        self.emit(
            self.row(
                case,
                "verdict",
                float(not problems),
                verdict=Verdict.FAIL if problems else Verdict.PASS,
                detail="; ".join(problems[:3])
                or "the first and the last node carry exactly what the Services call for",
            )
        )

    def _change(self, lab: Lab, i: int) -> ProgrammingEvent:
        """add -> ClientIP affinity -> remove, over and over."""
        name = f"churn-{i // 3:03d}"
        if i % 3 == 0:
            return lab.create_service(echo_service(name))
        if i % 3 == 1:
            lab.update_service(f"default/{name}", session_affinity="ClientIP")
            return lab.programming[-1]
        return lab.delete_service(f"default/{name}")

    def _summary(
        self,
        case: str,
        metric: str,
        events: list[ProgrammingEvent],
        detail: str,
        own: bool = False,
    ) -> list[ResultRow]:
        values = [s for e in events for s in (e.node_sync if own else e.per_node).values()]
        if not values:
            raise LabError(f"{metric}: no node synced")
        detail = f"{detail}; {len(values)} samples"
        return [
            self.row(case, f"{metric}_{q}", v * 1000, "ms", detail=detail)
            for q, v in percentiles(values).items()
        ]

    @staticmethod
    def _samples(events: list[ProgrammingEvent]) -> pd.DataFrame:
        return pd.DataFrame(
            [
                {
                    "change": e.change,
                    "node": node,
                    "latency_ms": seconds * 1000,
                    "sync_ms": e.node_sync.get(node, float("nan")) * 1000,
                    "t": e.published_at,
                }
                for e in events
                for node, seconds in e.per_node.items()
            ]
        )

    @staticmethod
    def _audit(lab: Lab) -> list[str]:
        nodes = lab.topology.nodes
        objects: dict[str, Any] = lab.objects()
        problems = []
        for node in {nodes[0].name, nodes[-1].name}:
            table = audit(
                lab.dataplane.dump_rules(node),
                f"{node} rules",
                node_addresses=lab.node_addresses(node),
            )
            want = expected_table(objects, node, lab.dataplane.proxy_mode)
            problems += [f"{node}: {d}" for d in diff_tables(want, table)]
        return problems
