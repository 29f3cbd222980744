"""Each scenario must be able to fail: break the lab on purpose, expect FAIL naming the break.

Most breaks wrap the proxier so every sync writes broken rules (including the syncs a
scenario triggers itself); the others break the network or the Lab's behaviour. Each runs
one scenario module against a real lab and reads its verdict rows.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path

import pandas as pd
import pytest

from conftest import ROOT
from kubelab.dataplanes.reference.proxier import Proxier, ProxierContext
from kubelab.hosts import Runner
from kubelab.lab import Lab
from kubelab.model import ServiceState
from kubelab.results import ResultsWriter
from kubelab.run import run_scenarios
from kubelab.runs import context_for

pytestmark = [pytest.mark.root, pytest.mark.lab]

TextSabotage = Callable[[str, ProxierContext], str]
StateSabotage = Callable[[list[ServiceState]], list[ServiceState]]


class SabotagedProxier(Proxier):
    mode = "iptables"

    def __init__(
        self,
        inner: Proxier,
        text: TextSabotage | None,
        states: StateSabotage | None,
        dump_command: tuple[str, ...] | None = None,
    ) -> None:
        super().__init__()
        self.inner = inner
        self.text = text
        self.states = states
        self.dump_command = dump_command or inner.dump_command  # type: ignore[misc]

    def render(self, services: list[ServiceState], ctx: ProxierContext) -> str:
        if self.states:
            services = self.states(services)
        out = self.inner.render(services, ctx)
        return self.text(out, ctx) if self.text else out

    def apply(self, runner: Runner, text: str) -> None:
        self.inner.apply(runner, text)

    def forget(self) -> None:
        self.inner.forget()


def drop_lines(pattern: str, node: str | None = None) -> TextSabotage:
    def sabotage(text: str, ctx: ProxierContext) -> str:
        if node and ctx.node != node:
            return text
        return "\n".join(x for x in text.splitlines() if not re.search(pattern, x)) + "\n"

    return sabotage


def local_policy_masquerades(text: str, ctx: ProxierContext) -> str:
    # an unconditional mark before the jump to KUBE-SVL: Local traffic gets SNATed too
    return re.sub(
        r"^(-A (KUBE-EXT-\S+) -j KUBE-SVL-\S+)$", r"-A \2 -j KUBE-MARK-MASQ\n\1", text, flags=re.M
    )


def skewed_probabilities(text: str, ctx: ProxierContext) -> str:
    # the first endpoint of every chain gets half of all new connections
    return re.sub(r"(-A KUBE-SVC-\S+ .*?--probability )0\.1666666667", r"\g<1>0.5000000000", text)


def reject_becomes_drop(text: str, ctx: ProxierContext) -> str:
    return re.sub(r"(has no endpoints.*)-j REJECT", r"\1-j DROP", text)


def source_ranges_ignored(text: str, ctx: ProxierContext) -> str:
    # LoadBalancer IPs go straight to KUBE-EXT-, past their KUBE-FW- chain and its filter DROP
    text = re.sub(r"^(-A KUBE-SERVICES .*)-j KUBE-FW-(\S+)$", r"\1-j KUBE-EXT-\2", text, flags=re.M)
    return drop_lines(r"^-A KUBE-PROXY-FIREWALL .*traffic not accepted")(text, ctx)


def itp_ignored(states: list[ServiceState]) -> list[ServiceState]:
    return [
        replace(s, service=s.service.with_changes(internal_traffic_policy="Cluster"))
        for s in states
    ]


@pytest.fixture(scope="module")
def lab(running_lab: Lab) -> Lab:
    return running_lab


def run_broken(
    lab: Lab,
    tmp_path: Path,
    module: str,
    *,
    text: TextSabotage | None = None,
    states: StateSabotage | None = None,
    dump_command: tuple[str, ...] | None = None,
    k: str | None = None,
) -> pd.DataFrame:
    dataplane = lab.dataplane
    honest = dataplane.proxier  # type: ignore[attr-defined]
    broken = SabotagedProxier(honest, text, states, dump_command)
    dataplane.proxier = broken  # type: ignore[attr-defined]
    writer = ResultsWriter(tmp_path / "run", context_for(lab, "broken"))
    try:
        lab.sync("sabotage")
        module_file = str(ROOT / "scenarios" / f"test_{module}.py")
        run_scenarios(lab, writer, [module_file], ROOT, ["-k", k] if k else [])
    finally:
        dataplane.proxier = honest  # type: ignore[attr-defined]
        honest.forget()  # the nodes hold the broken rules: its next sync loads all again
        lab.settle()
        lab.sync("honest rules again")
    results = pd.read_parquet(writer.results_path)
    verdicts = results[results["metric"] == "verdict"].set_index("case")
    verdicts.attrs["results"] = results  # with the failing cases' diagnoses
    return verdicts


def failed_with(verdicts: pd.DataFrame, case: str, *needles: str) -> None:
    assert verdicts.loc[case, "verdict"] == "fail", verdicts.loc[case].to_dict()
    detail = verdicts.loc[case, "detail"]
    for needle in needles:
        assert needle in detail, f"{needle!r} not in: {detail}"


def test_missing_masquerade_fails_the_cluster_case(lab: Lab, tmp_path: Path) -> None:
    verdicts = run_broken(
        lab, tmp_path, "source_ip", text=drop_lines("-j MASQUERADE"), k="cluster_policy"
    )
    failed_with(verdicts, "cluster_policy_snats", "not SNATed (masquerade missing)")


def test_a_local_service_that_masquerades_fails_the_local_case(lab: Lab, tmp_path: Path) -> None:
    verdicts = run_broken(
        lab, tmp_path, "source_ip", text=local_policy_masquerades, k="local_policy"
    )
    failed_with(
        verdicts,
        "local_policy_keeps_client_ip",
        "instead of the client's IP",
        "external traffic is masqueraded under policy Local",
    )


def test_an_endpoint_missing_from_the_rules_fails_clusterip_and_rules(
    lab: Lab, tmp_path: Path
) -> None:
    gone = drop_lines(r"^-A KUBE-SVC-.*-> 10\.244\.2\.3:8080")
    verdicts = run_broken(lab, tmp_path, "clusterip", text=gone, k="reachable")
    failed_with(
        verdicts,
        "reachable_from_every_pod_and_node",
        "endpoints that never answered: ['echo-node2-1']",
    )
    verdicts = run_broken(lab, tmp_path, "rules", text=gone)
    failed_with(
        verdicts,
        "every_node_forwards_exactly_what_the_services_call_for",
        "(default/echo:http): missing endpoint 10.244.2.3:8080",
    )


def test_skewed_probabilities_fail_the_chi_square(lab: Lab, tmp_path: Path) -> None:
    verdicts = run_broken(lab, tmp_path, "clusterip", text=skewed_probabilities, k="spread")
    failed_with(verdicts, "spread_is_uniform", "the spread over endpoints is not uniform")


def test_a_nodeport_missing_on_one_node_fails(lab: Lab, tmp_path: Path) -> None:
    verdicts = run_broken(
        lab,
        tmp_path,
        "nodeport",
        text=drop_lines(r"^-A KUBE-NODEPORTS .*--dport 30080", node="node2"),
    )
    failed_with(
        verdicts,
        "every_node_answers_and_reaches_other_nodes",
        "node2: ",
        "probes to 192.168.56.12:30080 failed",
    )
    # the failing case carries the diagnosis of the Service it used, taken before teardown
    results = verdicts.attrs["results"]
    summary = results[results["metric"] == "diagnose default/echo"]
    assert len(summary) == 1 and summary["verdict"].iloc[0] == "fail"
    assert "node2 has no rules for the Service" in summary["detail"].iloc[0]
    assert "restart kube-proxy on node2" in summary["detail"].iloc[0]


def test_missing_affinity_fails(lab: Lab, tmp_path: Path) -> None:
    verdicts = run_broken(
        lab, tmp_path, "session_affinity", text=drop_lines(r"-m recent"), k="pins"
    )
    failed_with(
        verdicts, "client_ip_pins_and_the_timeout_expires", "the last 15 of 16 requests reached"
    )


def test_drop_instead_of_reject_fails(lab: Lab, tmp_path: Path) -> None:
    verdicts = run_broken(lab, tmp_path, "no_endpoints", text=reject_becomes_drop, k="refused")
    failed_with(verdicts, "no_endpoints_is_refused_at_once", "expected 3 refused connections")


def test_ignored_internal_traffic_policy_fails(lab: Lab, tmp_path: Path) -> None:
    verdicts = run_broken(lab, tmp_path, "internal_traffic_policy", states=itp_ignored)
    failed_with(
        verdicts,
        "only_local_endpoints_and_nothing_without",
        "has no local endpoint but got answers",
    )


def test_no_hairpin_masquerade_fails(lab: Lab, tmp_path: Path) -> None:
    verdicts = run_broken(
        lab,
        tmp_path,
        "hairpin",
        text=drop_lines(r"^-A KUBE-SEP-\S+ .*-s 10\.244\.\S+ .*KUBE-MARK-MASQ"),
    )
    failed_with(verdicts, "a_pod_reaches_itself_through_its_service", "probes failed")


def test_missing_udp_rules_fail(lab: Lab, tmp_path: Path) -> None:
    verdicts = run_broken(lab, tmp_path, "multi_port_and_udp", text=drop_lines(r"-p udp"))
    failed_with(verdicts, "every_port_and_protocol_answers", "expected pod names")


def test_rules_that_say_otherwise_than_the_kernel_did_fail_the_crosscheck(
    lab: Lab, tmp_path: Path
) -> None:
    """The dump the trace reads names another endpoint than the one the kernel uses (as a
    wrong model of the rules would): every probe that pod answers disagrees."""
    lying = ("sh", "-c", "iptables-save | sed 's/10\\.244\\.2\\.3:8080/10.244.2.99:8080/'")
    verdicts = run_broken(lab, tmp_path, "nodeport", dump_command=lying)
    failed_with(
        verdicts,
        "every_node_answers_and_reaches_other_nodes",
        "echo-node2-1 (10.244.2.3:8080) answered, outside the trace 192.168.56.254 -> ",
        "path: nat KUBE-SERVICES -> KUBE-NODEPORTS",
    )


def test_ignored_source_ranges_fail_the_source_ranges_case(lab: Lab, tmp_path: Path) -> None:
    verdicts = run_broken(
        lab,
        tmp_path,
        "external_addresses",
        text=source_ranges_ignored,
        k="outside_the_ranges",
    )
    failed_with(
        verdicts,
        "a_source_outside_the_ranges_is_refused",
        "answered 5 of 5 probes from 192.168.56.254: expected none",
        "loadBalancerSourceRanges none in the rules, expected 192.168.56.0/25",
    )


@pytest.fixture
def impatient_delete(lab: Lab) -> Iterator[None]:
    """A 'graceful' delete that kills the pod before its endpoint leaves the rules."""
    honest = lab.delete_pod

    def kill_first(name: str, grace_s: float = 1.0, wait: bool = True) -> None:
        lab.kill_pod(name)

    lab.delete_pod = kill_first  # type: ignore[method-assign]
    try:
        yield
    finally:
        lab.delete_pod = honest  # type: ignore[method-assign]


def test_a_graceful_delete_that_kills_first_fails(
    lab: Lab, tmp_path: Path, impatient_delete: None
) -> None:
    verdicts = run_broken(lab, tmp_path, "failover", k="delete_pod and new")
    failed_with(
        verdicts, "failover_under_load[delete_pod-new]", "a graceful delete of", "it must lose none"
    )
