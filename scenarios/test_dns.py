"""Claim: Service names resolve through cluster DNS, as a pod's own resolver sees them
(upstream e2e "should provide DNS for services", "should provide DNS for pods for
Subdomain", "should provide DNS for ExternalName services"):

- a pod's resolv.conf names the cluster's DNS Service and searches its own namespace,
  `svc` and the cluster domain with `ndots:5`;
- a Service's full name and the short names the search path completes are A records of
  its ClusterIP, and dialled by name they reach its pods;
- a headless Service's name holds an A record for every ready pod;
- a StatefulSet's pods each get a record of their own under its governing Service;
- an ExternalName Service is a CNAME and nothing else: no proxy rule on any node.

Needs CoreDNS, which only a real cluster runs. Lookups run inside a pod of workload echo
with its own resolver: `dig` from the agnhost image through netexec's /shell, and names
dialled by netexec's /dial, which returns the answering pods' names. Records appear
shortly after what they name is Ready (CoreDNS watches the API): lookups are polled,
bounded.
"""

from __future__ import annotations

import time
from typing import Any

import pytest

from kubelab.checks import audit_nodes
from kubelab.lab import Lab
from kubelab.pytest_plugin import CaseRecord, Resources
from kubelab.traffic import dns
from scenario_helpers import SERVICE, ask_netexec

pytestmark = pytest.mark.kubelab_requires(
    dataplane="kubernetes", reason="DNS needs CoreDNS; the reference dataplane runs none"
)

TRIES = 10  # dials per name: every one answered by a pod of the Service
RECORDS_WITHIN_S = 20.0  # a new object's records in CoreDNS
STATEFUL, STATEFUL_PODS = "dns-sts", 2  # a StatefulSet and its governing Service


def in_pod(lab: Lab, path: str, **query: Any) -> dict[str, Any]:
    """netexec's PATH?QUERY on a pod of workload echo: the JSON answer."""
    return ask_netexec(lab, lab.running_pods("echo")[0], path, timeout=30, **query)


def lookup(lab: Lab, name: str, rtype: str = "A") -> list[dns.Record]:
    """The pod's resolver's answer for NAME (short names completed by its search path)."""
    output = in_pod(lab, "/shell", cmd=dns.dig_command(name, rtype, search=True)).get("output")
    return dns.answers(str(output or ""))


def lookup_until(lab: Lab, name: str, done: Any, rtype: str = "A") -> list[dns.Record]:
    """Look NAME up until `done(records)` holds or RECORDS_WITHIN_S passed: the last answer."""
    deadline = time.monotonic() + RECORDS_WITHIN_S
    records = lookup(lab, name, rtype)
    while not done(records) and time.monotonic() < deadline:
        time.sleep(1)
        records = lookup(lab, name, rtype)
    return records


def addresses(records: list[dns.Record]) -> set[str]:
    return {r.data for r in records if r.type == "A"}


def resolver(lab: Lab) -> dns.Resolver:
    """The pod's resolv.conf."""
    output = in_pod(lab, "/shell", cmd="cat /etc/resolv.conf").get("output")
    return dns.resolv_conf(str(output or ""))


def cluster_domain(lab: Lab) -> str:
    """The cluster's DNS domain, as the pod's search path ends (cluster.local by default)."""
    search = resolver(lab).search
    namespace = lab.service(SERVICE).namespace
    for domain in search:
        if domain.startswith(f"{namespace}.svc."):
            return domain.removeprefix(f"{namespace}.svc.")
    raise AssertionError(f"no {namespace}.svc.<domain> in the pod's search path {search}")


def dialled(lab: Lab, name: str, port: int) -> tuple[list[str], list[str]]:
    """Ask a pod of workload echo to dial http://NAME:PORT/hostname TRIES times: the
    answering pods' names and the errors (netexec lists the responses only when its last
    try answered, the errors always)."""
    doc = in_pod(lab, "/dial", request="hostname", protocol="http", host=name, port=port,
                 tries=TRIES)  # fmt: skip
    return list(doc.get("responses") or []), list(doc.get("errors") or [])


def test_a_pods_resolver_searches_its_namespace_with_ndots_5(lab: Lab, record: CaseRecord) -> None:
    servers, search, options = resolver(lab)
    namespace = lab.service(SERVICE).namespace
    domain = cluster_domain(lab)
    want = [f"{namespace}.svc.{domain}", f"svc.{domain}", domain]
    record.expect(search[:3] == want, f"search path {search}, not starting {want}")
    record.expect(options.get("ndots") == "5", f"options {options}: ndots is not 5")
    dns = addresses(lookup(lab, f"kube-dns.kube-system.svc.{domain}"))
    record.expect(
        bool(servers) and servers[0] in dns,
        f"nameserver {servers} is not the cluster DNS Service (kube-system/kube-dns: {dns})",
    )
    record.verdict()


@pytest.mark.parametrize(
    "form", ["{name}.{namespace}.svc.{domain}", "{name}.{namespace}", "{name}"]
)
def test_service_names_resolve_to_the_services_pods(
    lab: Lab, record: CaseRecord, form: str
) -> None:
    svc = lab.service(SERVICE)
    name = form.format(name=svc.name, namespace=svc.namespace, domain=cluster_domain(lab))
    found = addresses(lookup(lab, name))
    record.expect(found == {str(svc.cluster_ip)}, f"{name}: A {found}, not {svc.cluster_ip}")
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
    name = key.split("/")[1]
    ips = {str(p.ip) for p in lab.running_pods("echo")}
    found = addresses(lookup_until(lab, name, lambda r: addresses(r) == ips))
    record.metric("a_records", len(found), "records", f"of {len(ips)} ready pods")
    record.expect(found == ips, f"{key}: A {sorted(found)}, not every ready pod {sorted(ips)}")
    pods = {p.name for p in lab.running_pods("echo")}
    responses, errors = dialled(lab, name, port)  # no ClusterIP: the pods' port
    record.metric("pods_answering", len(set(responses)), "pods", f"of {len(pods)}")
    record.expect(not errors, f"{key}: {len(errors)} dials failed: {errors[:1]}")
    record.expect(
        bool(responses) and set(responses) <= pods,
        f"{key}: answered by {sorted(set(responses))}, not only pods of workload echo",
    )
    record.verdict()


def test_a_statefulsets_pods_each_have_a_record(lab: Lab, record: CaseRecord) -> None:
    namespace = lab.service(SERVICE).namespace
    domain = cluster_domain(lab)
    pods = lab.dataplane.create_stateful_set(STATEFUL, STATEFUL_PODS, namespace)
    try:
        for pod, ip in sorted(pods.items()):
            name = f"{pod}.{STATEFUL}.{namespace}.svc.{domain}"
            found = addresses(lookup_until(lab, name, lambda r, ip=ip: addresses(r) == {ip}))
            record.expect(found == {ip}, f"{name}: A {sorted(found)}, not pod {pod}'s {ip}")
        governing = addresses(lookup(lab, f"{STATEFUL}.{namespace}.svc.{domain}"))
        record.expect(
            governing == set(pods.values()),
            f"{STATEFUL}.{namespace}: A {sorted(governing)}, not the pods' {sorted(pods.values())}",
        )
    finally:
        lab.dataplane.delete_stateful_set(STATEFUL, namespace)
    record.verdict()


def test_an_external_name_is_a_cname_and_no_proxy_rule(
    lab: Lab, record: CaseRecord, hosts: dict[str, Any]
) -> None:
    svc = lab.service(SERVICE)
    domain = cluster_domain(lab)
    target = f"{svc.name}.{svc.namespace}.svc.{domain}"  # in the cluster: nothing leaves it
    alias = "echo-alias"
    lab.dataplane.create_external_name(svc.namespace, alias, target)
    try:
        name = f"{alias}.{svc.namespace}.svc.{domain}"
        records = lookup_until(lab, name, lambda r: any(x.type == "CNAME" for x in r))
        cnames = [r.data for r in records if r.type == "CNAME"]
        record.expect(cnames == [f"{target}."], f"{name}: CNAME {cnames}, not {target}.")
        record.expect(
            addresses(records) == {str(svc.cluster_ip)},
            f"{name}: the CNAME leads to {sorted(addresses(records))}, not {svc.cluster_ip}",
        )
        responses, errors = dialled(lab, alias, svc.ports[0].port)
        record.expect(
            not errors and bool(responses), f"{alias}: {len(errors)} dials failed: {errors[:1]}"
        )
        audit_nodes(lab, hosts, record)  # exactly the other Services' rules: none for it
    finally:
        lab.dataplane.delete_external_name(svc.namespace, alias)
    record.verdict()
