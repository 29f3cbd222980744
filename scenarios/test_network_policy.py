"""Claim: NetworkPolicies let through exactly what they allow, by namespace and by label,
into and out of pods (upstream e2e's netpol truth tables, test/e2e/network/netpol): a
`podSelector` alone admits pods of the policy's own namespace only, a `namespaceSelector`
with a `podSelector` in one peer admits pods matching both, an egress policy stops what its
pods send; with no policy everything goes through. Needs a policy-enforcing CNI (Calico,
Cilium; flannel enforces none), which only a real cluster runs.

Four client pods, one per namespace (the Service's and another) and label (`allowed`,
`denied`), each dial the Service's ClusterIP (agnhost netexec's `/dial`, asked from the
pod's node), so the source is the client pod as the policy sees it and the destination the
Service's pods after the DNAT. Each case's expected table is computed from the very
policies sent (kubelab.network_policy, the API's semantics); enforcement is asynchronous,
so each table is polled, bounded, until the cluster shows it. The last case, with every
policy gone, checks that lifting them lets everyone through again.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pytest

from kubelab.dataplanes.kubernetes.manifests import LAB_LABEL, WORKLOAD_LABEL
from kubelab.lab import Lab
from kubelab.network_policy import NAMESPACE_NAME, Peer, allows
from kubelab.parallel import for_each
from kubelab.pytest_plugin import CaseRecord
from kubelab.topology import PodInfo
from scenario_helpers import SERVICE, ask_netexec

pytestmark = pytest.mark.kubelab_requires(
    dataplane="kubernetes",
    reason="NetworkPolicy needs a policy-enforcing CNI; the reference dataplane has none",
)

TRIES = 2  # dials per client and look: all answered = through, none = stopped
ENFORCED_WITHIN_S = 45.0
ROLE = "kubelab.io/role"
OTHER = "np-other"  # the second namespace (made, labelled with the lab; `down` deletes it)
Policy = dict[str, Any]


def echo_pods() -> dict[str, Any]:
    return {"matchLabels": {WORKLOAD_LABEL: "echo"}}


def role(value: str) -> dict[str, Any]:
    return {"matchLabels": {ROLE: value}}


def in_namespace(name: str) -> dict[str, Any]:
    return {"matchLabels": {NAMESPACE_NAME: name}}


def cases(home: str) -> dict[str, list[Policy]]:
    """Each case's policies (namespace, name, spec), by case name."""

    def policy(namespace: str, name: str, **spec: Any) -> Policy:
        return {"metadata": {"namespace": namespace, "name": name}, "spec": spec}

    return {
        "no policy": [],
        "ingress from label allowed, pod selector alone": [
            policy(home, "from-allowed", podSelector=echo_pods(), policyTypes=["Ingress"],
                   ingress=[{"from": [{"podSelector": role("allowed")}]}]),
        ],
        "ingress from label allowed of the other namespace (AND)": [
            policy(home, "from-other-allowed", podSelector=echo_pods(), policyTypes=["Ingress"],
                   ingress=[{"from": [{"namespaceSelector": in_namespace(OTHER),
                                       "podSelector": role("allowed")}]}]),
        ],
        "egress of label denied stopped in the other namespace": [
            policy(OTHER, "denied-sends-nothing", podSelector=role("denied"),
                   policyTypes=["Egress"]),
        ],
        "no policy, once the others are gone": [],
    }  # fmt: skip


def dial(lab: Lab, client: PodInfo) -> bool | None:
    """True: every dial answered; False: none; None: some. Counted by the errors netexec
    lists: it lists the responses only when its last try answered."""
    host, port = lab.clusterip_target(SERVICE)
    doc = ask_netexec(lab, client, "/dial", request="hostname", protocol="http", host=host,
                      port=port, tries=TRIES)  # fmt: skip
    answered = TRIES - len(doc.get("errors") or [])
    return True if answered == TRIES else False if answered == 0 else None


def observe(lab: Lab, clients: dict[str, PodInfo]) -> dict[str, bool | None]:
    seen: dict[str, bool | None] = {}

    def one(name: str) -> None:
        seen[name] = dial(lab, clients[name])

    for_each(list(clients), one)
    return seen


def until(
    look: Callable[[], dict[str, bool | None]], want: dict[str, bool]
) -> tuple[dict[str, bool | None], float]:
    """Look until the table is `want` or ENFORCED_WITHIN_S passed: the last look, and when."""
    started = time.monotonic()
    seen = look()
    while seen != want and time.monotonic() - started < ENFORCED_WITHIN_S:
        time.sleep(1)
        seen = look()
    return seen, time.monotonic() - started


def test_each_clients_reach_is_what_the_policies_allow(lab: Lab, record: CaseRecord) -> None:
    svc = lab.service(SERVICE)
    home = svc.namespace
    dataplane = lab.dataplane
    people = {"in-a": (home, "allowed"), "in-d": (home, "denied"),
              "out-a": (OTHER, "allowed"), "out-d": (OTHER, "denied")}  # fmt: skip
    clients: dict[str, PodInfo] = {}
    try:
        for name, (namespace, label) in people.items():
            clients[name] = dataplane.create_client(f"np-{name}", namespace, {ROLE: label})
        server = lab.running_pods("echo")[0]
        target = Peer(home, {LAB_LABEL: lab.spec.lab_id, WORKLOAD_LABEL: "echo"}, str(server.ip))
        peers = {
            name: Peer(namespace, {ROLE: label}, str(clients[name].ip))
            for name, (namespace, label) in people.items()
        }
        for case, policies in cases(home).items():
            want = {
                name: allows(policies, {}, peer, target, server.port)
                for name, peer in peers.items()
            }
            for p in policies:
                dataplane.apply_network_policy(p["metadata"]["namespace"], p["metadata"]["name"],
                                               p["spec"])  # fmt: skip
            try:
                seen, after = until(lambda: observe(lab, clients), want)
            finally:
                for p in policies:
                    dataplane.delete_network_policy(p["metadata"]["namespace"],
                                                    p["metadata"]["name"])  # fmt: skip
            record.metric("enforced_after", after, "s", f"{case} (bounded poll)")
            for name, through in want.items():
                namespace, label = people[name]
                got = {True: "through", False: "stopped", None: "partly through"}[seen[name]]
                record.expect(
                    seen[name] == through,
                    f"{case}: {namespace} pod labelled {label} -> {SERVICE}: "
                    f"{got}, the policies allow {'it' if through else 'nothing'}",
                )
    finally:
        for name in clients:
            dataplane.delete_workload(f"np-{name}")
    record.verdict()
