"""kubeadm's configuration for a lab: InitConfiguration and ClusterConfiguration (kubeadm
v1beta4), KubeProxyConfiguration (kubeproxy.config.k8s.io/v1alpha1), KubeletConfiguration,
and a JoinConfiguration per worker. Field names and shapes follow the Go types in k/k
`cmd/kubeadm/app/apis/kubeadm/v1beta4/types.go` and
`staging/src/k8s.io/kube-proxy/config/v1alpha1/types.go`; v1beta4's extra arguments are
lists of {name, value}.

The first node of the spec is the control plane. It keeps no taint, so pods spread over
every node as the scenarios expect. Join credentials exist only once the control plane
does: a worker's JoinConfiguration carries Ansible expressions the workers role fills
in on the spot (a fresh token, the CA's public-key hash).
"""

from __future__ import annotations

from typing import Any

from kubelab.dataplanes.kubernetes import versions
from kubelab.dataplanes.kubernetes.options import KubernetesOptions
from kubelab.inventory import Member
from kubelab.spec_common import NetworkSpec

KUBEADM_API = "kubeadm.k8s.io/v1beta4"
KUBE_PROXY_API = "kubeproxy.config.k8s.io/v1alpha1"
KUBELET_API = "kubelet.config.k8s.io/v1beta1"
CRI_SOCKET = "unix:///run/containerd/containerd.sock"
API_PORT = 6443
METRICS_PORT = 10249  # kube-proxy's /metrics, bound on every address for the harness
# filled in by the workers role (playbooks/roles/workers) on the control plane
JOIN_TOKEN = "{{ workers_join_token }}"
CA_CERT_HASH = "{{ workers_ca_cert_hash }}"


def _args(**values: str) -> list[dict[str, str]]:
    """v1beta4's []Arg: one {name, value} per flag, flag names with dashes."""
    return [{"name": k.replace("_", "-"), "value": v} for k, v in values.items()]


def _registration(node: Member, taints: bool) -> dict[str, Any]:
    out: dict[str, Any] = {
        "name": node.name,
        "criSocket": CRI_SOCKET,
        "kubeletExtraArgs": _args(node_ip=str(node.ip)),
    }
    if not taints:
        out["taints"] = []  # an empty list: no control-plane taint
    return out


def init_configuration(control_plane: Member, options: KubernetesOptions) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "apiVersion": KUBEADM_API,
        "kind": "InitConfiguration",
        "localAPIEndpoint": {"advertiseAddress": str(control_plane.ip), "bindPort": API_PORT},
        "nodeRegistration": _registration(control_plane, taints=False),
    }
    if not options.kube_proxy:
        doc["skipPhases"] = ["addon/kube-proxy"]  # Cilium's kube-proxy-free install
    return doc


def cluster_configuration(
    lab_id: str, control_plane: Member, network: NetworkSpec
) -> dict[str, Any]:
    return {
        "apiVersion": KUBEADM_API,
        "kind": "ClusterConfiguration",
        "clusterName": f"kubelab-{lab_id}",
        "kubernetesVersion": f"v{versions.KUBERNETES}",
        "controlPlaneEndpoint": f"{control_plane.ip}:{API_PORT}",
        "networking": {
            "podSubnet": str(network.pod_cidr),
            "serviceSubnet": str(network.service_cidr),
            "dnsDomain": "cluster.local",
        },
        # kubelab reaches a VM lab's API server through an SSH tunnel to the control
        # plane's loopback: the serving certificate must name 127.0.0.1
        "apiServer": {"certSANs": ["127.0.0.1", str(control_plane.ip)]},
        # each node's podCIDR is the spec's node slice (flannel and Cilium's kubernetes
        # IPAM use it; Calico hands out its own blocks)
        "controllerManager": {"extraArgs": _args(node_cidr_mask_size=str(network.node_pod_prefix))},
    }


def kube_proxy_configuration(options: KubernetesOptions, network: NetworkSpec) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "apiVersion": KUBE_PROXY_API,
        "kind": "KubeProxyConfiguration",
        "mode": options.proxy_mode,
        "clusterCIDR": str(network.pod_cidr),
        "metricsBindAddress": f"0.0.0.0:{METRICS_PORT}",
    }
    if options.proxy_mode == "ipvs":
        # strictARP: MetalLB's L2 mode needs it, or every node answers ARP for kube-ipvs0
        doc["ipvs"] = {"scheduler": options.scheduler, "strictARP": True}
    return doc


def kubelet_configuration() -> dict[str, Any]:
    return {"apiVersion": KUBELET_API, "kind": "KubeletConfiguration", "cgroupDriver": "systemd"}


def join_configuration(worker: Member, control_plane: Member) -> dict[str, Any]:
    return {
        "apiVersion": KUBEADM_API,
        "kind": "JoinConfiguration",
        "discovery": {
            "bootstrapToken": {
                "apiServerEndpoint": f"{control_plane.ip}:{API_PORT}",
                "token": JOIN_TOKEN,
                "caCertHashes": [CA_CERT_HASH],
            }
        },
        "nodeRegistration": _registration(worker, taints=True),
    }


def init_documents(
    lab_id: str, nodes: tuple[Member, ...], options: KubernetesOptions, network: NetworkSpec
) -> list[dict[str, Any]]:
    """What `kubeadm init --config` reads on the control plane, in order."""
    control_plane = nodes[0]
    docs = [
        init_configuration(control_plane, options),
        cluster_configuration(lab_id, control_plane, network),
        kubelet_configuration(),
    ]
    if options.kube_proxy:
        docs.insert(2, kube_proxy_configuration(options, network))
    return docs


def join_documents(nodes: tuple[Member, ...]) -> dict[str, list[dict[str, Any]]]:
    """Per worker, what `kubeadm join --config` reads."""
    return {w.name: [join_configuration(w, nodes[0])] for w in nodes[1:]}
