"""The iptables proxier's partial sync on the real kernel: after any sequence of changes,
each synced with `iptables-restore --noflush` of the changed chains only, a node holds
exactly what a full restore of the same state gives (seeded random churn, two scratch
namespaces side by side); a partial restore that fails falls back to a full one."""

from __future__ import annotations

import ipaddress
import random
import re
import subprocess
from collections.abc import Iterator
from dataclasses import replace

import pytest

from kubelab.dataplanes.reference.proxier import IptablesProxier, ProxierContext
from kubelab.errors import LabError
from kubelab.hosts import LocalRunner, Runner
from kubelab.model import Endpoint, Service, ServicePort, ServiceState

pytestmark = [pytest.mark.root]

CTX = ProxierContext(node="node1", cluster_cidr=ipaddress.IPv4Network("10.244.0.0/16"))
IP = ipaddress.IPv4Address
SEED = 3453  # KEP-3453, partial iptables sync
STEPS = 40


@pytest.fixture
def namespaces() -> Iterator[tuple[Runner, Runner]]:
    names = ("klpartial-a", "klpartial-b")
    for name in names:
        subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        yield tuple(LocalRunner().inside(name, name) for name in names)  # type: ignore[misc]
    finally:
        for name in names:
            subprocess.run(["ip", "netns", "delete", name], check=False)


def saved(runner: Runner) -> dict[str, list[str]]:
    """iptables-save as table/chain -> its rules in order (chain order and counters are
    not part of what a node does)."""
    out: dict[str, list[str]] = {}
    table = ""
    for line in runner.run(["iptables-save"]).stdout.splitlines():
        if line.startswith("*"):
            table = line[1:]
        elif line.startswith(":"):
            out.setdefault(f"{table}/{line[1:].split()[0]}", [])
        elif line.startswith("-A "):
            out.setdefault(f"{table}/{line.split()[1]}", []).append(line)
    return out


def service(i: int, rng: random.Random) -> ServiceState:
    svc = Service(
        namespace="default",
        name=f"svc-{i}",
        type="NodePort" if i % 2 else "ClusterIP",
        cluster_ip=IP(f"10.96.1.{i + 1}"),
        ports=(ServicePort("http", "TCP", 80, 8080, 30000 + i if i % 2 else None),),
        workload=f"w{i}",
    )
    return ServiceState(svc, endpoints(i, rng.randint(0, 4)))


def endpoints(i: int, count: int) -> tuple[Endpoint, ...]:
    return tuple(
        Endpoint(
            IP(f"10.244.{1 + k % 2}.{2 + (i * 5 + k) % 250}"), 8080, f"node{1 + k % 2}", f"p{i}-{k}"
        )
        for k in range(count)
    )


def churn(states: dict[int, ServiceState], rng: random.Random, next_id: int) -> int:
    """One random change, as a cluster makes them."""
    op = rng.choice(["add", "remove", "endpoints", "policy", "affinity", "drain"])
    if op == "add" or not states:
        states[next_id] = service(next_id, rng)
        return next_id + 1
    i = rng.choice(sorted(states))
    state = states[i]
    if op == "remove":
        del states[i]
    elif op == "endpoints":
        states[i] = replace(state, endpoints=endpoints(i, rng.randint(1, 5)))
    elif op == "drain":
        states[i] = replace(state, endpoints=())
    elif op == "policy" and state.service.type == "NodePort":
        policy = "Local" if state.service.external_traffic_policy == "Cluster" else "Cluster"
        states[i] = replace(state, service=state.service.with_changes(
            external_traffic_policy=policy))  # fmt: skip
    elif op == "affinity":
        affinity = "ClientIP" if state.service.session_affinity == "None" else "None"
        states[i] = replace(state, service=state.service.with_changes(session_affinity=affinity))
    return next_id


def test_partial_syncs_hold_what_a_full_restore_holds(namespaces: tuple[Runner, Runner]) -> None:
    partial_node, full_node = namespaces
    rng = random.Random(SEED)
    states = {i: service(i, rng) for i in range(12)}
    proxier = IptablesProxier()
    proxier.sync(partial_node, list(states.values()), CTX)
    assert not proxier.last_sync_partial, "the first sync of a node loads everything"
    next_id, partial_syncs = 12, 0
    for step in range(STEPS):
        next_id = churn(states, rng, next_id)
        current = list(states.values())
        proxier.sync(partial_node, current, CTX)
        partial_syncs += proxier.last_sync_partial
        IptablesProxier().sync(full_node, current, CTX)  # a fresh proxier: a full restore
        assert saved(partial_node) == saved(full_node), f"step {step} (seed {SEED})"
    assert partial_syncs == STEPS


def test_a_partial_sync_writes_only_what_changed(namespaces: tuple[Runner, Runner]) -> None:
    node, _ = namespaces
    rng = random.Random(SEED)
    states = [service(i, rng) for i in range(30)]
    proxier = IptablesProxier()
    full = proxier.sync(node, states, CTX)
    added = service(99, random.Random(1))
    delta = proxier.sync(node, [*states, added], CTX)
    assert proxier.last_sync_partial and len(delta) < len(full) / 2
    chains = set(re.findall(r"^:(\S+)", delta, re.M))
    assert "KUBE-SERVICES" in chains and "KUBE-MARK-MASQ" not in chains  # unchanged: not sent
    assert not re.search(r"^:(INPUT|FORWARD|OUTPUT|PREROUTING|POSTROUTING) ", delta, re.M)
    removed = proxier.sync(node, states, CTX)
    assert re.search(r"^-X KUBE-SVC-", removed, re.M), "a chain that went away is deleted"


def test_a_change_that_rewrites_most_of_the_rules_is_loaded_whole(
    namespaces: tuple[Runner, Runner],
) -> None:
    """iptables-nft's --noflush costs ~8x per line: 200 Services created at once go in as
    one flushing restore, and the node holds what a fresh full restore gives."""
    node, reference = namespaces
    rng = random.Random(SEED)
    states = [service(i, rng) for i in range(6)]
    proxier = IptablesProxier()
    proxier.sync(node, states, CTX)
    many = [*states, *(replace(service(i, rng), endpoints=endpoints(i, 4)) for i in range(6, 206))]
    proxier.sync(node, many, CTX)
    assert not proxier.last_sync_partial
    IptablesProxier().sync(reference, many, CTX)
    assert saved(node) == saved(reference)
    delta = proxier.sync(node, many[:-1], CTX)  # then one Service goes: partial again
    # the dispatch chains are written again (a line per Service), as kube-proxy does
    assert proxier.last_sync_partial and delta.count("\n") < 400
    IptablesProxier().sync(reference, many[:-1], CTX)
    assert saved(node) == saved(reference)


def test_a_failed_partial_restore_falls_back_to_a_full_one(
    namespaces: tuple[Runner, Runner],
) -> None:
    node, reference = namespaces
    rng = random.Random(SEED)
    states = [service(i, rng) for i in range(6)]
    with_eps = next(s for s in states if s.endpoints)
    proxier = IptablesProxier()
    proxier.sync(node, states, CTX)
    # behind the proxier's back: a rule in a chain of our own that jumps to a SEP chain
    # the next change deletes, so the partial restore's `-X` of that chain fails
    sep = re.search(r"^:(KUBE-SEP-\S+)", proxier.render([with_eps], CTX), re.M)
    assert sep is not None
    node.run(["iptables", "-t", "nat", "-N", "SOMEONE-ELSE"])
    node.run(["iptables", "-t", "nat", "-A", "SOMEONE-ELSE", "-j", sep.group(1)])
    changed = [s if s is not with_eps else replace(s, endpoints=()) for s in states]
    proxier.sync(node, changed, CTX)
    assert not proxier.last_sync_partial, "the failed partial restore was followed by a full one"
    IptablesProxier().sync(reference, changed, CTX)
    assert saved(node) == saved(reference)


def test_feed_streams_into_a_program_and_names_its_failure() -> None:
    chunks = (f"line {i}\n" for i in range(50_000))
    counted = LocalRunner().feed(["wc", "-l"], chunks)
    assert counted.stdout.strip() == "50000"
    # a loader that stops reading early: the write side must not hang or hide its error
    with pytest.raises(LabError, match="failed: gave up"):
        LocalRunner().feed(
            ["sh", "-c", "head -c 10 >/dev/null; echo gave up >&2; exit 3"],
            (f"line {i}\n" for i in range(200_000)),
        )
