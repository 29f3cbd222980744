"""The reference pod network, built on each node through its Runner with `ip -batch`: a
cni0 bridge per node, one namespace per pod, and routes between nodes either direct
(host-gw) or through a VXLAN overlay (flannel-like).

- host-gw (flannel's host-gw backend): every node routes each other node's pod slice via
  that node's IP on the node network.
- vxlan (flannel's vxlan backend): every node has `flannel.1` (VNI 1, UDP 8472, MTU 1450,
  no learning) holding its slice's network address as a /32; for each other node a route
  `slice via slice.0 dev flannel.1 onlink`, a permanent neighbour entry for slice.0 and a
  static FDB entry sending that MAC to the node's IP. Pods get MTU 1450.

Hairpin is on for every pod port, so a pod can reach itself through a Service, as with the
bridge CNI plugin's `hairpinMode: true`. Only iproute2 and sysctl run on the node.
"""

from __future__ import annotations

import hashlib
import ipaddress
from collections.abc import Sequence

from kubelab.hosts import Runner, interface_of
from kubelab.naming import lab_prefix
from kubelab.topology import NodeInfo, PodInfo

POD_BRIDGE = "cni0"
VXLAN_DEVICE = "flannel.1"
VXLAN_VNI = 1
VXLAN_PORT = 8472
VXLAN_MTU = 1450
TOOLS = ("ip", "bridge", "sysctl")
SYSCTLS = {"net.ipv4.ip_forward": "1"}
# bridged pod-to-pod replies must pass netfilter's reverse NAT; absent (and not needed)
# where bridge netfilter is not loaded
OPTIONAL_SYSCTLS = {"net.bridge.bridge-nf-call-iptables": "1"}
SERVICE_ROUTE_MARK = "service-route"  # in the member folder: the route kubelab added


# args: prefix length, gateway, then (pod namespace, pod address) pairs
POD_SIDE = """plen=$1 gw=$2; shift 2
while [ $# -gt 0 ]; do
  printf '%s\\n' "addr add $2/$plen dev eth0" "link set eth0 up" "link set lo up" \\
    "route add default via $gw" | nsenter --net="/run/netns/$1" ip -batch - || exit 1
  shift 2
done"""


def host_veth_name(pod: PodInfo) -> str:
    """The node-side veth of a pod, like the bridge plugin's vethXXXXXXXX (15 chars max)."""
    return "veth" + hashlib.sha256(pod.netns.encode()).hexdigest()[:8]


def vxlan_mac(node: NodeInfo) -> str:
    """A stable locally administered MAC for the node's flannel.1."""
    return f"0e:6b:6c:00:{node.index // 256:02x}:{node.index % 256:02x}"


def bridge_mac(node: NodeInfo) -> str:
    """A fixed MAC for the node's cni0. A bridge whose MAC was never set takes the lowest
    of its ports' MACs, so a pod joining or leaving would change the gateway's MAC under
    every other pod of the node, cut off until their ARP entries expire (up to ~45 s)."""
    return f"0e:6b:6c:01:{node.index // 256:02x}:{node.index % 256:02x}"


def pod_mtu(mode: str) -> int:
    return VXLAN_MTU if mode == "vxlan" else 1500


def batch(runner: Runner, lines: Sequence[str], netns: str | None = None) -> None:
    """One `ip -batch` call: the lines run in order, the first failure stops it."""
    if lines:
        where = ["-n", netns] if netns else []
        runner.run(["ip", *where, "-batch", "-"], input="\n".join(lines) + "\n")


def setup_node(
    runner: Runner,
    node: NodeInfo,
    others: Sequence[NodeInfo],
    mode: str,
    service_cidr: ipaddress.IPv4Network,
    folder: str,
) -> None:
    """Sysctls, the pod bridge, routes to the other nodes' pods, and a route for the
    Service CIDR where the node has none (a real node's default route plays that part)."""
    for key, value in SYSCTLS.items():
        saved = f"{folder}/{key}.before"
        if not runner.run(["test", "-e", saved], check=False).ok:
            runner.put(saved, runner.run(["sysctl", "-n", key]).stdout)
        runner.run(["sysctl", "-q", "-w", f"{key}={value}"])
    for key, value in OPTIONAL_SYSCTLS.items():
        runner.run(["sysctl", "-q", "-w", f"{key}={value}"], check=False)
    mtu = pod_mtu(mode)
    lines = [
        f"link add {POD_BRIDGE} address {bridge_mac(node)} mtu {mtu} type bridge",
        f"addr add {node.pod_gateway}/{node.pod_cidr.prefixlen} dev {POD_BRIDGE}",
        f"link set {POD_BRIDGE} up",
    ]
    fdb = []
    if mode == "vxlan":
        lines += [
            f"link add {VXLAN_DEVICE} address {vxlan_mac(node)} mtu {VXLAN_MTU} type vxlan "
            f"id {VXLAN_VNI} dstport {VXLAN_PORT} local {node.ip} nolearning",
            f"addr add {node.pod_cidr.network_address}/32 dev {VXLAN_DEVICE}",
            f"link set {VXLAN_DEVICE} up",
        ]
        for other in others:
            gateway = other.pod_cidr.network_address
            lines += [
                f"neigh add {gateway} lladdr {vxlan_mac(other)} dev {VXLAN_DEVICE} nud permanent",
                f"route add {other.pod_cidr} via {gateway} dev {VXLAN_DEVICE} onlink",
            ]
            fdb.append(f"fdb append {vxlan_mac(other)} dev {VXLAN_DEVICE} dst {other.ip}")
    else:
        lines += [f"route add {other.pod_cidr} via {other.ip}" for other in others]
    if not runner.run(["ip", "route", "get", str(service_cidr[1])], check=False).ok:
        device = interface_of(runner, str(node.ip))
        lines.append(f"route add {service_cidr} dev {device}")
        runner.put(f"{folder}/{SERVICE_ROUTE_MARK}", f"{service_cidr} dev {device}\n")
    batch(runner, lines)
    if fdb:
        runner.run(["bridge", "-batch", "-"], input="\n".join(fdb) + "\n")


def add_pods(runner: Runner, node: NodeInfo, pods: Sequence[PodInfo], mode: str) -> None:
    """Each pod: a namespace, a veth on cni0 with hairpin on, its address and routes."""
    mtu = pod_mtu(mode)
    forget_neighbours(runner, pods)
    # not in the batch: `ip netns add` moves the ip process itself into the new namespace
    names = [pod.netns for pod in pods]
    runner.run(["sh", "-c", 'for n; do ip netns add "$n" || exit 1; done', "sh", *names])
    node_side = []
    for pod in pods:
        veth = host_veth_name(pod)
        node_side += [
            f"link add {veth} mtu {mtu} type veth peer name eth0 mtu {mtu} netns {pod.netns}",
            f"link set {veth} master {POD_BRIDGE} up",
            f"link set {veth} type bridge_slave hairpin on",
        ]
    batch(runner, node_side)
    # each pod's side: one `ip -batch` per pod, all from one shell on the node (a call per
    # pod would cost a round trip each: 1,000 of them on a 100-node lab). nsenter, not
    # `ip -n`: that also copies the mount table, whose size grows with every namespace
    pairs = [arg for pod in pods for arg in (pod.netns, str(pod.ip))]
    if pairs:
        runner.run(
            [
                "sh",
                "-c",
                POD_SIDE,
                "sh",
                str(node.pod_cidr.prefixlen),
                str(node.pod_gateway),
                *pairs,
            ]
        )


def forget_neighbours(runner: Runner, pods: Sequence[PodInfo]) -> None:
    """Drop the node's ARP entries for the pods' addresses. A new pod may get an address a
    deleted pod had; a cached entry would keep sending to the old MAC for up to ~45 s."""
    lines = [f"neigh del {pod.ip} dev {POD_BRIDGE}" for pod in pods]
    if lines:  # -force: an entry the kernel already expired is not an error
        runner.run(["ip", "-force", "-batch", "-"], input="\n".join(lines) + "\n", check=False)


def remove_pod(runner: Runner, pod: PodInfo) -> None:
    """Deleting the pod's eth0 deletes the veth pair at once; then its namespace."""
    runner.run(["ip", "-n", pod.netns, "link", "del", "eth0"], check=False)
    runner.run(["ip", "netns", "del", pod.netns], check=False)
    forget_neighbours(runner, [pod])


def clean_node(runner: Runner, lab_id: str, others: Sequence[NodeInfo], folder: str) -> None:
    """Undo setup_node and every pod of the lab on a node that outlives the lab (also
    after a crash: everything is found by name). Missing pieces are not errors."""
    listed = runner.run(["ip", "netns", "list"], check=False).stdout.split("\n")
    for name in [line.split()[0] for line in listed if line.startswith(lab_prefix(lab_id))]:
        runner.run(["ip", "-n", name, "link", "del", "eth0"], check=False)
        runner.run(["ip", "netns", "del", name], check=False)
    lines = [f"link del {POD_BRIDGE}", f"link del {VXLAN_DEVICE}"]
    lines += [f"route del {other.pod_cidr}" for other in others]
    mark = runner.run(["cat", f"{folder}/{SERVICE_ROUTE_MARK}"], check=False)
    if mark.ok and mark.stdout.strip():
        lines.append(f"route del {mark.stdout.strip()}")
    runner.run(["ip", "-force", "-batch", "-"], input="\n".join(lines) + "\n", check=False)
    for key in SYSCTLS:
        saved = runner.run(["cat", f"{folder}/{key}.before"], check=False)
        if saved.ok and saved.stdout.strip():
            runner.run(["sysctl", "-q", "-w", f"{key}={saved.stdout.strip()}"], check=False)


def node_addresses(node: NodeInfo, mode: str) -> set[str]:
    """Every address a packet masqueraded on this node can carry as its source."""
    out = {str(node.ip), str(node.pod_gateway)}
    if mode == "vxlan":
        out.add(str(node.pod_cidr.network_address))
    return out
