"""A pod's resolv.conf and dig's answer section read into records, from real output of
clusters' pods (tests/data/dns, sources in its SOURCES.md)."""

from __future__ import annotations

import pytest

from conftest import DATA
from kubelab.traffic import dns


def test_an_external_names_cname_comes_before_the_addresses_it_leads_to() -> None:
    records = dns.answers((DATA / "dns" / "externalname.dig").read_text())
    assert records == [
        dns.Record("external-api.s11.svc.cluster.local.", "CNAME", "example.com."),
        dns.Record("example.com.", "A", "172.66.147.243"),
        dns.Record("example.com.", "A", "104.20.23.154"),
    ]


def test_an_alias_inside_the_cluster_leads_to_a_cluster_ip() -> None:
    records = dns.answers((DATA / "dns" / "alias-in-cluster.dig").read_text())
    assert [(r.type, r.data) for r in records] == [
        ("CNAME", "kube-dns.kube-system.svc.cluster.local."), ("A", "10.96.0.10"),
    ]  # fmt: skip


def test_comments_and_blank_lines_are_skipped_and_nothing_is_no_answer() -> None:
    assert dns.answers(";; Warning: Message parser reports malformed message packet.\n\n") == []
    assert dns.answers("") == []


def test_a_line_that_is_no_record_is_refused_with_the_line() -> None:
    with pytest.raises(ValueError, match=r"not a dig answer line.*connection timed out"):
        dns.answers("connection timed out; no servers could be reached\n")


def test_the_command_searches_only_when_asked() -> None:
    assert dns.dig_command("echo") == "dig +noall +answer echo A"
    searched = dns.dig_command("web-0.web", "A", search=True)
    assert searched == "dig +noall +answer +search web-0.web A"


def test_a_pods_resolv_conf_searches_the_cluster_first_with_ndots_5() -> None:
    resolver = dns.resolv_conf((DATA / "dns" / "gce-pod.resolv.conf").read_text())
    assert resolver.nameservers == ["10.0.0.10"]
    cluster = ["default.svc.cluster.local", "svc.cluster.local", "cluster.local"]
    assert resolver.search[:3] == cluster
    assert resolver.search[3:] == ["google.internal", "c.gce_project_id.internal"]
    assert resolver.options == {"ndots": "5"}


def test_the_last_search_line_wins_and_bare_options_read_empty() -> None:
    text = "search a.example\nsearch b.example c.example\noptions ndots:2 rotate\n"
    resolver = dns.resolv_conf(text)
    assert resolver.search == ["b.example", "c.example"]
    assert resolver.options == {"ndots": "2", "rotate": ""}
