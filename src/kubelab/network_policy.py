"""What a set of NetworkPolicies allows, pod to pod, as the API documents it
(networking.k8s.io/v1, "Network Policies" in the Kubernetes docs): the expected side of
the NetworkPolicy scenario's truth tables, computed from the very policies it sends.

- A pod is isolated for ingress (egress) when some policy of its namespace selects it with
  that policy type; an isolated pod admits only what one of those policies' rules allows,
  a pod no policy isolates admits everything.
- A connection goes through only when the source's egress and the destination's ingress
  both allow it.
- A peer's `podSelector` alone means pods of the policy's own namespace; a
  `namespaceSelector` alone, every pod of the namespaces it selects; both in one peer,
  pods matching both (AND); `ipBlock`, the source or destination address. An empty rule
  (no `from`/`to`) matches every peer, no `ports` every port.

Policies are evaluated for connections between pods (the scenario's clients and the
Service's pods, reached after the Service's DNAT, as CNIs enforce them); traffic from
nodes and hosts (which the docs leave to the CNI) is not modelled, and an `ipBlock` is
matched against pod IPs too, where the docs advise cluster-external ranges and CNIs
differ (the scenario's policies use none).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

NAMESPACE_NAME = "kubernetes.io/metadata.name"  # the label the API server puts on every namespace


@dataclass(frozen=True)
class Peer:
    """One pod as a policy sees it."""

    namespace: str
    labels: Mapping[str, str]
    ip: str
    ports: Mapping[str, int] = field(default_factory=dict)  # named container ports


def selects(selector: Mapping[str, Any] | None, labels: Mapping[str, str]) -> bool:
    """A label selector (matchLabels and matchExpressions) against labels; an empty
    selector selects everything."""
    selector = selector or {}
    if any(labels.get(k) != v for k, v in (selector.get("matchLabels") or {}).items()):
        return False
    for term in selector.get("matchExpressions") or []:
        key, op, values = term["key"], term["operator"], set(term.get("values") or [])
        present = key in labels
        matched = {
            "In": present and labels.get(key) in values,
            "NotIn": not present or labels.get(key) not in values,
            "Exists": present,
            "DoesNotExist": not present,
        }.get(op)
        if matched is None:
            raise ValueError(f"label selector operator {op!r} is not one the API knows")
        if not matched:
            return False
    return True


def _peer_matches(
    peer: Mapping[str, Any], policy_namespace: str, namespaces: Mapping[str, Mapping[str, str]],
    pod: Peer,
) -> bool:  # fmt: skip
    if "ipBlock" in peer:
        block = peer["ipBlock"]
        address = ipaddress.ip_address(pod.ip)
        return address in ipaddress.ip_network(block["cidr"]) and not any(
            address in ipaddress.ip_network(e) for e in block.get("except") or []
        )
    if "namespaceSelector" in peer:
        labels = {**namespaces.get(pod.namespace, {}), NAMESPACE_NAME: pod.namespace}
        if not selects(peer["namespaceSelector"], labels):
            return False
    elif pod.namespace != policy_namespace:
        return False
    return "podSelector" not in peer or selects(peer["podSelector"], pod.labels)


def _port_matches(rule_ports: Sequence[Mapping[str, Any]], target: Peer, port: int,
                  protocol: str) -> bool:  # fmt: skip
    if not rule_ports:
        return True
    for entry in rule_ports:
        if entry.get("protocol", "TCP") != protocol:
            continue
        wanted = entry.get("port")
        if wanted is None:
            return True
        number = target.ports.get(wanted) if isinstance(wanted, str) else wanted
        if number is not None and number <= port <= int(entry.get("endPort", number)):
            return True
    return False


def policy_types(spec: Mapping[str, Any]) -> list[str]:
    """policyTypes, defaulted as the API server does (Ingress, plus Egress with rules)."""
    if spec.get("policyTypes"):
        return list(spec["policyTypes"])
    return ["Ingress", *(["Egress"] if spec.get("egress") else [])]


def _direction_allows(
    policies: Sequence[Mapping[str, Any]], namespaces: Mapping[str, Mapping[str, str]],
    selected: Peer, other: Peer, port: int, protocol: str, direction: str,
) -> bool:  # fmt: skip
    """Whether `selected`'s policies of this direction let the connection through; the
    port is always the destination's (the source's egress names where it goes)."""
    rules_key, peers_key = ("ingress", "from") if direction == "Ingress" else ("egress", "to")
    destination = selected if direction == "Ingress" else other
    isolating = [
        p for p in policies
        if p["metadata"].get("namespace", "default") == selected.namespace
        and direction in policy_types(p["spec"])
        and selects(p["spec"].get("podSelector"), selected.labels)
    ]  # fmt: skip
    if not isolating:
        return True
    for policy in isolating:
        namespace = policy["metadata"].get("namespace", "default")
        for rule in policy["spec"].get(rules_key) or []:
            peers = rule.get(peers_key)
            peer_ok = not peers or any(
                _peer_matches(x, namespace, namespaces, other) for x in peers
            )
            if peer_ok and _port_matches(rule.get("ports") or [], destination, port, protocol):
                return True
    return False


def allows(
    policies: Sequence[Mapping[str, Any]],
    namespaces: Mapping[str, Mapping[str, str]],
    source: Peer,
    destination: Peer,
    port: int,
    protocol: str = "TCP",
) -> bool:
    """Whether a connection from `source` to `destination`'s `port` goes through under
    `policies` (NetworkPolicy objects as sent); `namespaces` holds each namespace's labels."""
    return _direction_allows(
        policies, namespaces, source, destination, port, protocol, "Egress"
    ) and _direction_allows(policies, namespaces, destination, source, port, protocol, "Ingress")
