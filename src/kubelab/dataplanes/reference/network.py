"""The reference pod network: a cni0 bridge per node, one namespace per pod, host-gw routes.

Like flannel's host-gw backend: every node owns a slice of the pod CIDR, its pods hang off a
bridge `cni0` holding the slice's first address, and every node routes the other nodes'
slices via their node IPs. Hairpin is on for every pod port, so a pod can reach itself
through a Service, as with the bridge CNI plugin's `hairpinMode: true`.
"""

from __future__ import annotations

import hashlib

from pyroute2 import IPRoute

from kubelab import netns_util
from kubelab.topology import NodeInfo, PodInfo, Topology

POD_BRIDGE = "cni0"
BRPORT_HAIRPIN = 1  # IFLA_BRPORT_MODE value for hairpin


def host_veth_name(pod: PodInfo) -> str:
    """The node-side veth of a pod, like the bridge plugin's vethXXXXXXXX (15 chars max)."""
    return "veth" + hashlib.sha256(pod.netns.encode()).hexdigest()[:8]


def build_node_bridge(node: NodeInfo) -> None:
    with IPRoute(netns=node.netns) as ipr:
        ipr.link("add", ifname=POD_BRIDGE, kind="bridge")
        idx = ipr.link_lookup(ifname=POD_BRIDGE)[0]
        ipr.addr("add", index=idx, address=str(node.pod_gateway), prefixlen=node.pod_cidr.prefixlen)
        ipr.link("set", index=idx, state="up")


def build_pod(pod: PodInfo, node: NodeInfo) -> None:
    netns_util.create_netns(pod.netns)
    veth = host_veth_name(pod)
    with IPRoute(netns=node.netns) as ipr:
        ipr.link("add", ifname=veth, kind="veth", peer={"ifname": "eth0", "net_ns_fd": pod.netns})
        port = ipr.link_lookup(ifname=veth)[0]
        bridge = ipr.link_lookup(ifname=POD_BRIDGE)[0]
        ipr.link("set", index=port, master=bridge, state="up")
        ipr.brport("set", index=port, mode=BRPORT_HAIRPIN)
    with IPRoute(netns=pod.netns) as ipr:
        eth0 = ipr.link_lookup(ifname="eth0")[0]
        ipr.addr("add", index=eth0, address=str(pod.ip), prefixlen=node.pod_cidr.prefixlen)
        ipr.link("set", index=eth0, state="up")
        ipr.link("set", index=ipr.link_lookup(ifname="lo")[0], state="up")
        ipr.route("add", dst="0.0.0.0/0", gateway=str(node.pod_gateway))


def add_host_gw_routes(topology: Topology) -> None:
    """On every node, a route to each other node's pod slice via that node's IP."""
    for node in topology.nodes:
        with IPRoute(netns=node.netns) as ipr:
            for other in topology.nodes:
                if other.name != node.name:
                    ipr.route("add", dst=str(other.pod_cidr), gateway=str(other.ip))


def build(topology: Topology) -> None:
    for node in topology.nodes:
        build_node_bridge(node)
        for pod in topology.pods_on(node.name):
            build_pod(pod, node)
    add_host_gw_routes(topology)
