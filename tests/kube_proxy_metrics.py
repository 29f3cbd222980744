"""kube-proxy's /metrics as the tests write it: prometheus_client with kube-proxy's metric
names, help strings and buckets (pkg/proxy/metrics/metrics.go). No kube-proxy runs here."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Gauge, Histogram, generate_latest

# kube-proxy's buckets: 0.25 s, 0.5 s, 1..59 s, 60..115 s by 5, 120..300 s by 30
PROGRAMMING = [0.25, 0.5, *range(1, 60), *range(60, 120, 5), *range(120, 301, 30)]
SYNC = [0.001 * 2**i for i in range(15)]


class KubeProxyRegistry:
    """A registry holding kube-proxy's metrics, observed and set by the test."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.programming = Histogram(
            "kubeproxy_network_programming_duration_seconds",
            "[ALPHA] In Cluster Network Programming Latency in seconds",
            buckets=PROGRAMMING,
            registry=self.registry,
        )
        self.sync = Histogram(
            "kubeproxy_sync_proxy_rules_duration_seconds",
            "[ALPHA] SyncProxyRules latency in seconds",
            buckets=SYNC,
            registry=self.registry,
        )
        self.last = Gauge(
            "kubeproxy_sync_proxy_rules_last_timestamp_seconds",
            "[ALPHA] The last time proxy rules were successfully synced",
            registry=self.registry,
        )
        self.endpoint_changes_pending = Gauge(
            "kubeproxy_sync_proxy_rules_endpoint_changes_pending",
            "[ALPHA] Pending proxy rules Endpoint changes",
            registry=self.registry,
        )
        self.service_changes_pending = Gauge(
            "kubeproxy_sync_proxy_rules_service_changes_pending",
            "[ALPHA] Pending proxy rules Service changes",
            registry=self.registry,
        )

    def scrape(self) -> str:
        return generate_latest(self.registry).decode()
