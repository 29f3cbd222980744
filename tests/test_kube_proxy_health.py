"""kube-proxy's health as the kubernetes dataplane reads it on a node: /healthz (status and
body) fetched by the node's own Python, and its metrics' last sync and pending changes.

No kube-proxy runs here. The stand-in on loopback answers as upstream's healthzHandler
does (pkg/proxy/healthcheck/proxier_health.go): 200 while in sync, 503 once a queued
change waits past the health timeout or the node is being deleted, both with
`{"lastUpdated": %q,"currentTime": %q, "nodeEligible": %v}`, where `%q` of a Go
time.Time prints its String(): "2025-01-18 07:58:53.413049689 +0000 UTC m=+930.365308647"
(nanoseconds, offset, zone name and the monotonic-clock reading). That is the line a kind
cluster's kube-proxy printed in a published walkthrough.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from kube_proxy_metrics import KubeProxyRegistry
from kubelab.dataplanes.kubernetes import node_ops
from kubelab.dataplanes.kubernetes.api_objects import epoch
from kubelab.dataplanes.kubernetes.proxy_metrics import read_metrics
from kubelab.diagnose.checklist import Context, step_proxy
from kubelab.hosts import LocalRunner

PRINTED = "2025-01-18 07:58:53.413049689 +0000 UTC m=+930.365308647"
LOCAL = LocalRunner(python=sys.executable)


def go_time(when: float) -> str:
    """`%q` of a Go time.Time in UTC, monotonic reading included."""
    moment = datetime.fromtimestamp(when, UTC)
    return f"{moment:%Y-%m-%d %H:%M:%S}.{moment.microsecond:06d}417 +0000 UTC m=+930.365308647"


@pytest.mark.parametrize(
    ("text", "moment"),
    [
        (PRINTED, datetime(2025, 1, 18, 7, 58, 53, 413049, UTC)),
        ("2019-12-31 12:26:47 -0700 MST", datetime(2019, 12, 31, 19, 26, 47, tzinfo=UTC)),
        ("2024-06-16T13:10:38.185046097Z", datetime(2024, 6, 16, 13, 10, 38, 185046, UTC)),
    ],
)  # fmt: skip
def test_the_times_kube_proxy_writes(text: str, moment: datetime) -> None:
    assert epoch(text) == pytest.approx(moment.timestamp(), abs=1e-6)


@pytest.mark.parametrize("text", ["", "yesterday", "2025-01-18 07:58:53", 1737187133, None])
def test_anything_else_is_no_time(text: object) -> None:
    assert epoch(text) is None  # a time without its offset is no time either


class KubeProxyHealthz(BaseHTTPRequestHandler):
    status = 200
    last_updated = 0.0
    node_eligible = True

    def do_GET(self) -> None:
        now = datetime.now(UTC).timestamp()
        last = now if self.status == 200 else self.last_updated  # upstream's compat rule
        body = (
            f'{{"lastUpdated": "{go_time(last)}","currentTime": "{go_time(now)}", '
            f'"nodeEligible": {str(self.node_eligible).lower()}}}'
        )
        self.send_response(self.status if self.path == "/healthz" else 404)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(body.encode())

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def kube_proxy() -> Iterator[tuple[type[KubeProxyHealthz], int]]:
    class Handler(KubeProxyHealthz):
        pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield Handler, server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()


def test_a_healthy_kube_proxy_answers_200(kube_proxy: tuple[type[KubeProxyHealthz], int]) -> None:
    _, port = kube_proxy
    answer = node_ops.healthz(LOCAL, port)
    assert answer is not None
    status, doc = answer
    assert status == 200 and doc["nodeEligible"] is True
    last = epoch(doc["lastUpdated"])
    assert last is not None and abs(last - datetime.now(UTC).timestamp()) < 60


def test_an_unhealthy_kube_proxy_still_answers_with_its_last_update(
    kube_proxy: tuple[type[KubeProxyHealthz], int],
) -> None:
    handler, port = kube_proxy
    handler.status, handler.last_updated = 503, 1_780_000_000.5
    answer = node_ops.healthz(LOCAL, port)
    assert answer is not None  # an error status is an answer: kube-proxy runs
    assert answer[0] == 503 and epoch(answer[1]["lastUpdated"]) == pytest.approx(1_780_000_000.5)
    health = node_ops.proxy_health(answer, None)
    assert health == {"running": True, "healthy": False,
                      "last_sync": pytest.approx(1_780_000_000.5), "changes_since": 1}  # fmt: skip


def test_nothing_on_the_port_is_no_kube_proxy(
    kube_proxy: tuple[type[KubeProxyHealthz], int],
) -> None:
    _, port = kube_proxy
    other = node_ops.fetch(LOCAL, port, "/nothing-here")
    assert other is not None and other[0] == 404  # something answers, not /healthz
    assert node_ops.healthz(LOCAL, 1) is None  # port 1: nothing listens
    assert node_ops.proxy_health(None, None)["running"] is False


def test_the_metrics_say_when_it_synced_and_what_waits() -> None:
    """/healthz's lastUpdated is the current time while kube-proxy is healthy, so the last
    sync comes from its metrics, and the changes it has not applied from its pending
    gauges."""
    proxy = KubeProxyRegistry()
    proxy.sync.observe(0.02)
    proxy.last.set(1_780_000_100)
    proxy.endpoint_changes_pending.set(2)
    proxy.service_changes_pending.set(1)
    account = read_metrics(proxy.scrape())
    healthy = (200, {"lastUpdated": go_time(1_790_000_000), "nodeEligible": True})
    assert node_ops.proxy_health(healthy, account) == {
        "running": True, "healthy": True, "last_sync": 1_780_000_100, "changes_since": 3
    }  # fmt: skip
    deleted_node = (503, {"lastUpdated": go_time(1_780_000_000), "nodeEligible": False})
    assert node_ops.proxy_health(deleted_node, None)["changes_since"] == 0


def diagnosed(proxies: dict[str, dict[str, Any]]) -> Any:
    context = Context(None, {"proxies": proxies}, "default/echo", None, None, None)  # type: ignore[arg-type]
    return step_proxy(context)


def test_diagnose_tells_an_unhealthy_proxy_from_one_behind() -> None:
    now = datetime.now(UTC).timestamp()
    fine = {"running": True, "healthy": True, "last_sync": now, "changes_since": 0}
    assert diagnosed({"n1": fine}).verdict == "pass"
    behind = diagnosed({"n1": fine, "n2": {**fine, "healthy": False, "changes_since": 4}})
    assert behind.verdict == "fail" and "n2 runs but has not synced" in behind.cause
    leaving = diagnosed({"n1": fine, "n2": {**fine, "healthy": False}})
    assert leaving.verdict == "fail" and "n2 reports itself unhealthy" in leaving.cause
    assert "n2: running, unhealthy (/healthz 503)" in leaving.evidence[1]
