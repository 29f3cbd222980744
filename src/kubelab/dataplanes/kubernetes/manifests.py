"""The objects kubelab sends to a real cluster's API server: the scenario workloads as
agnhost netexec Deployments (one per workload and node, so each node gets the pods the
spec places there, as on the reference dataplane) and the Services, each labelled with
the lab that made it so that `down` deletes by label.

The pod answers as the reference dataplane's pods do (the Pod API contract in
docs/architecture.md): agnhost netexec serves /hostname, /clientip, /echo and /readyz on
the workload's port and the UDP commands on its UDP port (k/k test/e2e/framework/network
utils.go's netexec pod, with /readyz as the readiness probe), and is Ready only while
kubelab holds its readiness gate True, so that a scenario can fail its readiness.
"""

from __future__ import annotations

from typing import Any

from kubelab.dataplanes.kubernetes import versions
from kubelab.spec_common import ServiceSpec, WorkloadSpec

LAB_LABEL = "kubelab.io/lab"  # every object kubelab creates: `down` deletes by it
WORKLOAD_LABEL = "kubelab.io/workload"  # the pods of one workload; Services select it
NODE_LABEL = "kubernetes.io/hostname"
# MetalLB's annotation for a chosen address (spec.loadBalancerIP is deprecated)
METALLB_IPS = "metallb.io/loadBalancerIPs"
GRACE_S = 1  # a deleted pod's grace period unless a scenario asks for another
# a pod is Ready only while kubelab holds this condition True (ClusterApi.set_pod_ready):
# how a scenario fails a pod's readiness, as the reference dataplane's set_pod_ready does
READINESS_GATE = "kubelab.io/ready"


def _meta(name: str, namespace: str, lab_id: str, **labels: str) -> dict[str, Any]:
    return {"name": name, "namespace": namespace, "labels": {LAB_LABEL: lab_id, **labels}}


def namespace(name: str, lab_id: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": {"name": name, "labels": {LAB_LABEL: lab_id}},
    }


def pod_template(
    workload: WorkloadSpec, lab_id: str, node: str | None, labels: dict[str, str] | None = None
) -> dict[str, Any]:
    """The workload's pod, with `labels` besides kubelab's: on `node`, Ready only through
    kubelab's readiness gate; with no node (a StatefulSet's), placed by the scheduler and
    Ready by its probe alone."""
    placed: dict[str, Any] = {}
    if node is not None:
        placed = {
            "nodeSelector": {NODE_LABEL: node},
            "readinessGates": [{"conditionType": READINESS_GATE}],
        }
    return {
        "metadata": {
            "labels": {**(labels or {}), LAB_LABEL: lab_id, WORKLOAD_LABEL: workload.name}
        },
        "spec": {
            **placed,
            "terminationGracePeriodSeconds": GRACE_S,
            "containers": [
                {
                    "name": "netexec",
                    "image": versions.AGNHOST_IMAGE,
                    "args": [
                        "netexec",
                        f"--http-port={workload.port}",
                        f"--udp-port={workload.udp_port}",
                    ],
                    "ports": [
                        {"name": "http", "containerPort": workload.port, "protocol": "TCP"},
                        {"name": "udp", "containerPort": workload.udp_port, "protocol": "UDP"},
                    ],
                    "readinessProbe": {
                        "httpGet": {"path": "/readyz", "port": workload.port},
                        "periodSeconds": 1,
                        "failureThreshold": 1,
                    },
                }
            ],
        },
    }


def deployment_name(workload: str, node: str) -> str:
    return f"{workload}-{node}"


def deployment(
    workload: WorkloadSpec, namespace_name: str, lab_id: str, node: str, replicas: int,
    labels: dict[str, str] | None = None,
) -> dict[str, Any]:  # fmt: skip
    """The workload's pods on one node (with `labels` besides kubelab's)."""
    selector = {LAB_LABEL: lab_id, WORKLOAD_LABEL: workload.name, NODE_LABEL: node}
    template = pod_template(workload, lab_id, node, labels)
    template["metadata"]["labels"][NODE_LABEL] = node
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": _meta(
            deployment_name(workload.name, node),
            namespace_name,
            lab_id,
            **{WORKLOAD_LABEL: workload.name},
        ),
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": selector},
            "template": template,
        },
    }


def deployments(
    workload: WorkloadSpec,
    namespace_name: str,
    lab_id: str,
    nodes: list[str],
    replicas: int | None = None,
    labels: dict[str, str] | None = None,
) -> list[dict[str, Any]]:
    """One Deployment per node with the pods the spec places there (`replicas`, when
    given, is spread as WorkloadSpec.replicas spreads), `labels` on each pod."""
    spread = (
        workload
        if replicas is None
        else workload.model_copy(update={"replicas": replicas, "pods_per_node": None})
    )
    return [
        deployment(
            workload, namespace_name, lab_id, node, spread.count_on(i, len(nodes), node), labels
        )
        for i, node in enumerate(nodes)
    ]


def service(svc: ServiceSpec, lab_id: str) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "type": svc.type,
        "selector": {LAB_LABEL: lab_id, WORKLOAD_LABEL: svc.workload},
        "ports": [
            {
                **({"name": p.name} if p.name else {}),
                "protocol": p.protocol,
                "port": p.port,
                "targetPort": p.target_port,
                **({"nodePort": p.node_port} if p.node_port is not None else {}),
            }
            for p in svc.ports
        ],
        "sessionAffinity": svc.session_affinity,
        "internalTrafficPolicy": svc.internal_traffic_policy,
    }
    if svc.session_affinity == "ClientIP":
        spec["sessionAffinityConfig"] = {
            "clientIP": {"timeoutSeconds": svc.session_affinity_timeout_s}
        }
    if svc.cluster_ip is not None:
        spec["clusterIP"] = str(svc.cluster_ip)
    if svc.type != "ClusterIP":
        spec["externalTrafficPolicy"] = svc.external_traffic_policy
    if svc.health_check_node_port is not None:
        spec["healthCheckNodePort"] = svc.health_check_node_port
    if svc.external_ips:
        spec["externalIPs"] = [str(ip) for ip in svc.external_ips]
    if svc.load_balancer_source_ranges:
        spec["loadBalancerSourceRanges"] = [str(r) for r in svc.load_balancer_source_ranges]
    meta = _meta(svc.name, svc.namespace, lab_id)
    if svc.load_balancer_ip is not None:
        meta["annotations"] = {METALLB_IPS: str(svc.load_balancer_ip)}
    return {"apiVersion": "v1", "kind": "Service", "metadata": meta, "spec": spec}


def stateful_set(workload: WorkloadSpec, namespace_name: str, lab_id: str) -> dict[str, Any]:
    """The workload's pods as a StatefulSet governed by the headless Service of the same
    name (`headless_service`): pods NAME-0.. with DNS records NAME-i.NAME.NAMESPACE.svc.
    Started in parallel: no pod waits for the one before it to be Ready."""
    return {
        "apiVersion": "apps/v1",
        "kind": "StatefulSet",
        "metadata": _meta(workload.name, namespace_name, lab_id, **{WORKLOAD_LABEL: workload.name}),
        "spec": {
            "serviceName": workload.name,
            "replicas": workload.replicas,
            "podManagementPolicy": "Parallel",
            "selector": {"matchLabels": {LAB_LABEL: lab_id, WORKLOAD_LABEL: workload.name}},
            "template": pod_template(workload, lab_id, None),
        },
    }


def headless_service(workload: WorkloadSpec, namespace_name: str, lab_id: str) -> dict[str, Any]:
    """The headless Service selecting the workload's pods on its HTTP port."""
    spec = ServiceSpec.model_validate({
        "name": workload.name, "namespace": namespace_name, "workload": workload.name,
        "cluster_ip": "None",
        "ports": [{"name": "http", "port": workload.port, "target_port": workload.port}],
    })  # fmt: skip
    return service(spec, lab_id)


def external_name_service(
    namespace_name: str, name: str, external_name: str, lab_id: str
) -> dict[str, Any]:
    """A Service that is only a DNS alias (a CNAME to `external_name`): no selector, no
    cluster IP, nothing for kube-proxy to program."""
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _meta(name, namespace_name, lab_id),
        "spec": {"type": "ExternalName", "externalName": external_name},
    }


def network_policy(namespace: str, name: str, spec: dict[str, Any], lab_id: str) -> dict[str, Any]:
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": _meta(name, namespace, lab_id),
        "spec": spec,
    }


def workload_namespaces(services: list[ServiceSpec]) -> dict[str, str]:
    """Each workload's namespace: that of the Services selecting it (a Service selects
    pods of its own namespace only; KubernetesOptions.check_lab refuses a workload that
    Services of two namespaces select)."""
    return {s.workload: s.namespace for s in services}


def lab_objects(
    lab_id: str, workloads: list[WorkloadSpec], services: list[ServiceSpec], nodes: list[str]
) -> list[dict[str, Any]]:
    """Everything `up` creates for a spec, in the order it is created: namespaces, the
    workloads' Deployments, the Services."""
    where = workload_namespaces(services)
    names = sorted({s.namespace for s in services} - {"default"})
    out = [namespace(n, lab_id) for n in names]
    for w in workloads:
        out += deployments(w, where.get(w.name, "default"), lab_id, nodes)
    out += [service(s, lab_id) for s in services]
    return out
