"""kube-proxy's /metrics read into network-programming latencies.

The scrapes are Prometheus text written with kube-proxy's metric names, help strings and
buckets (kube_proxy_metrics.py): no kube-proxy runs here.
The observations are known, so the deltas, means and quantile bounds are checked against
them rather than against the reader's own arithmetic.
"""

from __future__ import annotations

import pytest

from kube_proxy_metrics import KubeProxyRegistry
from kubelab.dataplanes.kubernetes.proxy_metrics import (
    MetricsError,
    programming_event,
    read_metrics,
    synced_since,
)


def test_a_change_is_what_two_scrapes_differ_by() -> None:
    proxy = KubeProxyRegistry()
    for seconds in (0.3, 0.4, 2.5, 7.0):  # earlier changes
        proxy.programming.observe(seconds)
        proxy.sync.observe(0.02)
    proxy.last.set(1_780_000_000)
    before = read_metrics(proxy.scrape())
    new = [0.7, 0.8, 1.2, 1.4, 3.5]
    for seconds in new:
        proxy.programming.observe(seconds)
        proxy.sync.observe(0.05)
    after = read_metrics(proxy.scrape())

    assert after.last_sync == 1_780_000_000
    delta = after.histograms["programming"].minus(before.histograms["programming"])
    assert delta.count == 5
    assert delta.mean == pytest.approx(sum(new) / 5)
    # the median observation (1.2 s) is in the (1, 2] bucket, the slowest in (3, 4]
    median, p99 = delta.quantile(0.5), delta.quantile(0.99)
    assert median is not None and 1 < median <= 2
    assert p99 is not None and 3 < p99 <= 4
    assert after.histograms["sync"].minus(before.histograms["sync"]).mean == pytest.approx(0.05)


def test_the_slowest_node_is_the_changes_latency() -> None:
    fast, slow, idle = KubeProxyRegistry(), KubeProxyRegistry(), KubeProxyRegistry()
    before = {n: read_metrics(p.scrape()) for n, p in (("n1", fast), ("n2", slow), ("n3", idle))}
    fast.programming.observe(0.4)
    fast.sync.observe(0.01)
    slow.programming.observe(1.6)
    slow.sync.observe(0.3)
    after = {n: read_metrics(p.scrape()) for n, p in (("n1", fast), ("n2", slow), ("n3", idle))}
    event = programming_event("scale web 3", 1_780_000_000.0, before, after)
    assert event is not None
    assert set(event.per_node) == {"n1", "n2"}  # n3 observed nothing
    assert 0.25 < event.per_node["n1"] <= 0.5 and 1 < event.per_node["n2"] <= 2
    assert event.seconds == event.per_node["n2"]
    assert event.node_sync == {"n1": pytest.approx(0.01), "n2": pytest.approx(0.3)}
    assert programming_event("nothing", 0.0, after, after) is None


def test_a_restarted_kube_proxy_counts_everything_as_new() -> None:
    old, restarted = KubeProxyRegistry(), KubeProxyRegistry()
    for seconds in (1.5, 1.5, 1.5):
        old.programming.observe(seconds)
    restarted.programming.observe(0.3)
    delta = (
        read_metrics(restarted.scrape())
        .histograms["programming"]
        .minus(read_metrics(old.scrape()).histograms["programming"])
    )
    assert delta.count == 1 and delta.mean == pytest.approx(0.3)


@pytest.mark.parametrize(
    "text, message",
    [
        ("hello world\n", "not Prometheus text"),
        (
            "# TYPE node_load1 gauge\nnode_load1 0.5\n",
            "no kubeproxy_* histograms; expected kube-proxy's /metrics",
        ),
    ],
)
def test_other_text_is_one_clear_line(text: str, message: str) -> None:
    with pytest.raises(MetricsError) as err:
        read_metrics(text, "node1:10249")
    assert message in str(err.value) and "\n" not in str(err.value)


def test_a_sync_is_counted_not_timed() -> None:
    """The wait after a change asks each kube-proxy for one more sync than before it; its
    last-sync timestamp (the node's clock) plays no part, so a node clock behind the
    harness's cannot hide a sync."""
    proxy = KubeProxyRegistry()
    for seconds in (0.02, 0.02, 0.04):  # three syncs before the change
        proxy.sync.observe(seconds)
    proxy.last.set(1_000)  # a node clock far behind
    before = read_metrics(proxy.scrape())
    assert not synced_since(read_metrics(proxy.scrape()), before)
    proxy.sync.observe(0.03)
    assert synced_since(read_metrics(proxy.scrape()), before)
    restarted = KubeProxyRegistry()
    assert not synced_since(read_metrics(restarted.scrape()), before)  # nothing synced yet
    restarted.sync.observe(0.01)
    assert synced_since(read_metrics(restarted.scrape()), before)
    assert synced_since(read_metrics(restarted.scrape()), None)
