"""Waits on EndpointSlice conditions instead of sleeps: what the kubernetes dataplane's
verbs wait for after they change the cluster (scale, delete a pod, fail its readiness).

The slices are read as the API returns them (`kubectl get endpointslices -o json` items,
or the kubernetes client's objects turned into that shape); a Service's endpoints are those
of every slice labelled `kubernetes.io/service-name` with its name in its namespace. During
a slice's churn the same address can appear in two slices: the first one read counts, as
kube-proxy's endpoint cache keeps one entry per address.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from kubelab.errors import LabError
from kubelab.rules.expected import conditions_of

SERVICE_NAME_LABEL = "kubernetes.io/service-name"


@dataclass(frozen=True)
class SliceEndpoint:
    address: str
    pod: str | None
    node: str | None
    ready: bool
    serving: bool
    terminating: bool


def service_endpoints(
    slices: Iterable[dict[str, Any]], namespace: str, service: str
) -> list[SliceEndpoint]:
    out: dict[str, SliceEndpoint] = {}
    for item in slices:
        meta = item.get("metadata") or {}
        if meta.get("namespace", "default") != namespace:
            continue
        if (meta.get("labels") or {}).get(SERVICE_NAME_LABEL) != service:
            continue
        for ep in item.get("endpoints") or []:
            ready, serving, terminating = conditions_of(ep)
            pod = (ep.get("targetRef") or {}).get("name")
            for address in ep.get("addresses") or []:
                out.setdefault(
                    address,
                    SliceEndpoint(address, pod, ep.get("nodeName"), ready, serving, terminating),
                )
    return list(out.values())


@dataclass(frozen=True)
class Wanted:
    """What the slices must show. Every field left at its default asks nothing."""

    ready: int | None = None  # exactly this many ready endpoints
    ready_pods: frozenset[str] = frozenset()
    not_ready_pods: frozenset[str] = frozenset()  # listed, not ready (readiness failed)
    terminating_pods: frozenset[str] = frozenset()  # listed as terminating
    gone_pods: frozenset[str] = frozenset()  # in no slice any more

    def unmet(self, endpoints: list[SliceEndpoint]) -> list[str]:
        """What is not so yet, one phrase each; empty when everything is."""
        by_pod = {e.pod: e for e in endpoints if e.pod}
        ready = [e for e in endpoints if e.ready]
        out = []
        if self.ready is not None and len(ready) != self.ready:
            out.append(f"{len(ready)} ready endpoints, want {self.ready}")
        out += [f"{p} not ready yet" for p in sorted(self.ready_pods) if not _ready(by_pod, p)]
        out += [
            f"{p} still ready" if p in by_pod else f"{p} not listed"
            for p in sorted(self.not_ready_pods)
            if p not in by_pod or by_pod[p].ready
        ]
        out += [
            f"{p} not terminating" for p in sorted(self.terminating_pods)
            if p not in by_pod or not by_pod[p].terminating
        ]  # fmt: skip
        out += [f"{p} still listed" for p in sorted(self.gone_pods) if p in by_pod]
        return out


def _ready(by_pod: dict[str, SliceEndpoint], pod: str) -> bool:
    return pod in by_pod and by_pod[pod].ready


def wait_for_endpoints(
    list_slices: Callable[[], list[dict[str, Any]]],
    namespace: str,
    service: str,
    wanted: Wanted,
    timeout: float = 60.0,
    poll: float = 0.2,
) -> list[SliceEndpoint]:
    """Read the slices until they show what is wanted; LabError naming what is still
    missing after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        endpoints = service_endpoints(list_slices(), namespace, service)
        missing = wanted.unmet(endpoints)
        if not missing:
            return endpoints
        if time.monotonic() >= deadline:
            raise LabError(
                f"{namespace}/{service}: after {timeout:.0f}s its EndpointSlices show "
                + "; ".join(missing)
            )
        time.sleep(poll)
