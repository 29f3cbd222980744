"""Every version the real-cluster path installs, pinned in one place, with where each pin
was read (../shared/REAL-CLUSTERS.md gathers the sources).

The set is kubespray v2.31.0's (Kubernetes 1.35.4, Calico 3.31.5, Cilium 1.19.3, flannel
0.28.4, containerd 2.2.3): versions its CI runs together. kubeadm 1.35's own pins
(`cmd/kubeadm/app/constants/constants.go`: PauseVersion 3.10.1, etcd 3.6.6-0, CoreDNS
v1.13.1) decide the pause image containerd keeps. Calico's nftables dataplane is GA from
3.31, which nftables kube-proxy needs. runc, the CNI plugins and Helm are releases of
late 2025 matching containerd 2.2 and Cilium 1.19; their exact pins are unconfirmed here
(no route to the publishers from this machine) and are checked by checksum where fetched.
"""

from __future__ import annotations

from dataclasses import dataclass

KUBERNETES = "1.35.4"
KUBERNETES_PACKAGE = f"{KUBERNETES}-1.1"  # pkgs.k8s.io's Debian revision
KUBERNETES_MINOR = ".".join(KUBERNETES.split(".")[:2])
PAUSE = "3.10.1"
CONTAINERD = "2.2.3"
RUNC = "1.3.3"
CNI_PLUGINS = "1.8.0"
FLANNEL = "0.28.4"
CALICO = "3.31.5"
CILIUM = "1.19.3"
HELM = "3.19.0"
METALLB = "0.15.3"
AGNHOST = "2.56"  # k/k test/utils/image/manifest.go since 1.34 (PR #132117)

AGNHOST_IMAGE = f"registry.k8s.io/e2e-test-images/agnhost:{AGNHOST}"
PAUSE_IMAGE = f"registry.k8s.io/pause:{PAUSE}"
PACKAGE_REPOSITORY = f"https://pkgs.k8s.io/core:/stable:/v{KUBERNETES_MINOR}/deb/"


@dataclass(frozen=True)
class Download:
    """One file a node needs, fetched from its publisher and checked against the
    publisher's own checksum file (`checksum_url`)."""

    name: str  # the file's name in the artifacts folder
    url: str
    checksum_url: str

    @property
    def checksum(self) -> str:
        """Ansible get_url's form: the algorithm and where the checksum list is."""
        return f"sha256:{self.checksum_url}"


def _github(repo: str, tag: str, asset: str, sums: str) -> Download:
    base = f"https://github.com/{repo}/releases/download/{tag}"
    return Download(asset, f"{base}/{asset}", f"{base}/{sums}")


# The container runtime, as containerd's getting-started guide installs it: the release
# tarball (binaries and systemd unit), runc and the CNI plugins.
CONTAINERD_FILES = (
    _github(
        "containerd/containerd",
        f"v{CONTAINERD}",
        f"containerd-{CONTAINERD}-linux-amd64.tar.gz",
        f"containerd-{CONTAINERD}-linux-amd64.tar.gz.sha256sum",
    ),
    _github("opencontainers/runc", f"v{RUNC}", "runc.amd64", "runc.sha256sum"),
    _github(
        "containernetworking/plugins",
        f"v{CNI_PLUGINS}",
        f"cni-plugins-linux-amd64-v{CNI_PLUGINS}.tgz",
        f"cni-plugins-linux-amd64-v{CNI_PLUGINS}.tgz.sha256",
    ),
)
CONTAINERD_UNIT = Download(
    "containerd.service",
    f"https://raw.githubusercontent.com/containerd/containerd/v{CONTAINERD}/containerd.service",
    "",  # a text file from the tagged tree; the tag pins it
)

# Manifests and charts the CNI, MetalLB roles apply
FLANNEL_MANIFEST = Download(
    "kube-flannel.yml",
    f"https://github.com/flannel-io/flannel/releases/download/v{FLANNEL}/kube-flannel.yml",
    "",
)
CALICO_MANIFESTS = tuple(
    Download(
        name,
        f"https://raw.githubusercontent.com/projectcalico/calico/v{CALICO}/manifests/{name}",
        "",
    )
    for name in ("operator-crds.yaml", "tigera-operator.yaml")
)
CILIUM_CHART = Download(f"cilium-{CILIUM}.tgz", f"https://helm.cilium.io/cilium-{CILIUM}.tgz", "")
HELM_TARBALL = Download(
    f"helm-v{HELM}-linux-amd64.tar.gz",
    f"https://get.helm.sh/helm-v{HELM}-linux-amd64.tar.gz",
    f"https://get.helm.sh/helm-v{HELM}-linux-amd64.tar.gz.sha256sum",
)
METALLB_MANIFEST = Download(
    "metallb-native.yaml",
    f"https://raw.githubusercontent.com/metallb/metallb/v{METALLB}/config/manifests/metallb-native.yaml",
    "",
)
