"""The embedded lab on the real kernel: namespaces, pod network, pods, rules, real requests."""

from __future__ import annotations

import ipaddress
import json
import subprocess
import textwrap

import pytest
import testinfra

from kubelab.lab import Lab
from kubelab.traffic.runner import ProbePlan, run_probes

pytestmark = [pytest.mark.root, pytest.mark.lab]


def http_get_many(lab: Lab, member: str, url: str, count: int) -> list[str]:
    """`count` GETs of `url` from inside `member`, a new connection each; returns bodies."""
    script = textwrap.dedent(f"""
        import json, urllib.request
        out = []
        for _ in range({count}):
            try:
                out.append(urllib.request.urlopen({url!r}, timeout=2).read().decode())
            except Exception as exc:
                out.append("ERROR " + type(exc).__name__ + " " + str(exc))
        print(json.dumps(out))
    """)
    result = lab.exec(member, ["python3", "-c", script])
    assert result.ok, result.stderr
    return list(json.loads(result.stdout))


def test_every_member_is_a_namespace_with_its_address(running_lab: Lab) -> None:
    topo = running_lab.topology
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    members = [*topo.nodes, topo.client, *topo.pods]
    for ns in [f"kl-kltest-{m.name}" for m in members] + ["kl-kltest-fabric"]:
        assert ns in listed
    for node in topo.nodes:
        r = running_lab.exec(node.name, ["cat", "/proc/sys/net/ipv4/ip_forward"])
        assert r.stdout.strip() == "1"
        addrs = running_lab.exec(node.name, ["ip", "-o", "-4", "addr"]).stdout
        assert f"{node.ip}/24" in addrs and f"{node.pod_gateway}/24" in addrs
        bridge = running_lab.exec(node.name, ["bridge", "-d", "link"]).stdout
        ports = [line for line in bridge.splitlines() if "master cni0" in line]
        assert len(ports) == 2
        for line in ports:
            assert (
                "hairpin on" in bridge.split(line.split(":")[1].strip(), 1)[1].split("\n\n")[0]
                or "hairpin on" in bridge
            )


def test_a_port_joining_or_leaving_cni0_keeps_the_pods_gateway(running_lab: Lab) -> None:
    """A bridge with no MAC of its own takes its lowest port's: a pod coming or going would
    change the gateway's MAC under the node's other pods and cut them off for seconds."""

    def gateway_mac() -> str:
        link = json.loads(running_lab.exec("node1", ["ip", "-j", "link", "show", "cni0"]).stdout)
        return str(link[0]["address"])

    before = gateway_mac()
    low = ["ip", "link", "add", "kltlow", "address", "02:00:00:00:00:01", "type", "veth"]
    assert running_lab.exec("node1", [*low, "peer", "name", "kltlow1"]).ok
    try:
        assert running_lab.exec("node1", ["ip", "link", "set", "kltlow", "master", "cni0"]).ok
        assert gateway_mac() == before
    finally:
        running_lab.exec("node1", ["ip", "link", "del", "kltlow"])
    assert gateway_mac() == before
    target = running_lab.topology.pods_on("node1")[0]
    caller = running_lab.topology.pods_on("node2")[0]
    url = f"http://{target.ip}:{target.port}/hostname"
    assert http_get_many(running_lab, caller.name, url, 3) == [target.name] * 3


def test_no_lab_namespace_has_a_path_out(running_lab: Lab) -> None:
    spec = running_lab.spec.network
    lab_ranges = [spec.node_cidr, spec.pod_cidr, spec.service_cidr]
    for member in [
        "fabric",
        running_lab.topology.client.name,
        *[n.name for n in running_lab.topology.nodes],
        *[p.name for p in running_lab.topology.pods],
    ]:
        routes = json.loads(running_lab.exec(member, ["ip", "-j", "route"]).stdout)
        for route in routes:
            if route["dst"] == "default":
                gateway = ipaddress.ip_address(route["gateway"])
                assert gateway in spec.pod_cidr, f"{member}: default route via {gateway}"
            else:
                dst = ipaddress.ip_network(route["dst"])
                assert any(dst.subnet_of(r) or dst == r for r in lab_ranges), (member, route)
        links = running_lab.exec(member, ["ip", "-o", "link"]).stdout
        assert "link-netnsid" not in links or all(
            "veth" in line
            or "eth0" in line
            or line.split(":")[1].strip().split("@")[0]
            in {n.name for n in running_lab.topology.nodes} | {"client"}
            for line in links.splitlines()
            if "link-netnsid" in line
        )


def test_pods_answer_like_agnhost_netexec(running_lab: Lab) -> None:
    pod = running_lab.topology.pods_on("node2")[0]
    base = f"http://{pod.ip}:{pod.port}"
    assert http_get_many(running_lab, "node1", f"{base}/hostname", 1) == [pod.name]
    clientip = http_get_many(running_lab, "node1", f"{base}/clientip", 1)[0]
    ip, port = clientip.rsplit(":", 1)
    assert ip == str(running_lab.topology.node("node1").ip)  # host-gw: no SNAT between nodes
    assert 0 < int(port) < 65536
    assert http_get_many(running_lab, "node1", f"{base}/echo?msg=hello", 1) == ["hello"]
    assert http_get_many(running_lab, "node1", f"{base}/healthz", 1) == ["ok"]
    assert "HTTP Error 404" in http_get_many(running_lab, "node1", f"{base}/nope", 1)[0]


def test_clusterip_from_a_pod_reaches_every_pod_and_keeps_its_ip(running_lab: Lab) -> None:
    svc = running_lab.service("default/echo")
    pod = running_lab.topology.pods_on("node3")[0]
    url = f"http://{svc.cluster_ip}:{svc.ports[0].port}"
    names = http_get_many(running_lab, pod.name, f"{url}/hostname", 120)
    assert set(names) == {p.name for p in running_lab.topology.pods}
    seen = http_get_many(running_lab, pod.name, f"{url}/clientip", 60)
    ips = {s.rsplit(":", 1)[0] for s in seen}
    # the caller's own IP, except when the Service sent it back to itself (hairpin: SNAT)
    assert ips <= {str(pod.ip), str(running_lab.topology.node("node3").pod_gateway)}
    assert str(pod.ip) in ips


def test_clusterip_from_a_node(running_lab: Lab) -> None:
    svc = running_lab.service("default/echo")
    names = http_get_many(
        running_lab, "node2", f"http://{svc.cluster_ip}:{svc.ports[0].port}/hostname", 60
    )
    assert not [n for n in names if n.startswith("ERROR")]
    assert len(set(names)) >= 4


def test_hairpin_a_pod_reaches_itself_through_its_service(running_lab: Lab) -> None:
    svc = running_lab.service("default/echo")
    pod = running_lab.topology.pods_on("node1")[0]
    names = http_get_many(
        running_lab, pod.name, f"http://{svc.cluster_ip}:{svc.ports[0].port}/hostname", 90
    )
    assert not [n for n in names if n.startswith("ERROR")]
    assert pod.name in names


@pytest.mark.parametrize("policy", ["Cluster", "Local"])
def test_nodeport_with_each_external_traffic_policy(running_lab: Lab, policy: str) -> None:
    running_lab.update_service("default/echo", external_traffic_policy=policy)
    client = str(running_lab.topology.client.ip)
    for node in running_lab.topology.nodes:
        run = run_probes(
            running_lab.runner("client"),
            ProbePlan(str(node.ip), 30080, max_probes=120, users=4),
            running_lab.spec.lab_id,
        )
        frame = run.samples
        assert len(frame) == 120 and frame["ok"].all(), frame["error"].dropna().head()
        pods = set(frame["pod"])
        seen = set(frame["client_ip"])
        if policy == "Cluster":
            assert pods == {p.name for p in running_lab.topology.pods}
            assert seen <= {str(node.ip), str(node.pod_gateway)}
        else:
            assert pods == {p.name for p in running_lab.topology.pods_on(node.name)}
            assert seen == {client}


def test_testinfra_reaches_every_node_over_ssh(running_lab: Lab) -> None:
    for node in running_lab.topology.nodes:
        host = testinfra.get_host(f"ssh://{node.name}", ssh_config=str(running_lab.ssh_config))
        assert host.check_output("cat /proc/sys/net/ipv4/ip_forward") == "1"
        assert str(node.ip) in host.interface("eth0").addresses
        nat = host.iptables.rules("nat", "KUBE-SERVICES")
        assert nat[-1].endswith("-j KUBE-NODEPORTS")
