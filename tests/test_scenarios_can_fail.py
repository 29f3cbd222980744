"""Each scenario must be able to fail: break the lab on purpose, expect FAIL naming the break.

The proxier is wrapped so every sync writes the broken rules, including the syncs the
scenario itself triggers when it switches traffic policy.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import pytest

from conftest import ROOT
from kubelab.dataplanes.reference.proxier import Proxier, ProxierContext
from kubelab.hosts import Runner
from kubelab.lab import Lab
from kubelab.model import ServiceState
from kubelab.pytest_plugin import run_context
from kubelab.results import ResultsWriter
from kubelab.run import run_scenarios

pytestmark = [pytest.mark.root, pytest.mark.lab]

Sabotage = Callable[[str], str]


class SabotagedProxier(Proxier):
    mode = "iptables"

    def __init__(self, inner: Proxier, sabotage: Sabotage) -> None:
        self.inner = inner
        self.sabotage = sabotage

    def render(self, services: list[ServiceState], ctx: ProxierContext) -> str:
        return self.sabotage(self.inner.render(services, ctx))

    def apply(self, runner: Runner, text: str) -> None:
        self.inner.apply(runner, text)


def no_masquerade(text: str) -> str:
    return "\n".join(line for line in text.splitlines() if "-j MASQUERADE" not in line) + "\n"


def local_policy_masquerades(text: str) -> str:
    # an unconditional mark before the jump to KUBE-SVL: Local traffic gets SNATed too
    return re.sub(
        r"^(-A (KUBE-EXT-\S+) -j KUBE-SVL-\S+)$", r"-A \2 -j KUBE-MARK-MASQ\n\1", text, flags=re.M
    )


def one_endpoint_missing(text: str) -> str:
    # node-independent: the rule sending traffic to echo-node2-1 disappears everywhere
    out = [
        line
        for line in text.splitlines()
        if not (line.startswith("-A KUBE-SVC-") and "-> 10.244.2.3:8080" in line)
    ]
    return "\n".join(out) + "\n"


@pytest.fixture(scope="module")
def lab(running_lab: Lab) -> Lab:
    return running_lab


def run_broken(lab: Lab, sabotage: Sabotage, tmp_path: Path) -> pd.DataFrame:
    dataplane = lab.dataplane
    honest = dataplane.proxier  # type: ignore[attr-defined]
    dataplane.proxier = SabotagedProxier(honest, sabotage)  # type: ignore[attr-defined]
    try:
        writer = ResultsWriter(tmp_path / "run", run_context(lab, "broken"))
        run_scenarios(lab, writer, ROOT / "scenarios" / "test_source_ip.py")
    finally:
        dataplane.proxier = honest  # type: ignore[attr-defined]
        lab.dataplane.sync(lab.service_states())
    results = pd.read_parquet(writer.results_path)
    return results[results["metric"] == "verdict"].set_index("case")


def test_missing_masquerade_fails_the_cluster_case(lab: Lab, tmp_path: Path) -> None:
    verdicts = run_broken(lab, no_masquerade, tmp_path)
    assert verdicts.loc["cluster_policy_snats", "verdict"] == "fail"
    assert "not SNATed (masquerade missing)" in verdicts.loc["cluster_policy_snats", "detail"]
    assert verdicts.loc["local_policy_keeps_client_ip", "verdict"] == "pass"


def test_a_local_service_that_masquerades_fails_the_local_case(lab: Lab, tmp_path: Path) -> None:
    verdicts = run_broken(lab, local_policy_masquerades, tmp_path)
    detail = verdicts.loc["local_policy_keeps_client_ip", "detail"]
    assert verdicts.loc["local_policy_keeps_client_ip", "verdict"] == "fail"
    assert "instead of the client's IP" in detail and "traffic was SNATed" in detail
    assert "external traffic is masqueraded under policy Local" in detail


def test_an_endpoint_missing_from_the_rules_fails(lab: Lab, tmp_path: Path) -> None:
    verdicts = run_broken(lab, one_endpoint_missing, tmp_path)
    detail = verdicts.loc["cluster_policy_snats", "detail"]
    assert verdicts.loc["cluster_policy_snats", "verdict"] == "fail"
    assert "pods that never answered: ['echo-node2-1']" in detail
    assert "(default/echo:http): missing endpoint 10.244.2.3:8080" in detail
