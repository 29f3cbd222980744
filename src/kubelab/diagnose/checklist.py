"""`kubelab diagnose`: the "why can't I reach my Service?" checklist, run for real.

Each step looks at one thing, in the order a person would check it, and returns a verdict
(pass / fail / skip with the reason it cannot apply here), the evidence it saw, and for a
failure the likely cause and its fix. The first failing step is the diagnosis. Steps read
the cluster through its objects (the kubectl JSON shapes, see view.py), the nodes through
their rule dumps (the auditor) and the network through real probes from inside the lab.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from kubelab.diagnose.view import (
    PodView,
    ServiceView,
    allows_ingress,
    cluster_dns_pods,
    policy_name,
    service_names,
    service_view,
)
from kubelab.errors import SpecError
from kubelab.hosts import Runner
from kubelab.lab import Lab
from kubelab.model import ServicePort

Verdict = Literal["pass", "fail", "skip"]
PROBE_TIMEOUT_S = 1.5
PROBES_PER_TARGET = 3


@dataclass
class Step:
    name: str
    title: str
    verdict: Verdict = "pass"
    evidence: list[str] = field(default_factory=list)
    cause: str = ""
    fix: str = ""

    def fail(self, cause: str, fix: str) -> Step:
        self.verdict, self.cause, self.fix = "fail", cause, fix
        return self

    def skip(self, reason: str) -> Step:
        self.verdict = "skip"
        self.evidence.append(reason)
        return self


@dataclass
class Diagnosis:
    lab: str
    service: str
    port: str
    steps: list[Step]

    @property
    def first_failure(self) -> Step | None:
        return next((s for s in self.steps if s.verdict == "fail"), None)

    @property
    def ok(self) -> bool:
        return self.first_failure is None

    def as_data(self) -> dict[str, Any]:
        first = self.first_failure
        return {
            "lab": self.lab,
            "service": self.service,
            "port": self.port,
            "ok": self.ok,
            "cause": first.cause if first else "",
            "fix": first.fix if first else "",
            "first_failure": first.name if first else None,
            "steps": [asdict(s) for s in self.steps],
        }


@dataclass
class Context:
    """What every step may use: the lab (runners, rule dumps), the cluster as last
    published, the Service's view, the port under test and where probes start."""

    lab: Lab
    status: dict[str, Any]
    key: str
    view: ServiceView
    port: ServicePort
    source: str | None  # --from: the member the ClusterIP and NodePort probes start in

    def pods(self) -> list[dict[str, Any]]:
        return [p for p in self.status.get("pods", []) if p.get("phase") == "Running"]

    def runner(self, member: str) -> Runner:
        """A node, the client, or a pod (as last published: pods made by another
        process included)."""
        pod = next((p for p in self.status.get("pods", []) if p["name"] == member), None)
        if pod is not None and pod.get("netns"):  # a namespace on its node (reference)
            return self.lab.substrate.runner(pod["node"]).inside(pod["netns"], pod["name"])
        return self.lab.runner(member)  # a real cluster's pod is found through its API

    def probe(self, member: str, host: str, port: int) -> list[dict[str, Any]]:
        """Bounded requests from inside `member` to a lab address: which pod answered, or
        the outcome (refused, timeout, ...)."""
        from kubelab.traffic import inline

        self.lab.topology.require_own(host)
        runner = self.runner(member)
        if self.port.protocol == "UDP":
            answers = inline.udp_ask(
                runner, host, port, "hostname", count=PROBES_PER_TARGET, timeout=PROBE_TIMEOUT_S
            )
            return [
                {"ok": a is not None, "body": a or "", "outcome": "ok" if a else "timeout"}
                for a in answers
            ]
        url = f"http://{host}:{port}/hostname"
        return inline.http_get(runner, url, PROBES_PER_TARGET, PROBE_TIMEOUT_S)


def summarize(results: list[dict[str, Any]]) -> str:
    """'answered by a, b' / '3 timeout' / '2 answered by a, 1 refused'."""
    pods = sorted({r["body"].strip() for r in results if r["ok"]})
    failed: dict[str, int] = {}
    for r in results:
        if not r["ok"]:
            failed[r.get("outcome", "error")] = failed.get(r.get("outcome", "error"), 0) + 1
    parts = [f"answered by {', '.join(pods)}"] if pods else []
    parts += [f"{n} {outcome}" for outcome, n in sorted(failed.items())]
    return "; ".join(parts)


# --- the steps, in order ----------------------------------------------------------------------


def step_endpoints(ctx: Context) -> Step:
    step = Step("endpoints", "the Service has endpoints")
    eps = ctx.view.endpoints_for(ctx.port)
    ready = [e for e in eps if e.ready]
    step.evidence.append(f"{len(eps)} endpoints for port {ctx.port.port}, {len(ready)} ready")
    if eps:
        return step
    selector = ",".join(f"{k}={v}" for k, v in sorted(ctx.view.selector.items())) or "(none)"
    if not ctx.view.selected:
        return step.fail(
            f"no endpoints: the selector {selector} matches no pod in namespace "
            f"{ctx.view.service.namespace}",
            "scale the workload up, or make the Service's selector match the pods' labels "
            "(kubectl get pods --show-labels)",
        )
    return step.fail(
        f"no endpoints although {len(ctx.view.selected)} pods match {selector}: none is "
        "running and ready",
        "look at why the pods do not run (kubectl describe pod)",
    )


def step_selector(ctx: Context) -> Step:
    step = Step("selector", "the selector matches the pods' labels")
    view = ctx.view
    selector = ",".join(f"{k}={v}" for k, v in sorted(view.selector.items()))
    if not view.selector:
        return step.skip("the Service has no selector: its endpoints are managed by hand")
    step.evidence.append(f"selector {selector} matches {len(view.selected)} pods")
    if view.selected:
        return step
    near = sorted(
        {
            f"{k}={p.labels[k]}"
            for p in view.namespace_pods
            for k in view.selector
            if k in p.labels and p.labels[k] != view.selector[k]
        }
    )
    if near:
        step.evidence.append(f"pods in the namespace carry {', '.join(near)}")
    return step.fail(
        f"the selector {selector} matches no pod"
        + (f"; pods carry {', '.join(near)}" if near else ""),
        "fix the Service's selector or the pods' labels so they agree",
    )


def step_readiness(ctx: Context) -> Step:
    step = Step("readiness", "the pods behind it are ready")
    eps = ctx.view.endpoints_for(ctx.port)
    if not eps:
        return step.skip("no endpoints to be ready")
    not_ready = [e for e in eps if not e.ready]
    step.evidence += [
        f"{e.pod or e.address} on {e.node}: "
        + ("ready" if e.ready else "terminating" if e.terminating else "not ready")
        for e in eps
    ]
    if not not_ready:
        return step
    names = ", ".join(e.pod or e.address for e in not_ready)
    if all(e.terminating for e in not_ready):
        return step.fail(
            f"{len(not_ready)} of {len(eps)} endpoints are terminating ({names})",
            "wait for the rollout or deletion to finish; new connections go to the others",
        )
    return step.fail(
        f"{len(not_ready)} of {len(eps)} pods are not ready ({names}): they get no new connections",
        "check the pods' readiness probes and events (kubectl describe pod)",
    )


def _listening(ctx: Context, pod: PodView, port: int, protocol: str) -> bool:
    flag = "-Hltn" if protocol == "TCP" else "-Hlun"
    out = ctx.runner(pod.name).run(["ss", flag], check=False).stdout
    return any(line.split()[3].endswith(f":{port}") for line in out.splitlines() if line.split())


def step_ports(ctx: Context) -> Step:
    port = ctx.port
    step = Step("ports", f"port {port.port} -> targetPort {port.target_port} is listened on")
    pods = [p for p in ctx.view.selected if p.phase == "Running"]
    if not pods:
        return step.skip("no running pod to look into")
    declared = [p for p in pods if (port.target_port, port.protocol) in p.container_ports]
    deaf = [p.name for p in pods if not _listening(ctx, p, port.target_port, port.protocol)]
    step.evidence.append(
        f"{len(declared)} of {len(pods)} pods declare containerPort {port.target_port}/"
        f"{port.protocol}; {len(pods) - len(deaf)} listen on it"
    )
    if not deaf:
        return step
    others = sorted({f"{n}/{proto}" for p in pods for n, proto in p.container_ports})
    return step.fail(
        f"nothing listens on targetPort {port.target_port}/{port.protocol} in "
        f"{', '.join(deaf)} (the containers declare {', '.join(others) or 'no ports'})",
        "set the Service's targetPort to the port the container listens on",
    )


def _pod_elsewhere(ctx: Context, node: str) -> str:
    """A running pod on another node than `node` (not behind this Service if possible),
    or another node itself."""
    selected = {p.name for p in ctx.view.selected}
    pods = sorted((p for p in ctx.pods() if p["node"] != node), key=lambda p: p["name"] in selected)
    if pods:
        return str(pods[0]["name"])
    return next(n.name for n in ctx.lab.topology.nodes if n.name != node)


def step_endpoint_probe(ctx: Context) -> Step:
    step = Step("endpoint_probe", "each endpoint answers directly")
    ready = [e for e in ctx.view.endpoints_for(ctx.port) if e.ready]
    if not ready:
        return step.skip("no ready endpoint to probe")
    silent = []
    for e in ready:
        source = _pod_elsewhere(ctx, e.node) if len(ctx.lab.topology.nodes) > 1 else e.node
        results = ctx.probe(source, str(e.ip), e.port)
        step.evidence.append(f"{e.address} ({e.pod}) from {source}: {summarize(results)}")
        if not any(r["ok"] for r in results):
            silent.append(f"{e.address} ({e.pod})")
    if silent:
        return step.fail(
            f"endpoints do not answer when probed directly: {', '.join(silent)}",
            "the pod or the pod network is broken: check the pod's logs and the route to "
            "its node's pod range",
        )
    return step


def step_proxy(ctx: Context) -> Step:
    step = Step("proxy", "the proxy runs and has synced on every node")
    proxies = ctx.status.get("proxies")
    if not proxies:
        return step.skip("this dataplane reports no proxy health")
    now = time.time()
    stopped, behind, unhealthy = [], [], []
    for node, health in sorted(proxies.items()):
        last = health.get("last_sync")
        ago = f"{now - last:.1f}s ago" if last else "never"
        state = "running" if health.get("running") else "stopped"
        if health.get("running") and health.get("healthy") is False:
            state += ", unhealthy (/healthz 503)"
        changes = int(health.get("changes_since") or 0)
        step.evidence.append(f"{node}: {state}, last sync {ago}, {changes} changes since")
        if not health.get("running"):
            stopped.append((node, changes))
        elif changes:
            behind.append(node)
        elif health.get("healthy") is False:
            unhealthy.append(node)
    if stopped:
        node, changes = stopped[0]
        return step.fail(
            f"the proxy on {node} is not running: its rules miss {changes} cluster changes "
            "(stale rules)",
            f"start kube-proxy on {node} again and read why it stopped (kubectl -n "
            f"kube-system logs the kube-proxy pod on {node}); it reconciles the rules",
        )
    if behind:
        return step.fail(
            f"the proxy on {', '.join(behind)} runs but has not synced the latest changes",
            "look at kube-proxy's sync errors in its log and "
            "kubeproxy_sync_proxy_rules_last_timestamp_seconds",
        )
    if unhealthy:
        return step.fail(
            f"the proxy on {', '.join(unhealthy)} reports itself unhealthy (/healthz 503) "
            "with no change pending: its node is being deleted or tainted for deletion",
            "load balancers stop sending to that node; if it should stay, look at the "
            "node's deletionTimestamp and ToBeDeletedByClusterAutoscaler taint",
        )
    return step


def _rule_cause(node: str, line: str) -> tuple[str, str]:
    restart = (
        f"restart kube-proxy on {node}: it rewrites its rules; then find what changed them "
        "(an iptables or nft flush, another firewall manager)"
    )
    if "missing frontend" in line:
        return f"{node} has no rules for the Service ({line})", restart
    if "missing endpoint" in line:
        return f"{node}'s rules leave out an endpoint ({line})", restart
    if "extra endpoint" in line:
        return f"{node}'s rules still send to a gone endpoint, stale rules ({line})", restart
    if "masquerade" in line:
        return (
            f"{node}'s rules do not masquerade as the traffic policy requires ({line}); "
            "replies from pods on other nodes cannot find their way back",
            restart,
        )
    return f"{node}'s rules differ from the Service ({line})", restart


def _only(doc: dict[str, Any], key: str) -> dict[str, Any]:
    """The objects of one Service: itself and its EndpointSlices."""
    namespace, name = key.split("/", 1)

    def mine(item: dict[str, Any]) -> bool:
        meta = item.get("metadata", {})
        if meta.get("namespace", "default") != namespace:
            return False
        if item.get("kind") == "Service":
            return bool(meta.get("name") == name)
        labels = meta.get("labels") or {}
        return (
            item.get("kind") == "EndpointSlice" and labels.get("kubernetes.io/service-name") == name
        )

    return {**doc, "items": [i for i in doc.get("items", []) if mine(i)]}


def step_rules(ctx: Context) -> Step:
    from kubelab.rules.audit import audit
    from kubelab.rules.expected import diff_tables, expected_table

    step = Step("rules", "every node's rules carry the Service as it is")
    mode = ctx.lab.dataplane.proxy_mode
    doc = _only(ctx.status["objects"], ctx.key)
    first: tuple[str, str] | None = None
    for node in ctx.lab.topology.nodes:
        expected = expected_table(doc, node.name, mode)
        table = audit(
            ctx.lab.dump_rules(node.name),
            f"{node.name} rules",
            node_addresses=ctx.lab.node_addresses(node.name),
        )
        keys = {f.key for f in expected.frontends}
        table.frontends = [
            f
            for f in table.frontends
            if f.key in keys or (f.service or "").split(":")[0] == ctx.key
        ]
        lines = diff_tables(expected, table)
        step.evidence.append(
            f"{node.name}: {len(table.frontends)} frontends as expected"
            if not lines
            else f"{node.name}: " + "; ".join(lines)
        )
        if lines and first is None:
            first = _rule_cause(node.name, lines[0])
    if first:
        return step.fail(*first)
    return step


def step_clusterip(ctx: Context) -> Step:
    svc = ctx.view.service
    step = Step("clusterip", f"the ClusterIP {svc.cluster_ip}:{ctx.port.port} answers")
    if svc.cluster_ip is None:
        return step.skip("a headless Service has no ClusterIP")
    sources = [ctx.source] if ctx.source else []
    if not sources:
        for node in ctx.lab.topology.nodes:
            pods = [p["name"] for p in ctx.pods() if p["node"] == node.name]
            sources.append(pods[0] if pods else node.name)
    has_endpoints = any(e.ready for e in ctx.view.endpoints_for(ctx.port))
    failing = []
    for source in sources:
        results = ctx.probe(source, str(svc.cluster_ip), ctx.port.port)
        step.evidence.append(f"from {source}: {summarize(results)}")
        if not all(r["ok"] for r in results):
            failing.append(source)
    if not failing:
        return step
    if not has_endpoints:
        return step.fail(
            "the ClusterIP has no ready endpoint behind it: kube-proxy rejects connections",
            "make the pods ready (see the steps above)",
        )
    return step.fail(
        f"the ClusterIP does not answer from {', '.join(failing)} although its rules and "
        "endpoints look right",
        "trace the packet on that node (conntrack -L, iptables -t nat -L -v counters) and "
        "check the route back from the pods",
    )


def _firewall(ctx: Context, node: str, port: int) -> list[str]:
    from kubelab.diagnose.firewall import foreign_drops

    runner = ctx.lab.substrate.runner(node)
    saved = runner.run(["iptables-save"], check=False).stdout
    ruleset = runner.run(["nft", "-j", "list", "ruleset"], check=False).stdout
    return foreign_drops(saved, ruleset, port, ctx.port.protocol)


def step_nodeport(ctx: Context) -> Step:
    port = ctx.port
    step = Step("nodeport", f"NodePort {port.node_port} answers on every node")
    if port.node_port is None:
        return step.skip(f"{ctx.view.service.type} Service: no NodePort")
    source = ctx.source or ctx.lab.topology.client.name
    local = ctx.view.service.external_traffic_policy == "Local"
    with_local = {e.node for e in ctx.view.endpoints_for(port) if e.ready}
    silent = []
    for node in ctx.lab.topology.nodes:
        results = ctx.probe(source, str(node.ip), port.node_port)
        answered = all(r["ok"] for r in results)
        note = ""
        if local and node.name not in with_local:
            note = " (no local endpoint: policy Local drops it, as it should)"
            answered = not any(r["ok"] for r in results)
        step.evidence.append(f"{node.name} {node.ip} from {source}: {summarize(results)}{note}")
        if not answered:
            silent.append(node.name)
    if not silent:
        return step
    for node_name in silent:
        drops = _firewall(ctx, node_name, port.node_port)
        if drops:
            step.evidence += [f"{node_name}: {d}" for d in drops]
            return step.fail(
                f"a firewall rule on {node_name} drops NodePort {port.node_port}: {drops[0]}",
                f"remove that rule, or allow the NodePort range (30000-32767/"
                f"{port.protocol.lower()}) through the node's firewall",
            )
    return step.fail(
        f"NodePort {port.node_port} does not answer on {', '.join(silent)}",
        "check the node's rules for the NodePort and the route back to the client",
    )


def step_network_policy(ctx: Context) -> Step:
    step = Step("network_policy", "no NetworkPolicy blocks the traffic")
    if ctx.lab.spec.dataplane.kind == "reference":
        return step.skip("the reference dataplane has no NetworkPolicy: nothing can block here")
    if not ctx.view.policies:
        step.evidence.append("no NetworkPolicy selects the Service's pods")
        return step
    blocking = [p for p in ctx.view.policies if not allows_ingress(p)]
    step.evidence += [f"{policy_name(p)} selects the pods" for p in ctx.view.policies]
    if blocking:
        return step.fail(
            f"NetworkPolicy {policy_name(blocking[0])} selects the pods and allows no ingress",
            "add an ingress rule allowing the clients (podSelector / namespaceSelector) and "
            f"port {ctx.port.target_port}",
        )
    return step


def step_dns(ctx: Context) -> Step:
    step = Step("dns", "the Service's name resolves")
    if ctx.lab.spec.dataplane.kind == "reference":
        return step.skip("the reference dataplane runs no cluster DNS (CoreDNS: real clusters)")
    return dns_from_objects(step, ctx.status.get("objects") or {})


def dns_from_objects(step: Step, doc: dict[str, Any]) -> Step:
    """What the objects tell about cluster DNS: CoreDNS pods running and ready. (Resolving
    the name from a pod is the kubernetes dataplane's part; it is not built yet.)"""
    pods = cluster_dns_pods(doc)
    ready = [p for p in pods if p.phase == "Running" and p.ready]
    step.evidence.append(f"{len(ready)} of {len(pods)} CoreDNS pods (k8s-app=kube-dns) ready")
    if not ready:
        return step.fail(
            "cluster DNS is down: no ready CoreDNS pod in kube-system, so Service names do "
            "not resolve",
            "kubectl -n kube-system get pods -l k8s-app=kube-dns, then read their logs and events",
        )
    return step


STEPS: tuple[Callable[[Context], Step], ...] = (
    step_endpoints,
    step_selector,
    step_readiness,
    step_ports,
    step_endpoint_probe,
    step_proxy,
    step_rules,
    step_clusterip,
    step_nodeport,
    step_network_policy,
    step_dns,
)


def diagnose(
    lab: Lab,
    service: str,
    source: str | None = None,
    port_name: str | None = None,
    status: dict[str, Any] | None = None,
) -> Diagnosis:
    """Run the checklist against a lab that is up. `status` is the lab as published (by
    default: what the process running it saved last)."""
    key = service if "/" in service else f"default/{service}"
    status = status if status is not None else lab.saved_status()
    doc = status.get("objects") or {"items": []}
    view = service_view(doc, key)
    first = Step("service", f"the Service {key} exists")
    if view is None:
        names = ", ".join(service_names(doc)) or "none"
        first.fail(f"there is no Service {key} (Services: {names})", "create it, or fix the name")
        rest = [Step(f.__name__.removeprefix("step_"), "").skip("no Service") for f in STEPS]
        return Diagnosis(lab.spec.lab_id, key, "", [first, *rest])
    try:
        port = view.service.port_by_name(port_name)
    except KeyError:
        ports = ", ".join(p.name or str(p.port) for p in view.service.ports)
        raise SpecError(f"--port {port_name}: {key} has no such port; its ports: {ports}") from None
    if source is not None and not _is_member(lab, status, source):
        raise SpecError(f"--from {source}: no such member; see `kubelab status {lab.spec.lab_id}`")
    first.evidence.append(
        f"{view.service.type}, ClusterIP {view.service.cluster_ip}, ports "
        + ", ".join(f"{p.port}/{p.protocol}->{p.target_port}" for p in view.service.ports)
        + f", externalTrafficPolicy {view.service.external_traffic_policy}"
    )
    ctx = Context(lab, status, key, view, port, source)
    steps = [first, *(check(ctx) for check in STEPS)]
    return Diagnosis(lab.spec.lab_id, key, port.name or str(port.port), steps)


def _is_member(lab: Lab, status: dict[str, Any], name: str) -> bool:
    nodes = {n.name for n in lab.topology.nodes} | {lab.topology.client.name}
    return name in nodes or any(p["name"] == name for p in status.get("pods", []))
