"""Waits on EndpointSlice conditions: on the objects kubelab's --expect fixtures hold (in
`kubectl get svc,endpointslices -A -o json` shape), and on a real embedded lab, whose
reference dataplane publishes the same shape as its pods start, fail and terminate."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest

from conftest import DATA
from kubelab.dataplanes.kubernetes.endpoint_waits import (
    Wanted,
    service_endpoints,
    wait_for_endpoints,
)
from kubelab.errors import LabError
from kubelab.lab import Lab
from kubelab.spec_common import ServiceSpec, WorkloadSpec


def items(name: str) -> list[dict[str, Any]]:
    return json.loads((DATA / name).read_text())["items"]


def test_a_services_endpoints_with_their_conditions() -> None:
    echo = service_endpoints(items("objects-echo.json"), "default", "echo")
    assert len(echo) == 6 and all(e.ready and e.serving and not e.terminating for e in echo)
    assert {e.node for e in echo} == {"node1", "node2", "node3"}
    assert service_endpoints(items("objects-echo.json"), "other", "echo") == []


def test_unset_conditions_read_as_the_api_documents_them() -> None:
    bare = copy.deepcopy(items("objects-echo.json"))
    for s in bare:
        for ep in s.get("endpoints") or []:
            ep.pop("conditions")  # nil everywhere: ready, serving, not terminating
    assert all(
        e.ready and e.serving and not e.terminating
        for e in service_endpoints(bare, "default", "echo")
    )


def test_an_address_in_two_slices_counts_once() -> None:
    slices = items("objects-echo.json")
    twin = copy.deepcopy(next(s for s in slices if s["kind"] == "EndpointSlice"))
    twin["metadata"]["name"] = "echo-twin"
    for ep in twin["endpoints"]:
        ep["conditions"]["ready"] = False
    endpoints = service_endpoints([*slices, twin], "default", "echo")
    assert len(endpoints) == 6 and all(e.ready for e in endpoints)  # the first read counts


def test_what_is_not_so_yet_is_named() -> None:
    echo = service_endpoints(items("objects-echo.json"), "default", "echo")
    wanted = Wanted(
        ready=7,
        ready_pods=frozenset({"echo-node1-0", "echo-node9-0"}),
        not_ready_pods=frozenset({"echo-node2-0"}),
        terminating_pods=frozenset({"echo-node3-0"}),
        gone_pods=frozenset({"echo-node3-1"}),
    )
    assert wanted.unmet(echo) == [
        "6 ready endpoints, want 7",
        "echo-node9-0 not ready yet",
        "echo-node2-0 still ready",
        "echo-node3-0 not terminating",
        "echo-node3-1 still listed",
    ]
    assert Wanted(ready=6).unmet(echo) == []


def test_a_wait_that_times_out_says_what_is_missing() -> None:
    with pytest.raises(LabError) as err:
        wait_for_endpoints(
            lambda: items("objects-echo.json"), "default", "echo", Wanted(ready=2), timeout=0.3
        )
    assert "default/echo: after 0s its EndpointSlices show 6 ready endpoints, want 2" in str(
        err.value
    )


@pytest.mark.root
@pytest.mark.lab
def test_waits_follow_a_real_labs_pods(running_lab: Lab) -> None:
    lab = running_lab
    lab.create_workload(WorkloadSpec(name="waits", replicas=3))
    lab.create_services(
        [ServiceSpec(name="waits", workload="waits", ports=[{"port": 80, "target_port": 8080}])]
    )

    def slices() -> list[dict[str, Any]]:
        return [i for i in lab.objects()["items"] if i.get("kind") == "EndpointSlice"]

    try:
        wait_for_endpoints(slices, "default", "waits", Wanted(ready=3), timeout=30)
        first, second, _ = (p.name for p in lab.running_pods("waits"))
        # a graceful delete in the background: terminating first, then gone
        lab.delete_pod(first, grace_s=1.5, wait=False)
        shown = wait_for_endpoints(
            slices, "default", "waits", Wanted(terminating_pods=frozenset({first})), timeout=10
        )
        gone = next(e for e in shown if e.pod == first)
        assert gone.terminating and not gone.ready and gone.serving
        wait_for_endpoints(
            slices, "default", "waits", Wanted(gone_pods=frozenset({first})), timeout=30
        )
        lab.set_pod_ready(second, False)
        wait_for_endpoints(
            slices, "default", "waits", Wanted(ready=1, not_ready_pods=frozenset({second})),
            timeout=30,
        )  # fmt: skip
    finally:
        lab.delete_services(["default/waits"])
        lab.delete_workload("waits")
