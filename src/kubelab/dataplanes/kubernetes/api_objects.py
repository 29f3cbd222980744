"""What the kubernetes dataplane reads back from the API server's objects (the shapes of
`kubectl get -o json`) into kubelab's model: a list's items with their kinds, a Service with
what the API server allocated, a running pod, a Ready condition, and kube-proxy's healthz
timestamps."""

from __future__ import annotations

import ipaddress
import re
from datetime import datetime
from typing import Any

from kubelab.model import Service, ServicePort
from kubelab.spec_common import ServiceSpec, WorkloadSpec
from kubelab.topology import PodInfo


def typed_items(doc: dict[str, Any]) -> list[dict[str, Any]]:
    """A list's items in the shape of `kubectl get -o json`: the API server leaves `kind`
    and `apiVersion` out of list items (kubernetes/kubernetes#3030) and kubectl puts them
    back from the list's own, which readers such as the auditor pick objects by."""
    kind = str(doc.get("kind") or "").removesuffix("List")
    typed = {k: v for k, v in (("apiVersion", doc.get("apiVersion")), ("kind", kind)) if v}
    return [{**typed, **item} for item in doc.get("items") or [] if isinstance(item, dict)]


def service_from_api(spec: ServiceSpec, obj: dict[str, Any]) -> Service:
    """The Service as kubelab's model holds it: the spec kubelab sent, with what the API
    server allocated (cluster IP, node ports, health-check port, LoadBalancer IPs)."""
    api_spec = obj.get("spec") or {}
    allocated = {(p.get("name") or None, p["port"]): p for p in api_spec.get("ports") or []}
    ports = tuple(
        ServicePort(p.name, p.protocol, p.port, p.target_port,
                    allocated.get((p.name, p.port), {}).get("nodePort", p.node_port))
        for p in spec.ports
    )  # fmt: skip
    cluster_ip = api_spec.get("clusterIP")
    ingress = (obj.get("status") or {}).get("loadBalancer", {}).get("ingress") or []
    return Service(
        namespace=spec.namespace,
        name=spec.name,
        type=spec.type,
        cluster_ip=None if cluster_ip in (None, "", "None") else ipaddress.IPv4Address(cluster_ip),
        ports=ports,
        workload=spec.workload,
        external_traffic_policy=spec.external_traffic_policy,
        internal_traffic_policy=spec.internal_traffic_policy,
        session_affinity=spec.session_affinity,
        session_affinity_timeout_s=spec.session_affinity_timeout_s,
        health_check_node_port=api_spec.get("healthCheckNodePort"),
        external_ips=tuple(spec.external_ips),
        load_balancer_ips=tuple(ipaddress.IPv4Address(i["ip"]) for i in ingress if i.get("ip")),
        load_balancer_source_ranges=tuple(spec.load_balancer_source_ranges),
    )


def pod_info(pod: dict[str, Any], spec: WorkloadSpec) -> PodInfo | None:
    """A running pod with an address, as scenarios see pods; None for any other."""
    status = pod.get("status") or {}
    meta = pod.get("metadata") or {}
    if status.get("phase") != "Running" or not status.get("podIP") or meta.get("deletionTimestamp"):
        return None
    return PodInfo(
        name=meta["name"], workload=spec.name, node=(pod.get("spec") or {}).get("nodeName", ""),
        ip=ipaddress.IPv4Address(status["podIP"]), port=spec.port, netns="",
        udp_port=spec.udp_port,
    )  # fmt: skip


def is_ready(obj: dict[str, Any]) -> bool:
    """A Pod's or Node's Ready condition is True."""
    conditions = (obj.get("status") or {}).get("conditions") or []
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)


# Go's time.Time String(), which kube-proxy's /healthz prints (`%q` of a time.Time):
# "2025-01-18 07:58:53.413049689 +0000 UTC m=+930.365308647"; RFC 3339 reads too.
TIME_TEXT = re.compile(
    r"(?P<date>\d{4}-\d{2}-\d{2})[T ](?P<clock>\d{2}:\d{2}:\d{2})(?:\.(?P<fraction>\d+))?"
    r" ?(?P<offset>Z|[+-]\d{2}:?\d{2})(?: [A-Za-z]+)?(?: m=[+-][\d.]+)?"
)


def epoch(text: object) -> float | None:
    """A time kube-proxy wrote (Go's time.Time String(), or RFC 3339) as epoch seconds;
    None for anything else. Python keeps microseconds: the rest of the nanoseconds go,
    and so does Go's monotonic-clock reading (`m=+...`), which no other process can use."""
    match = TIME_TEXT.fullmatch(text.strip()) if isinstance(text, str) else None
    if match is None:
        return None
    offset = "+00:00" if match["offset"] == "Z" else match["offset"]
    if ":" not in offset:
        offset = f"{offset[:3]}:{offset[3:]}"
    fraction = (match["fraction"] or "")[:6].ljust(6, "0")
    stamp = f"{match['date']}T{match['clock']}.{fraction}{offset}"
    return datetime.fromisoformat(stamp).timestamp()
