"""Helpers shared by the scenario modules (fixtures come from the kubelab pytest plugin).

Not a conftest.py: the project's tests run scenarios in the same process, and two modules
named conftest would collide."""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import urlencode

from kubelab.lab import Lab
from kubelab.topology import PodInfo
from kubelab.traffic import inline

SERVICE = "default/echo"  # the default lab's Service: workload echo, NodePort 30080


def a_pod_on(lab: Lab, node: str, workload: str = "echo") -> str:
    pods = lab.running_pods(workload, node)
    if not pods:
        raise AssertionError(f"no running {workload} pod on {node} to send requests from")
    return pods[0].name


def get_from(lab: Lab, member: str, url: str, count: int = 1, timeout: float = 2.0) -> list[dict]:
    """`count` GETs from inside a member, a new connection each (to the lab's own
    addresses only)."""
    return inline.http_get(lab.runner(member), lab.topology.require_own(url), count, timeout)


def probe_from(lab: Lab, member: str, host: str, port: int, count: int) -> list[dict]:
    """`count` TCP probes from inside a member (to the lab's own addresses only)."""
    return inline.probe(lab.runner(member), lab.topology.require_own(host), port, count)


def udp_from(lab: Lab, member: str, host: str, port: int, message: str, **kw: Any) -> list:
    """UDP requests from inside a member (to the lab's own addresses only)."""
    return inline.udp_ask(lab.runner(member), lab.topology.require_own(host), port, message, **kw)


def clusterip_url(lab: Lab, key: str, path: str = "/hostname", port: str | None = None) -> str:
    host, number = lab.clusterip_target(key, port)
    return f"http://{host}:{number}{path}"


def answers(results: list[dict]) -> list[str]:
    return [r["body"] for r in results if r["ok"]]


def failures(results: list[dict]) -> list[str]:
    return [r["error"] for r in results if not r["ok"]]


def ask_netexec(lab: Lab, pod: PodInfo, path: str, timeout: float = 60, **query: Any) -> dict:
    """GET agnhost netexec's PATH?QUERY on a pod (`/dial`, `/shell`), from the pod's node:
    its JSON answer. A request that gets no answer fails the case."""
    url = f"http://{pod.ip}:{pod.port}{path}?{urlencode(query)}"
    (result,) = get_from(lab, pod.node, url, timeout=timeout)
    if not result["ok"]:
        raise AssertionError(f"{path} on pod {pod.name}: {result['error']}")
    doc = json.loads(result["body"])
    if not isinstance(doc, dict):
        raise AssertionError(f"{path} on pod {pod.name} answered {doc!r}, not a JSON object")
    return doc
