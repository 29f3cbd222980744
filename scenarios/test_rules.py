"""Claim: what kube-proxy writes is exactly what the Services and endpoints call for, on
every node; and its size grows with Services x endpoints in iptables mode, not in nftables
or IPVS mode (the counts are recorded here; `kubelab bench scale` measures the growth)."""

from __future__ import annotations

from typing import Any

from kubelab.checks import audit_nodes
from kubelab.lab import Lab
from kubelab.pytest_plugin import CaseRecord


def test_every_node_forwards_exactly_what_the_services_call_for(
    lab: Lab, hosts: dict[str, Any], record: CaseRecord
) -> None:
    tables = audit_nodes(lab, hosts, record)
    dump = " ".join(lab.dataplane.dump_command)
    for node in hosts:
        record.metric(f"frontends_{node}", len(tables[node].frontends), "count")
        for name, value in lab.dataplane.count_rules(node).items():
            record.metric(f"{name}_{node}", value, "count", dump)
    record.verdict()
