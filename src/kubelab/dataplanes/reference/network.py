"""The reference pod network: a cni0 bridge per node, one namespace per pod, and routes
between nodes either direct (host-gw) or through a VXLAN overlay (flannel-like).

- host-gw (flannel's host-gw backend): every node routes each other node's pod slice via
  that node's IP on the node network.
- vxlan (flannel's vxlan backend): every node has `flannel.1` (VNI 1, UDP 8472, MTU 1450,
  no learning) holding its slice's network address as a /32; for each other node a route
  `slice via slice.0 dev flannel.1 onlink`, a permanent neighbour entry for slice.0 and a
  static FDB entry sending that MAC to the node's IP. Pods get MTU 1450.

Hairpin is on for every pod port, so a pod can reach itself through a Service, as with the
bridge CNI plugin's `hairpinMode: true`.
"""

from __future__ import annotations

import errno
import hashlib

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError
from pyroute2.netlink.rtnl.ndmsg import NUD_PERMANENT

from kubelab import netns_util
from kubelab.topology import NodeInfo, PodInfo, Topology

POD_BRIDGE = "cni0"
VXLAN_DEVICE = "flannel.1"
VXLAN_VNI = 1
VXLAN_PORT = 8472
VXLAN_MTU = 1450
BRPORT_HAIRPIN = 1  # IFLA_BRPORT_MODE value for hairpin
RTNH_F_ONLINK = 4


def host_veth_name(pod: PodInfo) -> str:
    """The node-side veth of a pod, like the bridge plugin's vethXXXXXXXX (15 chars max)."""
    return "veth" + hashlib.sha256(pod.netns.encode()).hexdigest()[:8]


def vxlan_mac(node: NodeInfo) -> str:
    """A stable locally administered MAC for the node's flannel.1."""
    return f"0e:6b:6c:00:{node.index // 256:02x}:{node.index % 256:02x}"


def pod_mtu(mode: str) -> int:
    return VXLAN_MTU if mode == "vxlan" else 1500


def build_node_bridge(node: NodeInfo, mode: str) -> None:
    with IPRoute(netns=node.netns) as ipr:
        ipr.link("add", ifname=POD_BRIDGE, kind="bridge", mtu=pod_mtu(mode))
        idx = ipr.link_lookup(ifname=POD_BRIDGE)[0]
        ipr.addr("add", index=idx, address=str(node.pod_gateway), prefixlen=node.pod_cidr.prefixlen)
        ipr.link("set", index=idx, state="up")


def forget_neighbour(pod: PodInfo, node: NodeInfo) -> None:
    """Drop the node's ARP entry for the pod's IP. A new pod may get an address a deleted pod
    had; a cached entry would keep sending to the old MAC for up to ~45 s."""
    with IPRoute(netns=node.netns) as ipr:
        bridge = ipr.link_lookup(ifname=POD_BRIDGE)[0]
        for entry in ipr.get_neighbours(dst=str(pod.ip), ifindex=bridge):
            if entry.get_attr("NDA_DST") != str(pod.ip):
                continue
            try:
                ipr.neigh("del", dst=str(pod.ip), ifindex=bridge)
            except NetlinkError as exc:
                if exc.code != errno.ENOENT:  # gone already: the kernel expired it
                    raise


def build_pod(pod: PodInfo, node: NodeInfo, mode: str) -> None:
    forget_neighbour(pod, node)
    netns_util.create_netns(pod.netns)
    veth = host_veth_name(pod)
    mtu = pod_mtu(mode)
    with IPRoute(netns=node.netns) as ipr:
        ipr.link(
            "add",
            ifname=veth,
            kind="veth",
            mtu=mtu,
            peer={"ifname": "eth0", "net_ns_fd": pod.netns, "mtu": mtu},
        )
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


def remove_pod(pod: PodInfo, node: NodeInfo) -> None:
    """Deleting the namespace deletes its veth, whose peer leaves the bridge with it."""
    netns_util.remove_netns(pod.netns)
    forget_neighbour(pod, node)


def add_host_gw_routes(topology: Topology) -> None:
    """On every node, a route to each other node's pod slice via that node's IP."""
    for node in topology.nodes:
        with IPRoute(netns=node.netns) as ipr:
            for other in topology.nodes:
                if other.name != node.name:
                    ipr.route("add", dst=str(other.pod_cidr), gateway=str(other.ip))


def add_vxlan_overlay(topology: Topology) -> None:
    for node in topology.nodes:
        with IPRoute(netns=node.netns) as ipr:
            ipr.link(
                "add",
                ifname=VXLAN_DEVICE,
                kind="vxlan",
                vxlan_id=VXLAN_VNI,
                vxlan_port=VXLAN_PORT,
                vxlan_local=str(node.ip),
                vxlan_learning=0,
                address=vxlan_mac(node),
                mtu=VXLAN_MTU,
            )
            dev = ipr.link_lookup(ifname=VXLAN_DEVICE)[0]
            ipr.addr("add", index=dev, address=str(node.pod_cidr.network_address), prefixlen=32)
            ipr.link("set", index=dev, state="up")
            for other in topology.nodes:
                if other.name == node.name:
                    continue
                gateway = str(other.pod_cidr.network_address)
                ipr.neigh(
                    "add", dst=gateway, lladdr=vxlan_mac(other), ifindex=dev, state=NUD_PERMANENT
                )
                ipr.fdb(
                    "add",
                    ifindex=dev,
                    lladdr=vxlan_mac(other),
                    dst=str(other.ip),
                    state=NUD_PERMANENT,
                )
                ipr.route(
                    "add", dst=str(other.pod_cidr), gateway=gateway, oif=dev, flags=RTNH_F_ONLINK
                )


def node_addresses(node: NodeInfo, mode: str) -> set[str]:
    """Every address a packet masqueraded on this node can carry as its source."""
    out = {str(node.ip), str(node.pod_gateway)}
    if mode == "vxlan":
        out.add(str(node.pod_cidr.network_address))
    return out


def build(topology: Topology, pods: list[PodInfo], mode: str) -> None:
    for node in topology.nodes:
        build_node_bridge(node, mode)
    for pod in pods:
        build_pod(pod, topology.node(pod.node), mode)
    if mode == "vxlan":
        add_vxlan_overlay(topology)
    else:
        add_host_gw_routes(topology)
