"""The CNI's configuration for a lab, and MetalLB's address pool.

- flannel: its ConfigMap's `net-conf.json` and the flanneld arguments (the interface of
  the node network; on VMs the management NIC would carry the default route otherwise).
- Calico: the operator's Installation resource (tigera/operator api/v1: linuxDataplane,
  bgp, ipPools with encapsulation, node address autodetection by CIDR).
- Cilium: the Helm values (routing mode, kube-proxy replacement, Kubernetes IPAM so pods
  get the node's podCIDR and not Cilium's 10.0.0.0/8 cluster pool).
- MetalLB: an IPAddressPool and an L2Advertisement (metallb.io/v1beta1).

`interface` is the node network's interface when the substrate knows it (eth1 on the VM
labs); without it each agent picks by address or by its default.
"""

from __future__ import annotations

from typing import Any

from kubelab.dataplanes.kubernetes.kubeadm import API_PORT
from kubelab.dataplanes.kubernetes.options import KubernetesOptions
from kubelab.inventory import Member
from kubelab.spec_common import NetworkSpec

FLANNEL_NAMESPACE = "kube-flannel"
FLANNEL_BACKENDS = {"vxlan": "vxlan", "host-gw": "host-gw"}
CALICO_ENCAPSULATION = {"vxlan": "VXLAN", "ipip": "IPIP", "bgp": "None"}
CALICO_BLOCK_SIZE = 26  # Calico's default IPAM block
METALLB_NAMESPACE = "metallb-system"
METALLB_POOL = "kubelab"


def flannel(
    options: KubernetesOptions, network: NetworkSpec, interface: str | None
) -> dict[str, Any]:
    args = ["--ip-masq", "--kube-subnet-mgr"]
    if interface:
        args.append(f"--iface={interface}")
    return {
        "namespace": FLANNEL_NAMESPACE,
        "net_conf": {
            "Network": str(network.pod_cidr),
            # kubespray turns flannel's nftables rules on beside nftables kube-proxy
            "EnableNFTables": options.proxy_mode == "nftables",
            "Backend": {"Type": FLANNEL_BACKENDS[options.mode]},
        },
        "args": args,
    }


def calico(options: KubernetesOptions, network: NetworkSpec) -> dict[str, Any]:
    mode = options.mode
    return {
        "apiVersion": "operator.tigera.io/v1",
        "kind": "Installation",
        "metadata": {"name": "default"},
        "spec": {
            "calicoNetwork": {
                # BGP peers carry the routes for IPIP and plain BGP; VXLAN needs none
                "bgp": "Disabled" if mode == "vxlan" else "Enabled",
                "linuxDataplane": options.calico_linux_dataplane,
                "nodeAddressAutodetectionV4": {"cidrs": [str(network.node_cidr)]},
                "ipPools": [
                    {
                        "name": "default-ipv4-ippool",
                        "cidr": str(network.pod_cidr),  # inside podSubnet, as the operator demands
                        "blockSize": CALICO_BLOCK_SIZE,
                        "encapsulation": CALICO_ENCAPSULATION[mode],
                        "natOutgoing": "Enabled",
                        "nodeSelector": "all()",
                    }
                ],
            }
        },
    }


def cilium(
    options: KubernetesOptions,
    network: NetworkSpec,
    control_plane: Member,
    interface: str | None,
) -> dict[str, Any]:
    values: dict[str, Any] = {
        "kubeProxyReplacement": not options.kube_proxy,
        # the API server's own address: without kube-proxy nothing forwards the
        # kubernetes Service's ClusterIP before Cilium runs
        "k8sServiceHost": str(control_plane.ip),
        "k8sServicePort": API_PORT,
        "ipam": {"mode": "kubernetes"},
    }
    if options.mode == "tunnel":
        values.update(routingMode="tunnel", tunnelProtocol="vxlan")
    else:
        values.update(
            routingMode="native",
            ipv4NativeRoutingCIDR=str(network.pod_cidr),
            autoDirectNodeRoutes=True,  # every node on one L2 segment
        )
    if interface:
        values["devices"] = [interface]
    return values


def metallb(network: NetworkSpec, interface: str | None) -> list[dict[str, Any]]:
    advertisement: dict[str, Any] = {"ipAddressPools": [METALLB_POOL]}
    if interface:
        advertisement["interfaces"] = [interface]  # never announce on the management NIC
    meta = {"name": METALLB_POOL, "namespace": METALLB_NAMESPACE}
    return [
        {
            "apiVersion": "metallb.io/v1beta1",
            "kind": "IPAddressPool",
            "metadata": meta,
            "spec": {"addresses": [str(network.lb_pool)]},
        },
        {
            "apiVersion": "metallb.io/v1beta1",
            "kind": "L2Advertisement",
            "metadata": meta,
            "spec": advertisement,
        },
    ]
