"""Measurements and expectations scenarios share: rule audits on every node, probes checked
against a trace of their packet through the node's rules, a chi-square test of an endpoint
spread, failover timelines from per-probe samples."""

from __future__ import annotations

import shlex
from dataclasses import dataclass
from typing import Any, Protocol

import pandas as pd
from scipy import stats

from kubelab.lab import Lab
from kubelab.rules.audit import audit
from kubelab.rules.audit import trace as trace_dump
from kubelab.rules.expected import diff_tables, expected_table
from kubelab.rules.table import ForwardingTable
from kubelab.rules.trace import Packet, Trace

# reject "uniform" below this p-value. The suite runs the test many times a day (every lab,
# every CI run); at 0.001 a fair kernel failed a case about once in 150 CI runs. At 1e-4,
# n=1,200 over 6 endpoints still detects an effect size w=0.17 (one endpoint drawing
# 23% instead of 17%) with 88% power; the kube-proxy bugs it guards against are far larger.
SPREAD_ALPHA = 0.0001


class Recorder(Protocol):
    def metric(self, name: str, value: float, unit: str = "", detail: str = "") -> None: ...

    def expect(self, condition: bool, message: str) -> bool: ...


def audit_nodes(lab: Lab, hosts: dict[str, Any], record: Recorder) -> dict[str, ForwardingTable]:
    """Dump every node's rules through testinfra, read them with the rule auditor, and
    expect exactly the table the Services and endpoints call for (one failure per line)."""
    mode = lab.dataplane.proxy_mode
    command = shlex.join(lab.dataplane.dump_command)
    objects = lab.objects()
    tables = {}
    for node, host in hosts.items():
        table = audit(
            host.check_output(command), f"{node} rules", node_addresses=lab.node_addresses(node)
        )
        for difference in diff_tables(expected_table(objects, node, mode), table):
            record.expect(False, f"{node}: {difference}")
        for warning in table.warnings:
            record.expect(False, f"{node}: {warning}")
        tables[node] = table
    return tables


def external_policy_in_rules(
    lab: Lab, host: Any, table: ForwardingTable, key: str
) -> tuple[str | None, list[str]]:
    """What a node's rules do with external traffic to the Service's first NodePort:
    ("Cluster" = masquerade, "Local" = keep the source, None = not found), and the
    endpoints it reaches. IPVS dumps hold no masquerade: kube-proxy's IPVS mode keeps it in
    the ipsets KUBE-NODE-PORT-<proto> (masquerade) and KUBE-NODE-PORT-LOCAL-<proto>
    (exempt), read here with `ipset save` through testinfra."""
    port = lab.service(key).ports[0]
    front = table.find("nodeport", None, port.protocol.lower(), port.node_port or 0)
    if front is None:
        return None, []
    if lab.dataplane.proxy_mode != "ipvs":
        policy = "Local" if front.local_only else "Cluster" if front.masquerade_all else None
        return policy, sorted(front.endpoints)
    members = {
        tuple(line.split()[1:3])
        for line in host.check_output("ipset save").splitlines()
        if line.startswith("add ")
    }
    number = str(port.node_port)
    if (f"KUBE-NODE-PORT-LOCAL-{port.protocol}", number) in members:
        return "Local", sorted(front.endpoints)
    if (f"KUBE-NODE-PORT-{port.protocol}", number) in members:
        return "Cluster", sorted(front.endpoints)
    return None, sorted(front.endpoints)


@dataclass(frozen=True)
class Spread:
    counts: dict[str, int]
    chi2: float
    p_value: float
    n: int


def uniform_spread(
    names: list[str], expected: set[str], record: Recorder, alpha: float = SPREAD_ALPHA
) -> Spread:
    """Chi-square goodness of fit of answers per endpoint against the uniform spread."""
    counts = {pod: names.count(pod) for pod in sorted(expected)}
    observed = list(counts.values())
    result = stats.chisquare(observed)
    spread = Spread(counts, float(result.statistic), float(result.pvalue), len(names))
    detail = (
        f"chi-square {spread.chi2:.2f}, {len(expected) - 1} dof, n={spread.n}, "
        f"alpha={alpha}: " + ", ".join(f"{k}={v}" for k, v in counts.items())
    )
    record.metric("spread_p_value", spread.p_value, "p", detail)
    record.metric("spread_chi2", spread.chi2, "", detail)
    record.expect(
        spread.p_value >= alpha,
        f"the spread over endpoints is not uniform (p={spread.p_value:.2g} < {alpha}; {detail})",
    )
    stray = sorted(set(names) - expected)
    record.expect(not stray, f"answers from pods that are not endpoints: {stray}")
    return spread


@dataclass(frozen=True)
class Failover:
    probes: int
    failed: int
    blackout_s: float  # first to last failed probe, by send time (0 with none)
    recovery_s: float  # the change -> the last failed probe's send time (0 with none)
    per_second: pd.DataFrame  # second, probes, failed


def failover_timeline(samples: pd.DataFrame, change_at: float) -> Failover:
    """Failures per second around a change made at `change_at` (time.time()), by the time
    each probe was sent: a probe sent during the switch that then hangs until its timeout
    belongs to the switch, not to the second it gave up in."""
    frame = samples.assign(second=(samples["t"] - change_at).floordiv(1).astype(int))
    per_second = (
        frame.groupby("second")
        .agg(probes=("ok", "size"), failed=("ok", lambda s: int((~s).sum())))
        .reset_index()
    )
    failures = frame[~frame["ok"]]
    if failures.empty:
        return Failover(len(frame), 0, 0.0, 0.0, per_second)
    first, last = float(failures["t"].min()), float(failures["t"].max())
    return Failover(len(frame), len(failures), last - first, max(0.0, last - change_at), per_second)


def record_failover(record: Recorder, outcome: Failover) -> None:
    record.metric("probes", outcome.probes, "count")
    record.metric("failed_probes", outcome.failed, "count")
    record.metric(
        "blackout_window", outcome.blackout_s, "s", "first to last failed probe, by send time"
    )
    record.metric("recovery_time", outcome.recovery_s, "s", "change to the last failed probe sent")


# at most this many disagreeing probes are named one by one; the rest are counted
NAMED_DISAGREEMENTS = 3


def crosscheck_probes(
    lab: Lab,
    host: Any,
    node: str,
    record: Recorder,
    answers: list[tuple[str, str | None]],
    source: str,
    destination: str,
    port: int,
    workload: str,
    protocol: str = "tcp",
) -> Trace:
    """The rules' model against what the kernel did: trace the probes' packet (`source` to
    `destination:port`) through `node`'s dump, then expect every probe's answering pod
    (`answers`: pod name and the client address it saw, None if unknown) among the
    trace's endpoints (`workload`'s pods, at the port their Service targets), and the
    address it saw to be the source unless the trace masquerades that endpoint. IPVS
    dumps hold no masquerading: only the pod is checked there."""
    dump = host.check_output(shlex.join(lab.dataplane.dump_command))
    packet = Packet(source, destination, port, protocol)
    trace = trace_dump(dump, f"{node} rules", packet, lab.node_addresses(node))
    where = {p.name: f"{p.ip}:{p.port}" for p in lab.running_pods(workload)}
    shown = f"trace {source} -> {destination}:{port}/{protocol} on {node}: {trace.outcome}"
    shown += f" to {', '.join(trace.endpoints) or 'nothing'}"
    bad: list[str] = []
    for i, (pod, seen) in enumerate(answers):
        endpoint = where.get(pod, f"{pod}?")
        if endpoint not in trace.endpoints:
            bad.append(f"probe {i}: {pod} ({endpoint}) answered, outside the {shown}")
            continue
        if seen is None or lab.dataplane.proxy_mode == "ipvs":
            continue
        masqueraded = trace.masqueraded.get(endpoint, False)
        if masqueraded == (seen == source):
            want = "a node address (masqueraded)" if masqueraded else source
            bad.append(f"probe {i}: {pod} saw {seen}, the {shown} says it sees {want}")
    record.metric(f"probes_crosschecked_on_{node}", len(answers), "count", shown)
    record.metric(f"probes_disagreeing_with_trace_on_{node}", len(bad), "count")
    for line in bad[:NAMED_DISAGREEMENTS]:
        record.expect(False, f"{node}: {line}; path: {' | '.join(trace.path)}")
    if len(bad) > NAMED_DISAGREEMENTS:
        record.expect(False, f"{node}: {len(bad) - NAMED_DISAGREEMENTS} more probes disagree")
    return trace
