"""kube-proxy's own account of network programming, read from its /metrics endpoint
(`metricsBindAddress`, port 10249 in the lab's KubeProxyConfiguration).

kube-proxy exports `kubeproxy_network_programming_duration_seconds` (from the change of a
Service or EndpointSlice, by the API server's timestamp, to this node's rules loaded) and
the durations of its syncs (`kubeproxy_sync_proxy_rules_duration_seconds`, and since 1.28
the full and partial ones apart) as Prometheus histograms, cumulative since it started.
A change's latency is what two scrapes, one before and one after it, differ by: the new
observations' mean, and quantiles as Prometheus's histogram_quantile estimates them
(linear within a bucket). The text is read with prometheus_client's parser.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

from prometheus_client.parser import text_string_to_metric_families

from kubelab.dataplanes.base import ProgrammingEvent

PREFIX = "kubeproxy_"
HISTOGRAMS = {
    "network_programming_duration_seconds": "programming",
    "sync_proxy_rules_duration_seconds": "sync",
    "sync_full_proxy_rules_duration_seconds": "sync_full",
    "sync_partial_proxy_rules_duration_seconds": "sync_partial",
}
LAST_SYNC = "sync_proxy_rules_last_timestamp_seconds"
COUNTERS = (
    "sync_proxy_rules_endpoint_changes_total",
    "sync_proxy_rules_service_changes_total",
    "sync_proxy_rules_endpoint_changes_pending",
    "sync_proxy_rules_service_changes_pending",
)


class MetricsError(ValueError):
    """The text is not kube-proxy's /metrics. The message is one line."""


@dataclass(frozen=True)
class Histogram:
    buckets: tuple[tuple[float, float], ...]  # (upper bound, cumulative count), +Inf last
    count: float
    sum: float

    def minus(self, earlier: Histogram) -> Histogram:
        """The observations made after `earlier` was scraped (kube-proxy restarted in
        between, so the counts went down: everything is new)."""
        if self.count < earlier.count or len(self.buckets) != len(earlier.buckets):
            return self
        return Histogram(
            tuple(
                (le, n - m) for (le, n), (_, m) in zip(self.buckets, earlier.buckets, strict=True)
            ),
            self.count - earlier.count,
            self.sum - earlier.sum,
        )

    @property
    def mean(self) -> float | None:
        return self.sum / self.count if self.count else None

    def quantile(self, q: float) -> float | None:
        """histogram_quantile(q): linear within the bucket the rank falls in; the highest
        finite bound when it falls in +Inf."""
        if not self.count:
            return None
        rank, lower, below = q * self.count, 0.0, 0.0
        for le, cumulative in self.buckets:
            if cumulative >= rank:
                if math.isinf(le):
                    return lower
                inside = cumulative - below
                return lower + (le - lower) * ((rank - below) / inside if inside else 0.0)
            lower, below = le, cumulative
        return lower


@dataclass(frozen=True)
class ProxyMetrics:
    histograms: dict[str, Histogram] = field(default_factory=dict)  # by HISTOGRAMS' names
    last_sync: float | None = None  # epoch seconds
    counters: dict[str, float] = field(default_factory=dict)


def read_metrics(text: str, source: str = "metrics") -> ProxyMetrics:
    try:
        families = list(text_string_to_metric_families(text))
    except ValueError as exc:
        raise MetricsError(f"{source}: not Prometheus text ({exc})") from None
    histograms: dict[str, Histogram] = {}
    counters: dict[str, float] = {}
    last_sync = None
    for family in families:
        name = family.name.removeprefix(PREFIX)
        if not family.name.startswith(PREFIX):
            continue
        if name in HISTOGRAMS:
            histograms[HISTOGRAMS[name]] = _histogram(family.samples)
        elif name == LAST_SYNC and family.samples:
            last_sync = family.samples[0].value
        for sample in family.samples:
            short = sample.name.removeprefix(PREFIX)
            if short in COUNTERS:
                counters[short] = sample.value
    if not histograms:
        raise MetricsError(
            f"{source}: no kubeproxy_* histograms; expected kube-proxy's /metrics "
            "(metricsBindAddress, port 10249)"
        )
    return ProxyMetrics(histograms, last_sync, counters)


def _histogram(samples: list) -> Histogram:  # type: ignore[type-arg]
    buckets, count, total = [], 0.0, 0.0
    for s in samples:
        if s.name.endswith("_bucket"):
            buckets.append((float(s.labels["le"]), s.value))
        elif s.name.endswith("_count"):
            count = s.value
        elif s.name.endswith("_sum"):
            total = s.value
    return Histogram(tuple(sorted(buckets)), count, total)


def synced_since(now: ProxyMetrics, earlier: ProxyMetrics | None) -> bool:
    """kube-proxy has finished a sync since `earlier` was scraped: its sync histogram
    counted one more. Counted, not timed: its last-sync timestamp is the node's clock, and
    a node clock a little behind the harness's would hide every sync. A kube-proxy that
    restarted in between (its counts went down) has synced once it counts any."""
    current = now.histograms.get("sync")
    previous = earlier.histograms.get("sync") if earlier else None
    if current is None:
        return False
    if previous is None:
        return current.count > 0
    return current.count > previous.count or 0 < current.count < previous.count


def programming_event(
    change: str,
    published_at: float,
    before: Mapping[str, ProxyMetrics],
    after: Mapping[str, ProxyMetrics],
    quantile: float = 0.99,
) -> ProgrammingEvent | None:
    """The change's latency by kube-proxy's own clock, from scrapes of every node before
    and after it: per node the `quantile` of the programming observations made in between,
    the slowest node's as the change's; per node the mean sync duration. None when no node
    observed any (the change reached no rules yet, or kube-proxy is not exporting)."""
    per_node: dict[str, float] = {}
    node_sync: dict[str, float] = {}
    for node, now in after.items():
        earlier = before.get(node)
        new = _since(now, earlier, "programming")
        if new is not None and new.count:
            value = new.quantile(quantile)
            if value is not None:
                per_node[node] = value
        sync = _since(now, earlier, "sync")
        if sync is not None and sync.mean is not None:
            node_sync[node] = sync.mean
    if not per_node:
        return None
    return ProgrammingEvent(change, published_at, max(per_node.values()), per_node, node_sync)


def _since(now: ProxyMetrics, earlier: ProxyMetrics | None, name: str) -> Histogram | None:
    current = now.histograms.get(name)
    if current is None:
        return None
    previous = earlier.histograms.get(name) if earlier else None
    return current.minus(previous) if previous else current
