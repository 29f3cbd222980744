"""A cluster's nodes reached through its API alone, for an `existing` lab given no
inventory: one short-lived access pod per node, and kubelab's SSH over it.

    namespace kubelab-access-<lab>   labelled kubelab.io/node-access=<lab>; Pod Security
                                     level `privileged`, which these pods need
    pod access-<node>                pinned to the node (nodeName, every taint
                                     tolerated); hostNetwork, hostPID, privileged; the
                                     node's / at /rootfs; agnhost `pause`, the image the
                                     workloads run already

A command runs on the node as upstream e2e's host-exec pods run theirs, `nsenter
--mount=/rootfs/proc/1/ns/mnt -- ARGV` in that pod: the node's own tools answer
(iptables-save, nft, crictl, its python3) in the node's network and PID namespaces.
ExecRunner does that through `exec_bridge` for the few commands that set access up; then
an ssh_config's ProxyCommand runs the node's `sshd -i` the same way (inetd_sshd.py), so
everything else — runners, testinfra, the partition that fails a node — is the SSH path
an inventory's hosts take. The pods' label is not the lab's (`manifests.LAB_LABEL`): the
dataplane's `down` deletes the lab's objects first, and the substrate still needs its way
onto the nodes after that; the substrate's `down` deletes the namespace last.
"""

from __future__ import annotations

import base64
import ipaddress
import shlex
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kubelab.dataplanes.kubernetes.versions import AGNHOST_IMAGE
from kubelab.errors import LabError
from kubelab.hosts import Runner
from kubelab.inetd_sshd import HOST_KEY
from kubelab.naming import STATE_ROOT

if TYPE_CHECKING:
    from kubelab.dataplanes.kubernetes.api import ClusterApi

ACCESS_LABEL = "kubelab.io/node-access"
ROOTFS = "/rootfs"
ON_THE_NODE = ("nsenter", f"--mount={ROOTFS}/proc/1/ns/mnt", "--")
BRIDGE = "kubelab.dataplanes.kubernetes.exec_bridge"
KUBELET_PORT = 10250  # the kubelet's default, where a Node does not say
READY_TIMEOUT_S = 180.0
GONE_TIMEOUT_S = 180.0
MAX_NAME = 253  # a pod's name is a DNS subdomain


def namespace_name(lab_id: str) -> str:
    return f"kubelab-access-{lab_id}"


def pod_name(node: str) -> str:
    name = f"access-{node}"
    if len(name) > MAX_NAME:
        raise LabError(f"node {node}: its name is too long for an access pod's ({MAX_NAME})")
    return name


def folder(lab_id: str) -> str:
    """Where the sshd's keys and configuration live on each node."""
    return f"{STATE_ROOT}/{lab_id}/access"


def access_namespace(lab_id: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": {
            "name": namespace_name(lab_id),
            "labels": {ACCESS_LABEL: lab_id, "pod-security.kubernetes.io/enforce": "privileged"},
        },
    }


def access_pod(lab_id: str, node: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": pod_name(node),
            "namespace": namespace_name(lab_id),
            "labels": {ACCESS_LABEL: lab_id},
        },
        "spec": {
            "nodeName": node,  # no scheduler: a node cordoned or full still gets its pod
            "tolerations": [{"operator": "Exists"}],
            "hostNetwork": True,
            "hostPID": True,
            "automountServiceAccountToken": False,
            "enableServiceLinks": False,
            "terminationGracePeriodSeconds": 1,
            "containers": [
                {
                    "name": "access",
                    "image": AGNHOST_IMAGE,
                    "args": ["pause"],
                    "securityContext": {"privileged": True},
                    "volumeMounts": [{"name": "rootfs", "mountPath": ROOTFS}],
                }
            ],
            "volumes": [{"name": "rootfs", "hostPath": {"path": "/"}}],
        },
    }


@dataclass(frozen=True)
class ClusterNode:
    name: str
    address: ipaddress.IPv4Address  # its InternalIP
    kubelet_port: int  # what API-server-to-node traffic (exec) arrives on


def cluster_node(obj: dict[str, Any]) -> ClusterNode | None:
    """A Node object's name, InternalIP and kubelet port; None without an IPv4 InternalIP."""
    status = obj.get("status") or {}
    for entry in status.get("addresses") or []:
        if entry.get("type") != "InternalIP":
            continue
        try:
            address = ipaddress.IPv4Address(entry.get("address", ""))
        except ValueError:
            continue
        endpoint = (status.get("daemonEndpoints") or {}).get("kubeletEndpoint") or {}
        return ClusterNode(
            obj["metadata"]["name"], address, int(endpoint.get("Port") or KUBELET_PORT)
        )
    return None


class ExecRunner(Runner):
    """Commands on a node, in its mount namespace, through its access pod."""

    def __init__(self, name: str, bridge: Sequence[str], python: str = "python3") -> None:
        self.name = name
        self.bridge = list(bridge)
        self.python = python

    def wrap(self, argv: Sequence[str]) -> list[str]:
        return [*self.bridge, *ON_THE_NODE, *argv]


class NodeAccess:
    def __init__(self, kubeconfig: str, context: str | None, lab_id: str) -> None:
        self.kubeconfig = kubeconfig
        self.context = context
        self.lab_id = lab_id
        self.namespace = namespace_name(lab_id)

    @cached_property
    def api(self) -> ClusterApi:
        from kubelab.dataplanes.kubernetes.api import ClusterApi  # the client: heavy

        return ClusterApi.from_kubeconfig(Path(self.kubeconfig), self.lab_id, self.context)

    @property
    def selector(self) -> str:
        return f"{ACCESS_LABEL}={self.lab_id}"

    def nodes(self) -> dict[str, ClusterNode]:
        found = (cluster_node(obj) for obj in self.api.nodes())
        return {n.name: n for n in found if n is not None}

    def bridge(self, node: str) -> list[str]:
        """The local argv that joins this process to a program in the node's access pod."""
        context = ["--context", self.context] if self.context else []
        return [
            sys.executable, "-m", BRIDGE, "--kubeconfig", self.kubeconfig, *context,
            "--namespace", self.namespace, "--pod", pod_name(node), "--",
        ]  # fmt: skip

    def runner(self, node: str, python: str = "python3") -> ExecRunner:
        return ExecRunner(node, self.bridge(node), python)

    def proxy_command(self, node: str, argv: Sequence[str]) -> str:
        """An ssh_config ProxyCommand running `argv` on the node (`%` is ssh's token
        character there, so doubled)."""
        return shlex.join([*self.bridge(node), *ON_THE_NODE, *argv]).replace("%", "%%")

    # --- the pods -----------------------------------------------------------------------------

    def open(self, nodes: Sequence[str]) -> None:
        """One access pod per node, running when this returns (a crashed run's first
        removed)."""
        self.close()
        self.api.apply(access_namespace(self.lab_id))
        for node in nodes:
            self.api.apply(access_pod(self.lab_id, node))
        deadline = time.monotonic() + READY_TIMEOUT_S
        while True:
            waiting = self._not_running(nodes)
            if not waiting:
                return
            if time.monotonic() > deadline:
                node, why = next(iter(waiting.items()))
                raise LabError(
                    f"access pod {self.namespace}/{pod_name(node)} on node {node} is not running "
                    f"after {READY_TIMEOUT_S:.0f}s ({why}); the cluster must admit privileged "
                    "hostNetwork pods there and pull "
                    f"{AGNHOST_IMAGE}, or give substrate.inventory for SSH"
                )
            time.sleep(1)

    def _not_running(self, nodes: Sequence[str]) -> dict[str, str]:
        """The nodes whose access pod does not run yet, with what its status says."""
        pods = {
            p["metadata"]["name"]: p for p in self.api.pods(self.namespace, selector=self.selector)
        }
        out = {}
        for node in nodes:
            pod = pods.get(pod_name(node))
            status = (pod or {}).get("status") or {}
            containers = status.get("containerStatuses") or [{}]
            if status.get("phase") == "Running" and containers[0].get("ready"):
                continue
            waiting = (containers[0].get("state") or {}).get("waiting") or {}
            out[node] = waiting.get("reason") or status.get("phase") or "no pod yet"
        return out

    def running(self) -> bool:
        """Whether any access pod of this lab exists (there is a way onto the nodes)."""
        return bool(self.api.pods(self.namespace, selector=self.selector))

    def close(self) -> None:
        """The access namespace deleted, with its pods; returns once both are gone."""
        for item in self.api.namespaces(self.selector):
            self.api.delete_namespace(item["metadata"]["name"])
        deadline = time.monotonic() + GONE_TIMEOUT_S
        while self.api.namespaces(self.selector) or self.running():
            if time.monotonic() > deadline:
                raise LabError(
                    f"namespace {self.namespace} still terminating after {GONE_TIMEOUT_S:.0f}s"
                )
            time.sleep(1)


def install_sshd(
    runner: Runner, host_key: str, authorized_key: str, config: str, where: str
) -> None:
    """The sshd's host key, authorized key and configuration into `where` on the node,
    as arguments (the exec stream's stdin cannot be closed under the v4 protocol)."""
    script = (
        'set -e; umask 077; mkdir -p "$1"; '
        f'printf %s "$2" | base64 -d > "$1/{HOST_KEY}"; '
        'printf %s "$3" | base64 -d > "$1/authorized_keys"; '
        'printf %s "$4" | base64 -d > "$1/sshd_config"'
    )
    encoded = [
        base64.b64encode(text.encode()).decode() for text in (host_key, authorized_key, config)
    ]
    runner.run(["sh", "-c", script, "sh", where, *encoded])
