"""kube-proxy's chain names, checked against names seen in real cluster dumps."""

from __future__ import annotations

from kubelab import naming


def test_service_chain_names_match_real_kube_proxy() -> None:
    assert naming.svc_chain("default/kubernetes:https", "TCP") == "KUBE-SVC-NPX46M4PTMTKRN6Y"
    assert naming.svc_chain("kube-system/kube-dns:dns", "UDP") == "KUBE-SVC-TCOU7JCQXEZGVUNU"


def test_endpoint_chain_name_matches_real_kube_proxy() -> None:
    assert (
        naming.sep_chain("default/kubernetes:https", "TCP", "192.168.100.1:6443")
        == "KUBE-SEP-EMMXYKITEUOEZBH3"
    )


def test_policy_chains_share_the_service_hash() -> None:
    name = "default/echo:http"
    suffix = naming.svc_chain(name, "TCP").removeprefix("KUBE-SVC-")
    assert naming.ext_chain(name, "TCP") == f"KUBE-EXT-{suffix}"
    assert naming.svl_chain(name, "TCP") == f"KUBE-SVL-{suffix}"
    assert naming.fw_chain(name, "TCP") == f"KUBE-FW-{suffix}"


def test_probabilities_are_printed_like_kube_proxy() -> None:
    assert [naming.probability(i, 3) for i in range(2)] == ["0.3333333333", "0.5000000000"]
