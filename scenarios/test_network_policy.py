"""Claim: a NetworkPolicy that denies ingress stops Service traffic to the selected pods.
Needs a policy-enforcing CNI (Calico, Cilium), which only a real cluster runs."""

from __future__ import annotations

import pytest

from kubelab.lab import Lab
from kubelab.pytest_plugin import CaseRecord

pytestmark = pytest.mark.kubelab_requires(
    dataplane="kubernetes",
    reason="NetworkPolicy needs a policy-enforcing CNI; the reference dataplane has none",
)


def test_deny_ingress_stops_service_traffic(lab: Lab, record: CaseRecord) -> None:
    pytest.skip(
        "not written yet for the kubernetes dataplane: its truth table (a client pod per "
        "namespace and label, a NetworkPolicy sent, each pair probed)"
    )
