"""One Service as the cluster's objects show it: the Service, its EndpointSlice endpoints,
the pods its selector matches, the NetworkPolicies that select them.

Read from `kubectl get svc,endpointslices,pods,nodes,networkpolicies -A -o json` — the
reference dataplane exports the same shapes (`objects()`), so the checklist reads labs
and real clusters alike.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from kubelab.model import Endpoint, Service, ServicePort
from kubelab.network_policy import policy_types, selects
from kubelab.rules.expected import endpoints_from_slices, service_from_object


@dataclass(frozen=True)
class PodView:
    name: str
    namespace: str
    node: str
    ip: str
    phase: str
    ready: bool
    labels: dict[str, str]
    container_ports: tuple[tuple[int, str], ...]  # (containerPort, protocol)


@dataclass
class ServiceView:
    service: Service
    selector: dict[str, str]
    endpoints: dict[str | None, tuple[Endpoint, ...]]  # port name -> the slice's endpoints
    selected: list[PodView]  # pods in the namespace whose labels match the selector
    namespace_pods: list[PodView]
    policies: list[dict[str, Any]] = field(default_factory=list)  # selecting the pods

    def endpoints_for(self, port: ServicePort) -> tuple[Endpoint, ...]:
        return self.endpoints.get(port.name, ())


def _items(doc: dict[str, Any], kind: str) -> list[dict[str, Any]]:
    return [i for i in doc.get("items", []) if isinstance(i, dict) and i.get("kind") == kind]


def _pod(obj: dict[str, Any]) -> PodView:
    meta, spec, status = obj.get("metadata", {}), obj.get("spec", {}), obj.get("status", {})
    conditions = {c.get("type"): c.get("status") for c in status.get("conditions") or []}
    ports = tuple(
        (int(p["containerPort"]), p.get("protocol", "TCP"))
        for c in spec.get("containers") or []
        for p in c.get("ports") or []
    )
    return PodView(
        name=meta.get("name", ""),
        namespace=meta.get("namespace", "default"),
        node=spec.get("nodeName", ""),
        ip=status.get("podIP", ""),
        phase=status.get("phase", ""),
        ready=conditions.get("Ready") == "True",
        labels=dict(meta.get("labels") or {}),
        container_ports=ports,
    )


def matches(selector: dict[str, str], labels: dict[str, str]) -> bool:
    """A Service selector (equality only): every key present with the same value."""
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def policy_selects(policy: dict[str, Any], pod: PodView) -> bool:
    """A NetworkPolicy's podSelector (empty selects every pod of its namespace)."""
    if (policy.get("metadata") or {}).get("namespace", "default") != pod.namespace:
        return False
    return selects((policy.get("spec") or {}).get("podSelector"), pod.labels)


def policy_name(policy: dict[str, Any]) -> str:
    meta = policy.get("metadata") or {}
    return f"{meta.get('namespace', 'default')}/{meta.get('name', '?')}"


def allows_ingress(policy: dict[str, Any]) -> bool:
    """Whether a policy lets any ingress in: not an Ingress policy, or one with at least
    one rule (a rule's own peers are not narrowed further here)."""
    spec = policy.get("spec") or {}
    return "Ingress" not in policy_types(spec) or bool(spec.get("ingress"))


def service_view(doc: dict[str, Any], key: str) -> ServiceView | None:
    """The Service `namespace/name` and what belongs to it; None when it does not exist."""
    namespace, _, name = key.rpartition("/")
    namespace = namespace or "default"
    obj = next(
        (
            s
            for s in _items(doc, "Service")
            if (s.get("metadata", {}).get("namespace", "default"), s["metadata"]["name"])
            == (namespace, name)
        ),
        None,
    )
    if obj is None:
        return None
    svc, _, _ = service_from_object(obj)
    slices = _items(doc, "EndpointSlice")
    selector = dict((obj.get("spec") or {}).get("selector") or {})
    pods = [_pod(p) for p in _items(doc, "Pod")]
    namespace_pods = [p for p in pods if p.namespace == namespace]
    selected = [p for p in namespace_pods if matches(selector, p.labels)]
    policies = [
        pol
        for pol in _items(doc, "NetworkPolicy")
        if any(policy_selects(pol, pod) for pod in selected)
    ]
    return ServiceView(
        service=svc,
        selector=selector,
        endpoints={p.name: endpoints_from_slices(slices, svc, p) for p in svc.ports},
        selected=selected,
        namespace_pods=namespace_pods,
        policies=policies,
    )


def service_names(doc: dict[str, Any]) -> list[str]:
    return sorted(
        f"{s.get('metadata', {}).get('namespace', 'default')}/{s['metadata']['name']}"
        for s in _items(doc, "Service")
    )


def cluster_dns_pods(doc: dict[str, Any]) -> list[PodView]:
    """The cluster DNS pods (CoreDNS keeps kube-dns's label k8s-app=kube-dns)."""
    return [
        pod
        for pod in (_pod(p) for p in _items(doc, "Pod"))
        if pod.namespace == "kube-system" and pod.labels.get("k8s-app") == "kube-dns"
    ]
