"""Claim: what kube-proxy writes is exactly what the Services and endpoints call for, on
every node; and its size grows with Services x endpoints in iptables mode, not in nftables
or IPVS mode (the counts are recorded here; `kubelab bench scale` measures the growth)."""

from __future__ import annotations

import re
from typing import Any

from kubelab.checks import DUMP_COMMANDS, audit_nodes
from kubelab.lab import Lab
from kubelab.pytest_plugin import CaseRecord


def _counts(mode: str, dump: str) -> dict[str, int]:
    if mode == "iptables":
        return {
            "rules": len(re.findall(r"^-A ", dump, re.M)),
            "chains": len(re.findall(r"^:", dump, re.M)),
        }
    if mode == "nftables":
        return {
            "rules": dump.count('"rule":'),
            "chains": dump.count('"chain":'),
            "map_elements": len(re.findall(r'"elem"', dump)),
        }
    return {
        "virtual_servers": len(re.findall(r"^-A ", dump, re.M)),
        "real_servers": len(re.findall(r"^-a ", dump, re.M)),
    }


def test_every_node_forwards_exactly_what_the_services_call_for(
    lab: Lab, hosts: dict[str, Any], record: CaseRecord
) -> None:
    tables = audit_nodes(lab, hosts, record)
    mode = lab.dataplane.proxy_mode
    for node, host in hosts.items():
        record.metric(f"frontends_{node}", len(tables[node].frontends), "count")
        for name, value in _counts(mode, host.check_output(DUMP_COMMANDS[mode])).items():
            record.metric(f"{name}_{node}", value, "count", DUMP_COMMANDS[mode])
    record.verdict()
