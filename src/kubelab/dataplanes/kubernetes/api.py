"""The Kubernetes API calls of the kubernetes dataplane, through the official client.

One method per thing the dataplane's verbs do to a cluster; objects go in as the dicts
`manifests.py` renders and come back as the API's JSON (`kubectl get -o json` shape):
every call passes `_preload_content=False`, so no response goes through the client's
models, which refuse what they do not know. Every object kubelab creates carries
`manifests.LAB_LABEL`; `delete_lab` deletes by it.

Patches say their type: the client's default for a dict body is a JSON patch, which the
API server refuses for a merge-style body.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import yaml
from kubernetes import client, config
from kubernetes.client.exceptions import ApiException
from urllib3.exceptions import HTTPError

from kubelab.dataplanes.kubernetes.api_objects import typed_items
from kubelab.dataplanes.kubernetes.manifests import LAB_LABEL, READINESS_GATE, WORKLOAD_LABEL
from kubelab.errors import LabError

STRATEGIC_MERGE = "application/strategic-merge-patch+json"
MERGE = "application/merge-patch+json"
CONFLICT, NOT_FOUND = 409, 404
SYSTEM, KUBE_PROXY, KUBE_PROXY_CONF = "kube-system", "kube-proxy", "config.conf"
RESTARTED_AT = "kubectl.kubernetes.io/restartedAt"  # what `kubectl rollout restart` sets
RAW: dict[str, Any] = {"_preload_content": False}
API_ERRORS = (ApiException, HTTPError)  # an answer that is an error; no answer at all
PATCH: dict[str, Any] = {"_content_type": STRATEGIC_MERGE, **RAW}


class ClusterApi:
    def __init__(self, api_client: client.ApiClient, lab_id: str) -> None:
        self.client = api_client
        self.lab_id = lab_id
        self.core = client.CoreV1Api(api_client)
        self.apps = client.AppsV1Api(api_client)
        self.discovery = client.DiscoveryV1Api(api_client)
        self.networking = client.NetworkingV1Api(api_client)

    @classmethod
    def from_kubeconfig(cls, path: Path, lab_id: str, context: str | None = None) -> ClusterApi:
        try:
            api_client = config.new_client_from_config(str(path), context=context)  # type: ignore[no-untyped-call]
        except (config.ConfigException, OSError) as exc:
            raise LabError(f"{path}: {exc}") from None
        return cls(api_client, lab_id)

    @property
    def selector(self) -> str:
        return f"{LAB_LABEL}={self.lab_id}"

    # --- create, change, delete -----------------------------------------------------------

    def apply(self, obj: dict[str, Any]) -> None:
        """Create the object; one that exists already (a rerun after a crash) is patched
        to what kubelab sends."""
        kind, meta = obj["kind"], obj["metadata"]
        create, patch = self._writers(kind)
        try:
            create(obj)
        except API_ERRORS as exc:
            if getattr(exc, "status", None) != CONFLICT:
                raise _error(f"create {kind} {meta['name']}", exc) from None
            try:
                patch(meta["name"], obj)
            except API_ERRORS as again:
                raise _error(f"update {kind} {meta['name']}", again) from None

    def _writers(
        self, kind: str
    ) -> tuple[Callable[[dict[str, Any]], Any], Callable[[str, dict[str, Any]], Any]]:
        def ns(obj: dict[str, Any]) -> str:
            return str(obj["metadata"].get("namespace", "default"))

        if kind == "Namespace":
            return (
                lambda o: self.core.create_namespace(o, **RAW),
                lambda n, o: self.core.patch_namespace(n, o, **PATCH),
            )
        if kind == "Pod":
            return (
                lambda o: self.core.create_namespaced_pod(ns(o), o, **RAW),
                lambda n, o: self.core.patch_namespaced_pod(n, ns(o), o, **PATCH),
            )
        if kind == "Service":
            return (
                lambda o: self.core.create_namespaced_service(ns(o), o, **RAW),
                lambda n, o: self.core.patch_namespaced_service(n, ns(o), o, **PATCH),
            )
        if kind == "Deployment":
            return (
                lambda o: self.apps.create_namespaced_deployment(ns(o), o, **RAW),
                lambda n, o: self.apps.patch_namespaced_deployment(n, ns(o), o, **PATCH),
            )
        if kind == "StatefulSet":
            return (
                lambda o: self.apps.create_namespaced_stateful_set(ns(o), o, **RAW),
                lambda n, o: self.apps.patch_namespaced_stateful_set(n, ns(o), o, **PATCH),
            )
        if kind == "NetworkPolicy":
            return (
                lambda o: self.networking.create_namespaced_network_policy(ns(o), o, **RAW),
                lambda n, o: self.networking.patch_namespaced_network_policy(n, ns(o), o, **PATCH),
            )
        raise LabError(f"kubelab does not send {kind} objects")

    def patch_service(self, namespace: str, name: str, spec: dict[str, Any]) -> None:
        """Merge `spec` into the Service's spec (traffic policies, affinity, type)."""
        try:
            self.core.patch_namespaced_service(name, namespace, {"spec": spec}, **PATCH)
        except API_ERRORS as exc:
            raise _error(f"change Service {namespace}/{name}", exc) from None

    def delete_service(self, namespace: str, name: str) -> None:
        self._delete(lambda: self.core.delete_namespaced_service(name, namespace, **RAW))

    def delete_network_policy(self, namespace: str, name: str) -> None:
        self._delete(
            lambda: self.networking.delete_namespaced_network_policy(name, namespace, **RAW)
        )

    def delete_deployment(self, namespace: str, name: str) -> None:
        """Its pods go too, each with its grace period."""
        self._delete(
            lambda: self.apps.delete_namespaced_deployment(
                name, namespace, propagation_policy="Foreground", **RAW
            )
        )

    def delete_stateful_set(self, namespace: str, name: str) -> None:
        self._delete(
            lambda: self.apps.delete_namespaced_stateful_set(
                name, namespace, propagation_policy="Foreground", **RAW
            )
        )

    def scale(self, namespace: str, deployment: str, replicas: int) -> None:
        try:
            self.apps.patch_namespaced_deployment_scale(
                deployment, namespace, {"spec": {"replicas": replicas}}, _content_type=MERGE, **RAW
            )
        except API_ERRORS as exc:
            raise _error(f"scale Deployment {namespace}/{deployment}", exc) from None

    def delete_pod(self, namespace: str, name: str, grace_s: int) -> None:
        """Graceful with `grace_s` > 0; 0 is a force delete (the pod object goes at once,
        as `kubectl delete --force --grace-period=0`)."""
        self._delete(
            lambda: self.core.delete_namespaced_pod(
                name, namespace, grace_period_seconds=grace_s, **RAW
            )
        )

    def set_pod_ready(self, namespace: str, name: str, ready: bool) -> None:
        """The pod's readiness gate (`manifests.READINESS_GATE`), as a controller owning
        it sets it: the kubelet then reports the pod Ready only while it is True."""
        condition = {"type": READINESS_GATE, "status": "True" if ready else "False"}
        try:
            self.core.patch_namespaced_pod_status(
                name, namespace, {"status": {"conditions": [condition]}},
                **PATCH,
            )  # fmt: skip
        except API_ERRORS as exc:
            raise _error(f"set the readiness of pod {namespace}/{name}", exc) from None

    def admit_pods(self, namespace: str, workload: str) -> list[str]:
        """Set the readiness gate True on the workload's pods that have none yet (new
        ones, after a scale or a restart); their names."""
        admitted = []
        for pod in self.pods(namespace, workload):
            conditions = (pod.get("status") or {}).get("conditions") or []
            if not any(c.get("type") == READINESS_GATE for c in conditions):
                name = pod["metadata"]["name"]
                self.set_pod_ready(namespace, name, True)
                admitted.append(name)
        return admitted

    def set_kube_proxy_scheduler(self, scheduler: str, restarted_at: str) -> None:
        """kube-proxy's IPVS scheduler in its ConfigMap (kubeadm's kube-system/kube-proxy,
        key config.conf), then its DaemonSet restarted, as `kubectl rollout restart`
        does (a pod-template annotation)."""
        try:
            config_map = _json(
                lambda: self.core.read_namespaced_config_map(KUBE_PROXY, SYSTEM, **RAW)
            )
            conf = yaml.safe_load(config_map["data"][KUBE_PROXY_CONF])
            conf.setdefault("ipvs", {})["scheduler"] = scheduler
            data = {KUBE_PROXY_CONF: yaml.safe_dump(conf, sort_keys=False)}
            self.core.patch_namespaced_config_map(KUBE_PROXY, SYSTEM, {"data": data}, **PATCH)
            template = {"metadata": {"annotations": {RESTARTED_AT: restarted_at}}}
            self.apps.patch_namespaced_daemon_set(
                KUBE_PROXY, SYSTEM, {"spec": {"template": template}}, **PATCH
            )
        except API_ERRORS as exc:
            raise _error(f"restart kube-proxy with scheduler {scheduler}", exc) from None
        except (KeyError, ValueError, AttributeError) as exc:
            raise LabError(
                f"kube-system/kube-proxy: no KubeProxyConfiguration under {KUBE_PROXY_CONF} "
                f"({exc}); only kubeadm's layout is known"
            ) from None

    def kube_proxy_rolled_out(self) -> bool:
        """Every node runs a kube-proxy pod of the DaemonSet's current template."""
        try:
            daemon_set = _json(
                lambda: self.apps.read_namespaced_daemon_set(KUBE_PROXY, SYSTEM, **RAW)
            )
        except API_ERRORS as exc:
            raise _error("read the kube-proxy DaemonSet", exc) from None
        status = daemon_set.get("status") or {}
        want = status.get("desiredNumberScheduled", -1)
        return bool(
            status.get("observedGeneration", 0) >= daemon_set["metadata"].get("generation", 0)
            and status.get("updatedNumberScheduled") == want
            and status.get("numberAvailable") == want
        )

    def delete_lab(self, namespaces: list[str]) -> None:
        """Everything labelled with the lab: Services, NetworkPolicies, Deployments and
        StatefulSets in `namespaces` (their pods go with them), then the namespaces the
        lab created."""
        for namespace in namespaces:
            self._delete(
                partial(
                    self.core.delete_collection_namespaced_service,
                    namespace, label_selector=self.selector, **RAW,
                )
            )  # fmt: skip
            self._delete(
                partial(
                    self.networking.delete_collection_namespaced_network_policy,
                    namespace, label_selector=self.selector, **RAW,
                )
            )  # fmt: skip
            for workloads in (
                self.apps.delete_collection_namespaced_deployment,
                self.apps.delete_collection_namespaced_stateful_set,
            ):
                self._delete(
                    partial(
                        workloads, namespace, label_selector=self.selector,
                        propagation_policy="Foreground", **RAW,
                    )
                )  # fmt: skip
        for item in self.namespaces(self.selector):
            self.delete_namespace(item["metadata"]["name"])

    def namespaces(self, selector: str) -> list[dict[str, Any]]:
        return self._read(partial(self.core.list_namespace, label_selector=selector, **RAW))

    def delete_namespace(self, name: str) -> None:
        """Its objects go with it; the namespace itself only once they have."""
        self._delete(partial(self.core.delete_namespace, name, **RAW))

    def _delete(self, call: Callable[[], Any]) -> None:
        try:
            call()
        except API_ERRORS as exc:
            if getattr(exc, "status", None) != NOT_FOUND:
                raise _error("delete", exc) from None

    # --- read -------------------------------------------------------------------------------

    def endpoint_slices(self, namespace: str, service: str) -> list[dict[str, Any]]:
        return self._read(
            lambda: self.discovery.list_namespaced_endpoint_slice(
                namespace,
                label_selector=f"kubernetes.io/service-name={service}",
                **RAW,
            )
        )

    def pods(
        self, namespace: str, workload: str | None = None, selector: str | None = None
    ) -> list[dict[str, Any]]:
        """The lab's pods (of one workload), or those `selector` picks."""
        if selector is None:
            selector = self.selector + (f",{WORKLOAD_LABEL}={workload}" if workload else "")
        return self._read(
            lambda: self.core.list_namespaced_pod(namespace, label_selector=selector, **RAW)
        )

    def services(self, namespace: str) -> list[dict[str, Any]]:
        return self._read(
            lambda: self.core.list_namespaced_service(
                namespace, label_selector=self.selector, **RAW
            )
        )

    def nodes(self) -> list[dict[str, Any]]:
        return self._read(lambda: self.core.list_node(**RAW))

    def _read(self, call: Callable[[], Any]) -> list[dict[str, Any]]:
        try:
            return typed_items(_json(call))
        except API_ERRORS as exc:
            raise _error("list", exc) from None


def _json(call: Callable[[], Any]) -> dict[str, Any]:
    """One object as the API returned it (a raw response's body)."""
    doc = json.loads(call().data)
    if not isinstance(doc, dict):
        raise LabError(f"the API server returned {type(doc).__name__}, not an object")
    return doc


def _error(doing: str, exc: ApiException | HTTPError) -> LabError:
    """One line: what was being done and the API server's own message."""
    if not isinstance(exc, ApiException):  # nothing answered (refused, timed out, TLS)
        reason = getattr(exc, "reason", None) or exc
        return LabError(f"Kubernetes API: {doing}: the API server did not answer ({reason})")
    message = exc.reason or ""
    with contextlib.suppress(ValueError, AttributeError):  # a body that is no Status
        message = json.loads(exc.body or "{}").get("message") or message
    return LabError(f"Kubernetes API: {doing}: {exc.status} {message}".rstrip())
