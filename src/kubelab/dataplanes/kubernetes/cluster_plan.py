"""What building a lab's Kubernetes cluster takes: the plays and their roles, the rendered
kubeadm, kube-proxy and CNI configuration, and every file and image the nodes need.

`playbook_vars()` is everything playbooks/kubernetes.yml reads, so that the plan people
review (`kubelab plan`) is exactly what the roles apply: the roles render nothing of
their own. Where the nodes have no route out (the VM labs), every file comes from an
artifacts folder on this machine and every image from image archives in it; elsewhere
the roles fetch each file from its publisher, checked against the publisher's checksum.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from kubelab.dataplanes.kubernetes import cni, kubeadm, versions
from kubelab.dataplanes.kubernetes.options import KubernetesOptions
from kubelab.inventory import Member
from kubelab.spec_common import NetworkSpec
from kubelab.vm.ansible_play import playbook_plays

if TYPE_CHECKING:
    from kubelab.spec import LabSpec
    from kubelab.substrates.base import Substrate

ARTIFACTS_ROOT = Path(os.environ.get("KUBELAB_CACHE", "/var/cache/kubelab")) / "kubernetes"
KUBEADM_IMAGES = ("kube-apiserver", "kube-controller-manager", "kube-scheduler")
ETCD_IMAGE = "registry.k8s.io/etcd:3.6.6-0"  # kubeadm 1.35's DefaultEtcdVersion
COREDNS_IMAGE = "registry.k8s.io/coredns/coredns:v1.13.1"  # kubeadm 1.35's CoreDNSVersion


@dataclass(frozen=True)
class ClusterPlan:
    lab_id: str
    options: KubernetesOptions
    nodes: tuple[Member, ...]
    network: NetworkSpec
    interface: str | None  # the node network's interface, where the substrate knows it
    package_source: str  # "internet" | "artifacts"
    artifacts_dir: Path
    kubeconfig: Path  # where the control plane's admin.conf lands on this machine

    @property
    def control_plane(self) -> Member:
        return self.nodes[0]

    @property
    def workers(self) -> tuple[Member, ...]:
        return self.nodes[1:]

    # --- rendered configuration ----------------------------------------------------------------

    def init_documents(self) -> list[dict[str, Any]]:
        return kubeadm.init_documents(self.lab_id, self.nodes, self.options, self.network)

    def join_documents(self) -> dict[str, list[dict[str, Any]]]:
        return kubeadm.join_documents(self.nodes)

    def cni_config(self) -> dict[str, Any]:
        o = self.options
        if o.cni == "flannel":
            return cni.flannel(o, self.network, self.interface)
        if o.cni == "calico":
            return cni.calico(o, self.network)
        return cni.cilium(o, self.network, self.control_plane, self.interface)

    def metallb_documents(self) -> list[dict[str, Any]]:
        return cni.metallb(self.network, self.interface) if self.options.metallb else []

    # --- what the nodes need -------------------------------------------------------------------

    def downloads(self) -> list[versions.Download]:
        """Files the roles fetch (or copy from artifacts/files)."""
        files = [*versions.CONTAINERD_FILES, versions.CONTAINERD_UNIT]
        if self.options.cni == "flannel":
            files.append(versions.FLANNEL_MANIFEST)
        elif self.options.cni == "calico":
            files += versions.CALICO_MANIFESTS
        else:
            files += [versions.HELM_TARBALL, versions.CILIUM_CHART]
        if self.options.metallb:
            files.append(versions.METALLB_MANIFEST)
        return files

    def manifests_pending(self) -> list[str]:
        """Manifests not in the artifacts folder yet: the images they name are not
        listed by `images()` until they are."""
        return [
            d.name
            for d in self.downloads()
            if d.name.endswith((".yaml", ".yml"))
            and not (self.artifacts_dir / "files" / d.name).is_file()
        ]

    def images(self) -> list[str]:
        """Images by reference: kubeadm's, the workload's, and those the CNI and MetalLB
        manifests in the artifacts folder name (listed once those files are there)."""
        k = f"v{versions.KUBERNETES}"
        out = [f"registry.k8s.io/{name}:{k}" for name in KUBEADM_IMAGES]
        if self.options.kube_proxy:
            out.append(f"registry.k8s.io/kube-proxy:{k}")
        out += [ETCD_IMAGE, COREDNS_IMAGE, versions.PAUSE_IMAGE, versions.AGNHOST_IMAGE]
        for d in self.downloads():
            path = self.artifacts_dir / "files" / d.name
            if d.name.endswith((".yaml", ".yml")) and path.is_file():
                out += [i for i in manifest_images(path.read_text()) if i not in out]
        return out

    def missing_artifacts(self) -> list[str]:
        """What the artifacts folder lacks, one line each (empty when the nodes fetch
        for themselves)."""
        if self.package_source != "artifacts":
            return []
        root = self.artifacts_dir
        lines = [
            f"{root}/files/{d.name} is missing; `kubelab fetch` downloads {d.url}"
            for d in self.downloads()
            if not (root / "files" / d.name).is_file()
        ]
        debs = {p.name.split("_")[0] for p in (root / "debs").glob("*.deb")}
        absent = [p for p in ("kubeadm", "kubelet", "kubectl") if p not in debs]
        if absent:
            lines.append(
                f"{root}/debs has no {', '.join(absent)}; on a Debian 12 machine with "
                f"{versions.PACKAGE_REPOSITORY}, apt-get install --download-only "
                f"kubeadm={versions.KUBERNETES_PACKAGE} kubelet={versions.KUBERNETES_PACKAGE} "
                f"kubectl={versions.KUBERNETES_PACKAGE} and copy /var/cache/apt/archives/*.deb"
            )
        if not any((root / "images").glob("*.tar")):
            lines.append(
                f"{root}/images has no image archives; save each image `kubelab plan` lists "
                "there (skopeo copy docker://IMAGE docker-archive:FILE.tar:IMAGE)"
            )
        return lines

    def collect_commands(self) -> dict[str, str]:
        """What playbooks/roles/collect adds on each node of this cluster: kube-proxy's
        metrics and log, the pod network's routes and links, and, with Cilium, its
        service and BPF load-balancer lists (what it forwards instead of kube-proxy)."""

        def in_container(name: str, command: str) -> str:
            return f"sh -c 'crictl exec $(crictl ps --name {name} -q | head -n1) {command}'"

        out = {
            "ip-route.txt": "ip route",
            "ip-link.txt": "ip -d link show",
        }
        if self.options.kube_proxy:
            metrics = f"http://127.0.0.1:{kubeadm.METRICS_PORT}/metrics"
            out["kube-proxy-metrics.txt"] = (
                f"python3 -c \"import urllib.request as u; print(u.urlopen('{metrics}').read()"
                '.decode())"'
            )
            out["kube-proxy.log"] = (
                "sh -c 'crictl logs $(crictl ps -a --name kube-proxy -q | head -n1) 2>&1'"
            )
        if self.options.cni == "cilium":
            out["cilium-service-list.txt"] = in_container("cilium-agent", "cilium-dbg service list")
            out["cilium-bpf-lb-list.txt"] = in_container("cilium-agent", "cilium-dbg bpf lb list")
        if self.options.cni == "flannel":
            out["flannel-subnet.env"] = "cat /run/flannel/subnet.env"
        return out

    # --- for the playbooks ---------------------------------------------------------------------

    def playbook_vars(self) -> dict[str, Any]:
        """Everything playbooks/kubernetes.yml reads (its roles' defaults hold none of it)."""
        o = self.options
        return {
            "kubernetes_control_plane": self.control_plane.name,
            "kubernetes_version": versions.KUBERNETES,
            "kubernetes_package_version": versions.KUBERNETES_PACKAGE,
            "kubernetes_repository": versions.PACKAGE_REPOSITORY,
            "kubernetes_package_source": self.package_source,
            "kubernetes_artifacts_dir": str(self.artifacts_dir),
            "kubernetes_kubeconfig_dest": str(self.kubeconfig),
            "kubernetes_downloads": {d.name: _download(d) for d in self.downloads()},
            "containerd_pause_image": versions.PAUSE_IMAGE,
            "kubeadm_init_documents": self.init_documents(),
            "kubeadm_join_documents": self.join_documents(),
            "cni_name": o.cni,
            "cni_mode": o.mode,
            "cni_config": self.cni_config(),
            "cilium_version": versions.CILIUM,
            "metallb_documents": self.metallb_documents(),
            "collect_cluster_commands": self.collect_commands(),
        }

    def as_dict(self) -> dict[str, Any]:
        """The plan as data: `kubelab plan --format json` prints it."""
        return {
            "control_plane": self.control_plane.name,
            "workers": [w.name for w in self.workers],
            "versions": {
                "kubernetes": versions.KUBERNETES,
                "containerd": versions.CONTAINERD,
                self.options.cni: _cni_version(self.options.cni),
                **({"metallb": versions.METALLB} if self.options.metallb else {}),
                "agnhost": versions.AGNHOST,
            },
            "plays": playbook_plays("kubernetes.yml"),
            "kubeadm_init": self.init_documents(),
            "kubeadm_join": self.join_documents(),
            "cni": {
                "name": self.options.cni,
                "mode": self.options.mode,
                "config": self.cni_config(),
            },
            "metallb": self.metallb_documents(),
            "package_source": self.package_source,
            "artifacts_dir": str(self.artifacts_dir),
            "downloads": [_download(d) for d in self.downloads()],
            "images": self.images(),
            "images_also_named_by": self.manifests_pending()
            + ([f"cilium-{versions.CILIUM}.tgz"] if self.options.cni == "cilium" else []),
        }


def _cni_version(name: str) -> str:
    return {"flannel": versions.FLANNEL, "calico": versions.CALICO, "cilium": versions.CILIUM}[name]


def _download(d: versions.Download) -> dict[str, str]:
    return {"name": d.name, "url": d.url, "checksum": d.checksum if d.checksum_url else ""}


def manifest_images(text: str) -> list[str]:
    """Every `image:` a multi-document manifest names, in order, once each."""
    found: list[str] = []

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                if key == "image" and isinstance(value, str) and value not in found:
                    found.append(value)
                else:
                    walk(value)
        elif isinstance(node, list):
            for item in node:
                walk(item)

    for doc in yaml.safe_load_all(text):
        walk(doc)
    return found


def plan_cluster(spec: LabSpec, substrate: Substrate) -> ClusterPlan:
    """The cluster `up` would build for this lab on this substrate's nodes."""
    options = spec.dataplane
    assert isinstance(options, KubernetesOptions)
    artifacts = (
        Path(options.artifacts) if options.artifacts else ARTIFACTS_ROOT / versions.KUBERNETES
    )
    offline = options.artifacts is not None or not substrate.nodes_route_out
    return ClusterPlan(
        lab_id=spec.lab_id,
        options=options,
        nodes=substrate.inventory().nodes,
        network=spec.network,
        interface=substrate.node_interface(),
        package_source="artifacts" if offline else "internet",
        artifacts_dir=artifacts,
        kubeconfig=substrate.state_dir / "kubeconfig",
    )
