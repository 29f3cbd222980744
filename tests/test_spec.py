"""Lab spec validation: good specs load; each kind of bad spec gives one line, exit 2."""

from __future__ import annotations

import ipaddress
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import LOCAL_SPEC, local_spec_data
from kubelab.errors import SpecError
from kubelab.spec import load_spec, parse_spec


def test_default_lab_loads() -> None:
    spec = load_spec(LOCAL_SPEC)
    assert spec.name == "local"
    assert spec.substrate.kind == "netns"
    assert spec.dataplane.proxy_mode == "iptables"
    assert spec.dataplane.pod_network == "host-gw"
    assert [n.name for n in spec.nodes] == ["node1", "node2", "node3"]
    assert str(spec.network.pod_cidr) == "10.244.0.0/16"
    assert str(spec.network.service_cidr) == "10.96.0.0/12"
    assert spec.services[0].ports[0].node_port == 30080


def test_load_balancer_ips_come_from_the_pool_in_order() -> None:
    from kubelab.dataplanes.reference.cluster import ClusterState
    from kubelab.inventory import Inventory
    from kubelab.substrates.base import planned_inventory
    from kubelab.topology import Topology

    lb = ECHO | {"type": "LoadBalancer"}
    spec = parse_spec(
        local_spec_data(
            services=[
                lb | {"name": "a", "load_balancer_ip": "192.168.56.225"},
                lb | {"name": "b", "ports": [ECHO["ports"][0] | {"node_port": 30081}]},
            ]
        ),
        "lb.yaml",
    )
    assert spec.network.lb_pool == ipaddress.IPv4Network("192.168.56.224/28")
    inventory: Inventory = planned_inventory(spec)
    cluster = ClusterState(spec, Topology(spec, inventory))
    ips = {k: [str(ip) for ip in s.load_balancer_ips] for k, s in cluster.services.items()}
    assert ips == {"default/a": ["192.168.56.225"], "default/b": ["192.168.56.226"]}
    b = next(o for o in cluster.objects()["items"] if o["metadata"]["name"] == "b")
    assert b["kind"] == "Service" and b["status"] == {
        "loadBalancer": {"ingress": [{"ip": "192.168.56.226", "ipMode": "VIP"}]}
    }


def test_digest_is_stable_and_sensitive() -> None:
    a = parse_spec(local_spec_data(), "a")
    b = parse_spec(local_spec_data(), "b")
    c = parse_spec(local_spec_data(seed=2), "c")
    assert a.digest() == b.digest() != c.digest()


def _with(path: list[str | int], value: object) -> dict:
    data = local_spec_data()
    target = data
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    return data


ECHO = local_spec_data()["services"][0]

BAD = {
    "unknown field": (_with(["nodes", 0, "cpus"], 2), "nodes[0].cpus: unknown field"),
    "unknown top-level field": (local_spec_data(proxy="iptables"), "proxy: unknown field"),
    "bad CIDR": (
        _with(["network", "pod_cidr"], "10.244.0.0/33"),
        "network.pod_cidr: '10.244.0.0/33' is not a valid IPv4 network",
    ),
    "host bits set": (
        _with(["network", "node_cidr"], "192.168.56.1/24"),
        "network.node_cidr: '192.168.56.1/24' is not a valid IPv4 network",
    ),
    "overlapping CIDRs": (
        _with(["network", "service_cidr"], "10.244.128.0/20"),
        "pod_cidr 10.244.0.0/16 overlaps service_cidr 10.244.128.0/20",
    ),
    "unknown proxy mode": (
        _with(["dataplane", "proxy_mode"], "userspace"),
        "dataplane.proxy_mode: 'userspace' is not supported; use 'iptables'",
    ),
    "unknown substrate": (
        _with(["substrate", "kind"], "docker"),
        "substrate.kind: 'docker' is not supported; use 'netns'",
    ),
    "NodePort out of range": (
        _with(["services", 0, "ports", 0, "node_port"], 80),
        "services[0].ports[0].node_port: 80 is outside the NodePort "
        "range; use a port from 30000 to 32767",
    ),
    "too many pods": (
        _with(["workloads", 0, "pods_per_node"], 300),
        "300 pods per node do not fit a /24 node slice",
    ),
    "too many nodes for the pod CIDR": (
        _with(["network", "node_pod_prefix"], 17),
        "network.pod_cidr: 10.244.0.0/16 holds 2 /17 node slices, too few for 3 nodes",
    ),
    "unknown workload": (
        _with(["services", 0, "workload"], "web"),
        "services[0].workload: Service default/echo selects workload 'web', which is not defined",
    ),
    "missing field": (
        {k: v for k, v in local_spec_data().items() if k != "nodes"},
        "nodes: required field is missing",
    ),
    "bad lab name": (
        local_spec_data(name="My-Lab"),
        "name: 'My-Lab' is not a valid name; use lowercase letters and digits, starting with",
    ),
    "bad node name": (
        _with(["nodes", 0, "name"], "Node_1"),
        "nodes[0].name: 'Node_1' is not a valid name; use lowercase letters, digits and '-'",
    ),
    "node name too long": (
        _with(["nodes", 0, "name"], "a-very-long-node-name"),
        "nodes[0].name: 'a-very-long-node-name' is too long; use at most 12 characters",
    ),
    "zero nodes": (local_spec_data(nodes=[]), "nodes: [] has too few entries; give at least 1"),
    "a scheduler without IPVS": (
        _with(["dataplane", "scheduler"], "sh"),
        "dataplane: scheduler 'sh' is read only in proxy_mode ipvs; remove it or set "
        "proxy_mode: ipvs",
    ),
    "more nodes than the node network holds": (
        local_spec_data(
            nodes=[{"name": f"n{i}"} for i in range(120)], network={"node_cidr": "10.0.0.0/25"}
        ),
        "network.node_cidr: 10.0.0.0/25 holds 114 nodes and a client, too few for 120; use a "
        "larger node_cidr (a /24 holds 242)",
    ),
    "a node network too small for any node": (
        _with(["network", "node_cidr"], "192.168.56.0/30"),
        "network.node_cidr: 192.168.56.0/30 holds 0 nodes and a client, too few for 3; use a "
        "larger node_cidr (a /27 holds 18)",
    ),
    "unknown dataplane": (
        _with(["dataplane", "kind"], "cilium"),
        "dataplane.kind: 'cilium' is not supported; use 'reference'",
    ),
    "unknown pod network (CNI)": (
        _with(["dataplane", "pod_network"], "bgp"),
        "dataplane.pod_network: 'bgp' is not supported; use 'host-gw' or 'vxlan'",
    ),
    "unknown field in network": (_with(["network", "mtu"], 1400), "network.mtu: unknown field"),
    "unknown field in a Service port": (
        _with(["services", 0, "ports", 0, "nodeport"], 30080),
        "services[0].ports[0].nodeport: unknown field",
    ),
    "unknown field in a workload": (
        _with(["workloads", 0, "image"], "nginx"),
        "workloads[0].image: unknown field",
    ),
    "unknown field in the substrate": (
        _with(["substrate", "cpus"], 2),
        "substrate.cpus: unknown field",
    ),
    "a number that is text": (
        _with(["workloads", 0, "pods_per_node"], "two"),
        "workloads[0].pods_per_node: 'two' is not a whole number; give an integer",
    ),
    "nodes that are not a list": (
        local_spec_data(nodes="node1"),
        "nodes: 'node1' is not a list; give a YAML list",
    ),
    "a seed that is text": (local_spec_data(seed="abc"), "seed: 'abc' is not a whole number"),
    "port zero": (
        _with(["services", 0, "ports", 0, "port"], 0),
        "services[0].ports[0].port: 0 is too small; use at least 1",
    ),
    "unknown protocol": (
        _with(["services", 0, "ports", 0, "protocol"], "ICMP"),
        "services[0].ports[0].protocol: 'ICMP' is not supported; use 'TCP' or 'UDP'",
    ),
    "a NodePort used twice": (
        local_spec_data(
            services=[
                {**ECHO, "name": "a"},
                {**ECHO, "name": "b"},
            ]
        ),
        "services[1].ports[0].node_port: 30080 is already used by services[0] as a NodePort",
    ),
    "a health-check port that is a NodePort": (
        local_spec_data(
            services=[
                {
                    **ECHO,
                    "type": "LoadBalancer",
                    "external_traffic_policy": "Local",
                    "health_check_node_port": 30080,
                }
            ]
        ),
        "services[0].health_check_node_port: 30080 is already used by services[0] as a NodePort",
    ),
    "a health-check port on a NodePort Service": (
        local_spec_data(
            services=[{**ECHO, "external_traffic_policy": "Local", "health_check_node_port": 31000}]
        ),
        "health_check_node_port needs type LoadBalancer with external_traffic_policy Local",
    ),
    "a Service defined twice": (
        local_spec_data(
            services=[ECHO, {**ECHO, "ports": [{**ECHO["ports"][0], "node_port": 30081}]}]
        ),
        "services[1].name: Service default/echo is defined twice",
    ),
    "duplicate node names": (
        local_spec_data(nodes=[{"name": "node1"}, {"name": "node1"}]),
        "nodes[1].name: 'node1' is used twice; give every node and the client a different name",
    ),
    "the client named like a node": (
        local_spec_data(client={"name": "node2"}),
        "client.name: 'node2' is used twice",
    ),
    "a workload defined twice": (
        local_spec_data(workloads=[{"name": "echo", "replicas": 1}] * 2),
        "workloads[1].name: 'echo' is used twice; give each workload its own",
    ),
    "a workload on unknown nodes": (
        _with(["workloads", 0, "nodes"], ["node9"]),
        "workloads[0].nodes: ['node9'] are not nodes of this lab; use some of",
    ),
    "a Service selecting no workload": (
        local_spec_data(services=[{k: v for k, v in ECHO.items() if k != "workload"}]),
        "services[0].workload: required field is missing",
    ),
    "a cluster IP outside the service CIDR": (
        _with(["services", 0, "cluster_ip"], "10.1.2.3"),
        "services[0].cluster_ip: 10.1.2.3 is outside service_cidr 10.96.0.0/12",
    ),
    "a Vagrant lab with an overlapping management network": (
        local_spec_data(substrate={"kind": "vagrant", "management_cidr": "not-a-cidr"}),
        "substrate.management_cidr: ",
    ),
    "an external IP off the node network": (
        _with(["services", 0, "external_ips"], ["203.0.113.7"]),
        "services[0].external_ips[0]: 203.0.113.7 is not a free address of the node network",
    ),
    "an external IP that is a node's address": (
        _with(["services", 0, "external_ips"], ["192.168.56.11"]),
        "services[0].external_ips[0]: 192.168.56.11 is not a free address",
    ),
    "a LoadBalancer IP outside the pool": (
        local_spec_data(
            services=[ECHO | {"type": "LoadBalancer", "load_balancer_ip": "192.168.56.100"}]
        ),
        "services[0].load_balancer_ip: 192.168.56.100 is outside network.load_balancer_pool",
    ),
    "source ranges on a NodePort": (
        _with(["services", 0, "load_balancer_source_ranges"], ["10.0.0.0/8"]),
        "load_balancer_ip and load_balancer_source_ranges need type LoadBalancer",
    ),
    "a LoadBalancer pool off the node network": (
        _with(["network", "load_balancer_pool"], "10.50.0.0/28"),
        "load_balancer_pool 10.50.0.0/28 is outside node_cidr 192.168.56.0/24",
    ),
    "policy Local on a ClusterIP Service": (
        local_spec_data(
            services=[
                {k: v for k, v in ECHO.items() if k != "type"}
                | {"external_traffic_policy": "Local", "ports": [{"port": 80, "target_port": 8080}]}
            ]
        ),
        "external_traffic_policy Local needs type NodePort or LoadBalancer",
    ),
    "existing hosts without an inventory file": (
        local_spec_data(substrate={"kind": "existing", "inventory": "no-such.ini"}),
        "substrate.inventory: ",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD), ids=lambda c: c.replace(" ", "-"))
def test_bad_spec_gives_one_line(case: str) -> None:
    data, expected = BAD[case]
    with pytest.raises(SpecError) as err:
        parse_spec(data, "bad.yaml")
    message = str(err.value)
    assert "\n" not in message
    assert len(message) < 200, message  # names the field; never echoes a long value
    assert message.startswith("bad.yaml: ")
    assert expected in message, message


def test_not_a_mapping() -> None:
    with pytest.raises(SpecError, match="must hold a mapping"):
        parse_spec(["a"], "x.yaml")


def test_an_empty_file_says_what_it_must_hold(tmp_path: Path) -> None:
    p = tmp_path / "empty.yaml"
    p.write_text("")
    with pytest.raises(SpecError, match="must hold a mapping of fields"):
        load_spec(p)


def test_invalid_yaml_names_the_line(tmp_path: Path) -> None:
    p = tmp_path / "broken.yaml"
    p.write_text("name: a\nnodes: [\n")
    with pytest.raises(SpecError, match=r"line \d+: not valid YAML"):
        load_spec(p)


def test_missing_file() -> None:
    with pytest.raises(SpecError, match="no such lab spec file"):
        load_spec("labs/nope.yaml")


@pytest.mark.parametrize("case", sorted(BAD), ids=lambda c: c.replace(" ", "-"))
def test_every_bad_spec_stops_kubelab_up_in_one_line_and_builds_nothing(
    tmp_path: Path, case: str
) -> None:
    data, expected = BAD[case]
    p = tmp_path / "bad.yaml"
    p.write_text(yaml.safe_dump(data))
    before = set(
        subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout.split()
    )
    state = set(Path("/run/kubelab").iterdir()) if Path("/run/kubelab").exists() else set()
    proc = subprocess.run(
        [sys.executable, "-m", "kubelab.cli", "up", str(p)], capture_output=True, text=True
    )
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and expected in lines[0], proc.stderr
    after = set(
        subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout.split()
    )
    assert after <= before
    assert (
        set(Path("/run/kubelab").iterdir()) if Path("/run/kubelab").exists() else set()
    ) <= state


@pytest.mark.parametrize("command", ["up", "run", "status"])
def test_cli_bad_spec_exit_2_and_builds_nothing(tmp_path: Path, command: str) -> None:
    bad = _with(["services", 0, "ports", 0, "node_port"], 40000)
    bad["name"] = "klbad"  # a lab name no other test uses
    p = tmp_path / "bad.yaml"
    p.write_text(yaml.safe_dump(bad))
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "kubelab.cli",
            command,
            str(p),
            *(["--reports", str(tmp_path / "reports")] if command == "run" else []),
        ],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert "services[0].ports[0].node_port: 40000 is outside the NodePort range" in lines[0]
    assert not (tmp_path / "reports").exists()
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert "kl-klbad-" not in listed
    assert not Path("/run/kubelab/klbad").exists()
