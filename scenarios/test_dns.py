"""Claim: Service names resolve through cluster DNS, as a pod's own resolver sees them:
the full name, the short names the search path completes (`ndots:5`), and a headless
Service's name, which returns the pods themselves (upstream e2e "should provide DNS for
services"). Needs CoreDNS, which only a real cluster runs.

The name is resolved inside the pod, by agnhost netexec's `/dial` (its own resolver, with
the pod's resolv.conf), which then dials what it found and returns the answering pods'
names: the check asks a pod to reach a Service by name, and reads which pods answered.
"""

from __future__ import annotations

import json
from urllib.parse import urlencode

import pytest

from kubelab.lab import Lab
from kubelab.pytest_plugin import CaseRecord, Resources
from scenario_helpers import SERVICE, answers, get_from

pytestmark = pytest.mark.kubelab_requires(
    dataplane="kubernetes", reason="DNS needs CoreDNS; the reference dataplane runs none"
)

TRIES = 10  # dials per name: every one answered by a pod of the Service


def dialled(lab: Lab, name: str, port: int) -> tuple[list[str], list[str]]:
    """From a node, ask a pod of workload echo to dial http://NAME:PORT/hostname."""
    pod = lab.running_pods("echo")[0]
    query = urlencode({"request": "hostname", "protocol": "http", "host": name,
                       "port": port, "tries": TRIES})  # fmt: skip
    url = f"http://{pod.ip}:{pod.port}/dial?{query}"
    (result,) = get_from(lab, pod.node, url, timeout=30)
    if not result["ok"]:
        return [], [str(result["error"])]
    doc = json.loads(answers([result])[0])
    return list(doc.get("responses") or []), list(doc.get("errors") or [])


@pytest.mark.parametrize(
    "form", ["{name}.{namespace}.svc.cluster.local", "{name}.{namespace}", "{name}"]
)
def test_service_names_resolve_to_the_services_pods(
    lab: Lab, record: CaseRecord, form: str
) -> None:
    svc = lab.service(SERVICE)
    name = form.format(name=svc.name, namespace=svc.namespace)
    pods = {p.name for p in lab.running_pods("echo")}
    responses, errors = dialled(lab, name, svc.ports[0].port)
    record.metric("dials_answered", len(responses), "dials", f"{name}, of {TRIES}")
    record.expect(not errors, f"{name}: {len(errors)} dials failed: {errors[:1]}")
    record.expect(
        bool(responses) and set(responses) <= pods,
        f"{name}: answered by {sorted(set(responses))}, not only pods of {SERVICE}",
    )
    record.verdict()


def test_a_headless_services_name_returns_its_pods(
    lab: Lab, record: CaseRecord, resources: Resources
) -> None:
    port = lab.running_pods("echo")[0].port
    key = resources.service(
        name="echo-headless", workload="echo", cluster_ip="None",
        ports=[{"port": port, "target_port": port}],
    )  # fmt: skip
    pods = {p.name for p in lab.running_pods("echo")}
    responses, errors = dialled(lab, key.split("/")[1], port)  # no ClusterIP: the pods' port
    record.metric("pods_answering", len(set(responses)), "pods", f"of {len(pods)}")
    record.expect(not errors, f"{key}: {len(errors)} dials failed: {errors[:1]}")
    record.expect(
        bool(responses) and set(responses) <= pods,
        f"{key}: answered by {sorted(set(responses))}, not only pods of workload echo",
    )
    record.verdict()
