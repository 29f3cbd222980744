"""The table a node should have, from Services and EndpointSlices, and the diff against
what its rules show.

Input: the JSON of `kubectl get svc,endpointslices -A -o json` (the lab's own model
exports the same, `Lab.objects()`). Endpoints are categorized per node as kube-proxy does
(`model.categorize`): traffic policies with the endpoints' node names, ready first, then
serving-and-terminating as fallback.
"""

from __future__ import annotations

import ipaddress
from typing import Any

from kubelab.model import Endpoint, Service, ServicePort, categorize
from kubelab.rules.table import ForwardingTable, Frontend


class ObjectsError(ValueError):
    pass


def _services_and_slices(doc: Any) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    if not isinstance(doc, dict):
        raise ObjectsError("expected a JSON object (kubectl get svc,endpointslices -A -o json)")
    items = doc.get("items") if doc.get("kind") == "List" or "items" in doc else [doc]
    if not isinstance(items, list):
        raise ObjectsError("`items` is not a list")
    services = [i for i in items if isinstance(i, dict) and i.get("kind") == "Service"]
    slices = [i for i in items if isinstance(i, dict) and i.get("kind") == "EndpointSlice"]
    if not services:
        raise ObjectsError(
            "no Service objects found; pass the output of "
            "`kubectl get svc,endpointslices -A -o json`"
        )
    return services, slices


def source_ranges_of(obj: dict[str, Any]) -> list[str]:
    """spec.loadBalancerSourceRanges, as kube-proxy reads them (whitespace trimmed)."""
    ranges = (obj.get("spec") or {}).get("loadBalancerSourceRanges") or []
    return [str(ipaddress.IPv4Network(r.strip(), strict=False)) for r in ranges]


def external_kind(mode: str, kind: str, source_ranges: list[str]) -> str:
    """The kind a dump of `mode` shows for an external IP or LoadBalancer IP: nftables
    marks only LoadBalancer IPs with source ranges (in `firewall-ips`); an IPVS listing
    shows a virtual server, read as clusterip, whatever the address is."""
    if mode == "ipvs":
        return "clusterip"
    if mode == "nftables" and not (kind == "loadbalancer" and source_ranges):
        return "external"
    return kind


def service_from_object(obj: dict[str, Any]) -> tuple[Service, list[str], list[str]]:
    meta, spec = obj.get("metadata", {}), obj.get("spec", {})
    cluster_ip = spec.get("clusterIP")
    ports = tuple(
        ServicePort(
            p.get("name") or None,
            p.get("protocol", "TCP"),
            int(p["port"]),
            p.get("targetPort", p["port"])
            if isinstance(p.get("targetPort"), int)
            else int(p["port"]),
            p.get("nodePort"),
        )
        for p in spec.get("ports", [])
    )
    affinity = spec.get("sessionAffinity", "None")
    timeout = (
        (spec.get("sessionAffinityConfig") or {}).get("clientIP", {}).get("timeoutSeconds", 10800)
    )
    svc_type = spec.get("type", "ClusterIP")
    svc = Service(
        namespace=meta.get("namespace", "default"), name=meta["name"],
        type="NodePort" if svc_type in ("NodePort", "LoadBalancer") else "ClusterIP",
        cluster_ip=None if cluster_ip in (None, "None", "") else ipaddress.IPv4Address(cluster_ip),
        ports=ports, workload="",
        external_traffic_policy=spec.get("externalTrafficPolicy") or "Cluster",
        internal_traffic_policy=spec.get("internalTrafficPolicy") or "Cluster",
        session_affinity=affinity, session_affinity_timeout_s=int(timeout),
        health_check_node_port=spec.get("healthCheckNodePort"),
    )  # fmt: skip
    lb = [
        i["ip"]
        for i in (obj.get("status", {}).get("loadBalancer", {}).get("ingress") or [])
        if i.get("ip")
    ]
    return svc, list(spec.get("externalIPs") or []), lb


def conditions_of(endpoint: dict[str, Any]) -> tuple[bool, bool, bool]:
    """(ready, serving, terminating) of one EndpointSlice endpoint, as the API documents
    the unset ones: ready nil means ready, serving nil defers to ready."""
    cond = endpoint.get("conditions") or {}
    ready = cond.get("ready") is not False
    serving = cond.get("serving", ready) is not False
    return ready, serving, bool(cond.get("terminating"))


def endpoints_from_slices(
    slices: list[dict[str, Any]], svc: Service, port: ServicePort
) -> tuple[Endpoint, ...]:
    out = []
    for s in slices:
        meta = s.get("metadata", {})
        if meta.get("namespace", "default") != svc.namespace:
            continue
        if (meta.get("labels") or {}).get("kubernetes.io/service-name") != svc.name:
            continue
        slice_port = next(
            (p for p in s.get("ports") or [] if (p.get("name") or None) == port.name), None
        )
        if slice_port is None:
            continue
        for ep in s.get("endpoints") or []:
            ready, serving, terminating = conditions_of(ep)
            for addr in ep.get("addresses") or []:
                out.append(
                    Endpoint(
                        ipaddress.IPv4Address(addr),
                        int(slice_port["port"]),
                        ep.get("nodeName") or "",
                        (ep.get("targetRef") or {}).get("name", ""),
                        ready=ready,
                        serving=serving,
                        terminating=terminating,
                    )
                )
    return tuple(out)


def expected_table(doc: Any, node: str, mode: str) -> ForwardingTable:
    services, slices = _services_and_slices(doc)
    table = ForwardingTable(mode)
    ipvs = mode == "ipvs"
    for obj in services:
        svc, external_ips, lb_ips = service_from_object(obj)
        ranges = source_ranges_of(obj) if lb_ips else []
        if svc.headless:  # no cluster IP (headless, or ExternalName: a CNAME only): no rule
            continue
        for port in svc.ports:
            proto = port.protocol.lower()
            eps = endpoints_from_slices(slices, svc, port)
            cat = categorize(svc, eps, node)
            etp_local = cat.external_local
            name = svc.port_name(port)

            f = table.add(Frontend("clusterip", str(svc.cluster_ip), port.port, proto, name))
            if not cat.has_any:
                f.no_endpoints = "reject"
            elif not cat.has_internal:
                f.no_endpoints = "drop"
            else:
                f.endpoints = sorted(e.address for e in cat.internal)
                f.affinity_seconds = svc.affinity_seconds
                f.masquerade_offcluster = None if ipvs else True
            external = cat.external
            targets: list[tuple[str, str | None]] = [("nodeport", None)] if port.node_port else []
            targets += [("externalip", ip) for ip in external_ips]
            targets += [("loadbalancer", ip) for ip in lb_ips]
            for kind, vip in targets:
                number = port.node_port if kind == "nodeport" else port.port
                assert number is not None
                shown = kind if kind == "nodeport" else external_kind(mode, kind, ranges)
                g = table.add(Frontend(shown, vip, number, proto, name))
                g.local_only = etp_local
                if kind == "loadbalancer":
                    g.source_ranges = list(ranges)
                if etp_local and cat.has_any and not ipvs:
                    # pods and the node skip the policy: the cluster-wide endpoints
                    g.short_circuit_endpoints = sorted(e.address for e in cat.cluster)
                if not cat.has_any:
                    g.no_endpoints = "reject"
                elif not external:
                    g.no_endpoints = "drop"
                else:
                    g.endpoints = sorted(e.address for e in external)
                    g.affinity_seconds = svc.affinity_seconds
                    g.masquerade_all = None if ipvs else not etp_local
    table.sort()
    return table


def diff_tables(expected: ForwardingTable, actual: ForwardingTable) -> list[str]:
    """One line per difference between what the node should and does forward."""
    out: list[str] = []
    nodeport_only = actual.mode == "ipvs"
    listing_only = actual.mode == "cilium"  # a Cilium listing shows frontends and backends
    for e in expected.frontends:
        a = actual.find(e.kind, e.vip, e.protocol, e.port)
        if a is None:
            if e.no_endpoints and actual.mode == "ipvs":
                continue  # IPVS writes no virtual server for a Service without endpoints
            out.append(f"missing frontend {e.label()}")
            continue
        got, want = set(a.endpoints), set(e.endpoints)
        for ep in sorted(want - got):
            out.append(f"{e.label()}: missing endpoint {ep}")
        for ep in sorted(got - want):
            out.append(f"{e.label()}: extra endpoint {ep}")
        if listing_only:
            continue
        if a.affinity_seconds != e.affinity_seconds and (e.endpoints or a.endpoints):
            have = f"{a.affinity_seconds}s" if a.affinity_seconds else "none"
            need = f"{e.affinity_seconds}s" if e.affinity_seconds else "none"
            out.append(f"{e.label()}: session affinity {have}, expected {need}")
        if e.kind == "clusterip" and e.masquerade_offcluster and a.masquerade_offcluster is False:
            out.append(f"{e.label()}: masquerade of off-cluster traffic is missing")
        if e.masquerade_all is not None and a.masquerade_all is not None and e.endpoints:
            if e.masquerade_all and not a.masquerade_all:
                out.append(
                    f"{e.label()}: masquerade missing (policy Cluster must SNAT external traffic)"
                )
            if not e.masquerade_all and a.masquerade_all:
                out.append(f"{e.label()}: external traffic is masqueraded under policy Local")
        if e.kind != "clusterip" and e.local_only != a.local_only and not nodeport_only:
            out.append(
                f"{e.label()}: externalTrafficPolicy "
                f"{'Local' if a.local_only else 'Cluster'} in the rules, expected "
                f"{'Local' if e.local_only else 'Cluster'}"
            )
        if e.short_circuit_endpoints and set(a.short_circuit_endpoints) != set(
            e.short_circuit_endpoints
        ):
            out.append(
                f"{e.label()}: pods and the node reach "
                f"{', '.join(sorted(a.short_circuit_endpoints)) or 'nothing'}, expected the "
                f"cluster-wide {', '.join(e.short_circuit_endpoints)}"
            )
        if sorted(e.source_ranges) != sorted(a.source_ranges) and not nodeport_only:
            out.append(
                f"{e.label()}: loadBalancerSourceRanges "
                f"{', '.join(a.source_ranges) or 'none'} in the rules, expected "
                f"{', '.join(e.source_ranges) or 'none'}"
            )
        if e.no_endpoints != a.no_endpoints and not nodeport_only:
            out.append(
                f"{e.label()}: with no usable endpoints it would "
                f"{a.no_endpoints or 'forward'}, expected {e.no_endpoints or 'forward'}"
            )
    for a in actual.frontends:
        if expected.find(a.kind, a.vip, a.protocol, a.port) is None:
            out.append(f"extra frontend {a.label()}")
    return out
