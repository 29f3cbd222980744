"""Claim: a NodePort with externalTrafficPolicy=Cluster SNATs, so pods never see the client's
IP but every pod in the cluster answers; with Local, only the target node's pods answer and
each sees the client's real IP.

Mirrors upstream e2e (test/e2e/network/loadbalancer.go, "should preserve source IP ...").
Each probe is one new TCP connection from the external client to node 1's NodePort.
The rules are read on every node through testinfra (the same way on VMs) and checked in a
mode-independent view: which endpoints the Service's chain reaches, with which shares,
and whether external traffic is masqueraded.
"""

from __future__ import annotations

from typing import Any

import pytest

from kubelab.lab import Lab
from kubelab.pytest_plugin import CaseRecord, Traffic
from kubelab.rules.views import ServicePortView, view_iptables, view_nftables

SERVICE = "default/echo"
PROBES = 300  # 6 pods: P(some pod never answers | uniform) = 6 * (5/6)^300 < 1e-22


def _probe_nodeport(lab: Lab, traffic: Traffic, record: CaseRecord) -> tuple[Any, str]:
    target = lab.topology.nodes[0]
    host, port = lab.nodeport_target(SERVICE, target.name)
    run = traffic.probe(host, port, max_probes=PROBES, new_connection=True, users=10)
    frame = run.samples
    failed = int((~frame["ok"]).sum())
    record.metric("probes", len(frame), "count", f"new connection per probe to {host}:{port}")
    record.metric("failed_probes", failed, "count")
    record.metric("probe_rate", len(frame) / max(run.elapsed_s, 1e-9), "probes/s")
    record.metric("latency_p50", frame["latency_ms"].median(), "ms")
    record.expect(len(frame) == PROBES, f"only {len(frame)} of {PROBES} probes finished")
    record.expect(
        failed == 0,
        f"{failed} of {len(frame)} probes failed: "
        f"{frame.loc[~frame['ok'], 'error'].head(1).tolist()}",
    )
    return frame[frame["ok"]], target.name


def _views(lab: Lab, hosts: dict[str, Any]) -> dict[str, ServicePortView]:
    """Each node's view of the Service's first port, read through testinfra."""
    svc = lab.service(SERVICE)
    port = svc.ports[0]
    mode = lab.dataplane.proxy_mode
    out = {}
    for node, host in hosts.items():
        if mode == "iptables":
            out[node] = view_iptables(
                host.check_output("iptables-save -t nat"), svc.port_name(port), port.protocol
            )
        elif mode == "nftables":
            out[node] = view_nftables(
                host.check_output("nft -j list ruleset"), svc.namespace, svc.name,
                port.protocol, port.name,
            )  # fmt: skip
        else:
            pytest.skip(f"rule view for proxy mode {mode} is not written yet")
    return out


def _check_cluster_chain(views: dict[str, ServicePortView], lab: Lab, record: CaseRecord) -> None:
    """On every node: every endpoint once, in order, each with an equal share."""
    endpoints = [e.address for e in lab.service_state(SERVICE).endpoints if e.ready]
    n = len(endpoints)
    for node, view in views.items():
        record.expect(
            list(view.cluster) == endpoints,
            f"{node}: the Service's cluster chain sends to {len(view.cluster)} endpoints, "
            f"expected {n}" + (f" (missing {sorted(set(endpoints) - set(view.cluster))})"
                               if set(endpoints) - set(view.cluster) else ""),
        )  # fmt: skip
        uneven = [w for w in view.cluster_weights if abs(w - 1 / n) > 1e-6]
        record.expect(not uneven, f"{node}: endpoint shares are not 1/{n}: {view.probabilities}")


def test_cluster_policy_snats(
    lab: Lab, traffic: Traffic, hosts: dict[str, Any], record: CaseRecord
) -> None:
    latency = lab.update_service(SERVICE, external_traffic_policy="Cluster")
    record.metric("network_programming_latency", latency, "s")
    ok, target = _probe_nodeport(lab, traffic, record)
    client_ip = str(lab.topology.client.ip)
    expected_pods = {p.name for p in lab.running_pods("echo")}
    answered = set(ok["pod"])
    seen = set(ok["client_ip"])
    node_side = lab.node_addresses(target)
    record.metric("pods_answered", len(answered), "pods", f"of {len(expected_pods)}")
    record.metric("client_ip_seen_fraction", (ok["client_ip"] == client_ip).mean(), "ratio")
    record.expect(
        answered == expected_pods, f"pods that never answered: {sorted(expected_pods - answered)}"
    )
    record.expect(
        client_ip not in seen,
        f"{int((ok['client_ip'] == client_ip).sum())} probes reached a pod with the "
        f"client's IP {client_ip}: traffic was not SNATed (masquerade missing)",
    )
    record.expect(
        seen <= node_side, f"pods saw addresses {sorted(seen - node_side)}, not {target}'s"
    )
    views = _views(lab, hosts)
    _check_cluster_chain(views, lab, record)
    for node, view in views.items():
        record.expect(
            view.external_masquerades_all,
            f"{node}: external traffic is not marked for masquerade under Cluster policy",
        )
    record.verdict()


def test_local_policy_keeps_client_ip(
    lab: Lab, traffic: Traffic, hosts: dict[str, Any], record: CaseRecord
) -> None:
    latency = lab.update_service(SERVICE, external_traffic_policy="Local")
    record.metric("network_programming_latency", latency, "s")
    ok, target = _probe_nodeport(lab, traffic, record)
    client_ip = str(lab.topology.client.ip)
    local_pods = {p.name for p in lab.running_pods("echo", target)}
    answered = set(ok["pod"])
    seen = set(ok["client_ip"])
    record.metric("pods_answered", len(answered), "pods", f"{len(local_pods)} on {target}")
    record.metric("client_ip_seen_fraction", (ok["client_ip"] == client_ip).mean(), "ratio")
    record.expect(
        answered == local_pods,
        f"answered {sorted(answered)}, expected only {target}'s pods {sorted(local_pods)}",
    )
    record.expect(
        seen == {client_ip},
        f"pods saw {sorted(seen - {client_ip})} instead of the client's IP {client_ip}: "
        "traffic was SNATed",
    )
    views = _views(lab, hosts)
    _check_cluster_chain(views, lab, record)
    for node, view in views.items():
        local = sorted(f"{p.ip}:{p.port}" for p in lab.running_pods("echo", node))
        record.expect(
            sorted(view.local) == local,
            f"{node}: the Service's local chain sends to {sorted(view.local)}, expected its "
            f"own endpoints {local}",
        )
        record.expect(
            not view.external_masquerades_all,
            f"{node}: external traffic is masqueraded under Local policy",
        )
    record.verdict()
