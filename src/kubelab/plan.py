"""`kubelab plan LAB`: what `up` would do, creating nothing: the substrate's members (VMs,
namespaces or hosts), the inventory and playbooks, and the dataplane's part; for a
Kubernetes lab the rendered kubeadm, kube-proxy, CNI and MetalLB configuration and every
file and image the nodes need. As data (`--format json`, what tests check) or as text
with the configuration in the YAML the nodes receive.
"""

from __future__ import annotations

from typing import Any

import yaml

from kubelab.dataplanes.kubernetes.cluster_plan import ClusterPlan, plan_cluster
from kubelab.dataplanes.kubernetes.options import KubernetesOptions
from kubelab.dataplanes.registry import DATAPLANES
from kubelab.naming import state_dir
from kubelab.spec import LabSpec
from kubelab.substrates.base import Substrate
from kubelab.substrates.registry import SUBSTRATES


def plan_substrate(spec: LabSpec) -> Substrate:
    """The lab's substrate, to read its plan and render its VMs; nothing is made."""
    return SUBSTRATES[spec.substrate.kind](spec, state_dir(spec.lab_id))


def cluster_of(spec: LabSpec) -> ClusterPlan | None:
    """The Kubernetes cluster a lab builds, if it builds one."""
    if not isinstance(spec.dataplane, KubernetesOptions) or spec.dataplane.kubeconfig:
        return None  # the reference dataplane, or a cluster of your own
    return plan_cluster(spec, plan_substrate(spec))


def lab_plan(spec: LabSpec) -> dict[str, Any]:
    substrate = plan_substrate(spec)
    dataplane = DATAPLANES[spec.dataplane.kind](spec, substrate).plan()
    return {
        "lab": spec.name,
        "description": spec.description,
        "substrate": substrate.plan(),
        "dataplane": dataplane,
    }


def _yaml(data: Any) -> str:
    return yaml.safe_dump(data, sort_keys=False, default_flow_style=False, width=100)


def _documents(docs: list[dict[str, Any]]) -> str:
    return "---\n".join(_yaml(d) for d in docs)


def render_text(plan: dict[str, Any]) -> str:
    """The plan for people: the members and playbooks first, then each configuration
    file as the nodes receive it."""
    dataplane = dict(plan["dataplane"])
    sections = [f"lab {plan['lab']}: {plan['description']}".rstrip(": ")]
    sections.append("== substrate\n" + _yaml(plan["substrate"]))
    if "kubeadm_init" not in dataplane:  # no cluster to build: the reference, or your own
        sections.append("== dataplane\n" + _yaml(dataplane))
        return "\n".join(sections)
    init, joins = dataplane.pop("kubeadm_init"), dataplane.pop("kubeadm_join")
    cni, metallb = dataplane.pop("cni"), dataplane.pop("metallb")
    missing = dataplane.pop("missing_artifacts")
    summary = {k: dataplane[k] for k in ("kind", "proxy_mode", "control_plane", "workers")}
    sections += [
        "== dataplane\n" + _yaml({**summary, "versions": dataplane["versions"]}),
        "== playbooks/kubernetes.yml, after site.yml\n" + _yaml(dataplane["plays"]),
        f"== kubeadm-init.yaml on {dataplane['control_plane']} (kubeadm init --config)\n"
        + _documents(init),
    ]
    sections += [
        f"== kubeadm-join.yaml on {node} (token and CA hash made at join time)\n" + _documents(docs)
        for node, docs in joins.items()
    ]
    sections.append(f"== CNI: {cni['name']} {cni['mode']}\n" + _yaml(cni["config"]))
    if metallb:
        sections.append("== MetalLB (L2)\n" + _documents(metallb))
    source = dataplane["package_source"]
    where = (
        f"copied in from {dataplane['artifacts_dir']} (the nodes have no route out)"
        if source == "artifacts"
        else "fetched by each node from its publisher, checked by checksum"
    )
    sections.append(
        f"== files, {where}\n"
        + "\n".join(f"{d['name']}  {d['url']}" for d in dataplane["downloads"])
    )
    also = dataplane["images_also_named_by"]
    sections.append(
        "== images\n"
        + "\n".join(dataplane["images"])
        + (f"\n(and the images {', '.join(also)} names)" if also else "")
    )
    if missing:
        sections.append("== missing from the artifacts folder\n" + "\n".join(missing))
    return "\n".join(sections)
