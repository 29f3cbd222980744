"""A cluster's nodes reached through its API alone: the exec bridge, the access pods, and
the `existing` substrate without an inventory, up and down.

No cluster can be reached from here, so the API server is the recording stand-in
(api_recorder.py) with its exec endpoint, and the test plays the kubelet: it marks the
access pods Running, deletes a namespace's pods with it, and runs each pod's exec in the
network namespace of the "node" it stands for (namespaces of the test's own, each with
the address its Node object gives). What runs there is real: the node's own sshd in
inetd mode, reached by ssh through the bridge, and every command kubelab sends over it.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import testinfra
import yaml

import api_recorder
from conftest import DATA
from helpers import kubelab, lab_traces
from kubelab.dataplanes.kubernetes import exec_bridge, node_access
from kubelab.errors import LabError, SpecError
from kubelab.naming import state_dir
from kubelab.spec import load_spec
from kubelab.substrates.existing import ExistingSubstrate
from test_kubernetes_manifests import invalid

NODES_JSON = DATA / "kubernetes" / "nodes-aks-eks.json"
HOST_PREFIX = "nax-"  # the test's own "nodes": not a kubelab lab prefix
# documentation addresses (RFC 5737), each only inside its namespace
NODES = {"node1": ("192.0.2.11", 10250), "node2": ("192.0.2.12", 10211),
         "outside": ("192.0.2.254", 10250)}  # fmt: skip


# --- the Status on the error channel, and the Node objects --------------------------------


def test_the_exit_code_is_read_from_the_kubelets_status() -> None:
    failure = {
        "metadata": {}, "status": "Failure", "reason": "NonZeroExitCode",
        "message": "command terminated with non-zero exit code: error executing command "
                   "[sh -c exit 3], exit code 3",
        "details": {"causes": [{"reason": "ExitCode", "message": "3"}]},
    }  # fmt: skip
    assert exec_bridge.exit_code(json.dumps({"metadata": {}, "status": "Success"})) == 0
    assert exec_bridge.exit_code(json.dumps(failure)) == 3
    other = {"metadata": {}, "status": "Failure", "message": "container not found"}
    assert exec_bridge.exit_code(json.dumps(other)) == exec_bridge.UNREACHABLE
    assert exec_bridge.exit_code("") == exec_bridge.UNREACHABLE  # the stream was cut


def test_a_nodes_address_and_kubelet_port_come_from_its_node_object() -> None:
    items = json.loads(NODES_JSON.read_text())["items"]
    aks, eks = (node_access.cluster_node(obj) for obj in items)
    assert aks is not None and eks is not None
    assert (aks.name, str(aks.address), aks.kubelet_port) == (
        "aks-agentpool-30520393-vmss000000", "10.240.0.4", 10211,
    )  # fmt: skip
    assert (str(eks.address), eks.kubelet_port) == ("192.168.78.24", 10250)
    no_ipv4 = {"metadata": {"name": "v6"}, "status": {"addresses": [
        {"type": "InternalIP", "address": "2001:db8::1"}]}}  # fmt: skip
    assert node_access.cluster_node(no_ipv4) is None


def test_the_access_objects_are_valid_and_carry_their_own_label() -> None:
    objects = [node_access.access_namespace("lab1"), node_access.access_pod("lab1", "node1")]
    assert [e for o in objects if (e := invalid(o))] == []
    pod = objects[1]["spec"]
    assert pod["hostNetwork"] and pod["hostPID"] and pod["nodeName"] == "node1"
    assert pod["containers"][0]["securityContext"] == {"privileged": True}
    assert pod["volumes"] == [{"name": "rootfs", "hostPath": {"path": "/"}}]
    for obj in objects:  # not the lab's label: the dataplane's down must leave them
        assert obj["metadata"]["labels"] == {
            node_access.ACCESS_LABEL: "lab1",
            **({"pod-security.kubernetes.io/enforce": "privileged"}
               if obj["kind"] == "Namespace" else {}),
        }  # fmt: skip


# --- the bridge -----------------------------------------------------------------------------


@pytest.fixture
def api(tmp_path: Path) -> Iterator[tuple[api_recorder.ApiRecorder, Path]]:
    with api_recorder.serving() as recorder:
        recorder.seed("/api/v1/namespaces/ns/pods", {"metadata": {"name": "p", "namespace": "ns"}})
        yield recorder, api_recorder.kubeconfig(tmp_path, recorder.url)


def bridge(
    kubeconfig: Path, pod: str, *argv: str, stdin: bytes = b""
) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [sys.executable, "-m", node_access.BRIDGE, "--kubeconfig", str(kubeconfig),
         "--namespace", "ns", "--pod", pod, "--", *argv],
        input=stdin, capture_output=True, timeout=60,
    )  # fmt: skip


@pytest.mark.parametrize("protocol", ["v5.channel.k8s.io", "v4.channel.k8s.io"])
def test_the_bridge_gives_output_and_exit_code(api: Any, protocol: str) -> None:
    recorder, kubeconfig = api
    recorder.exec_protocol = protocol
    done = bridge(kubeconfig, "p", "sh", "-c", "printf 'out\\0bin'; echo err >&2; exit 3")
    assert (done.returncode, done.stdout, done.stderr) == (3, b"out\0bin", b"err\n")
    assert recorder.made("EXEC")[0].body == ["sh", "-c", "printf 'out\\0bin'; echo err >&2; exit 3"]


def test_the_bridge_ends_the_programs_stdin_under_v5(api: Any) -> None:
    _, kubeconfig = api
    data = bytes(range(256)) * 800  # larger than one frame, every byte value
    done = bridge(kubeconfig, "p", "sh", "-c", "wc -c; exit 0", stdin=data)
    assert (done.returncode, done.stdout.strip()) == (0, str(len(data)).encode())


def test_a_pod_that_is_not_there_is_one_line_and_exit_255(api: Any) -> None:
    _, kubeconfig = api
    done = bridge(kubeconfig, "gone", "true")
    assert done.returncode == exec_bridge.UNREACHABLE
    lines = done.stderr.decode().strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("exec into pod ns/gone:"), lines


# --- specs ----------------------------------------------------------------------------------


def _spec(folder: Path, kubeconfig: Path, **changes: Any) -> Path:
    data: dict[str, Any] = {
        "name": "nacc",
        "substrate": {"kind": "existing"},
        "dataplane": {"kind": "kubernetes", "kubeconfig": str(kubeconfig)},
        "nodes": [{"name": "node1"}, {"name": "node2"}],
        "client": {"name": "outside"},
        "workloads": [{"name": "echo", "replicas": 2}],
        "services": [
            {
                "name": "echo",
                "workload": "echo",
                "type": "NodePort",
                "ports": [
                    {
                        "name": "http",
                        "protocol": "TCP",
                        "port": 80,
                        "target_port": 8080,
                        "node_port": 30080,
                    }
                ],
            }
        ],
    }
    for key, value in changes.items():
        if value is None:
            data.pop(key)
        else:
            data[key] = value
    path = folder / "cluster.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"dataplane": {"kind": "reference"}}, "substrate.inventory: required unless"),
        ({"client": None}, "client: without substrate.inventory, name the cluster's nodes"),
        ({"nodes": None}, "nodes: without substrate.inventory, name the cluster's nodes"),
        (
            {"substrate": {"kind": "existing", "inventory": "hosts.ini", "python": "python3"}},
            "does not exist",
        ),  # the inventory is read first; python is checked after
    ],
)
def test_a_spec_without_inventory_says_what_it_lacks(tmp_path: Path, changes: dict[str, Any],
                                                     message: str) -> None:  # fmt: skip
    done = kubelab("plan", str(_spec(tmp_path, tmp_path / "kubeconfig", **changes)))
    assert done.returncode == 2, done.stdout + done.stderr
    assert message in done.stderr and len(done.stderr.strip().splitlines()) == 1, done.stderr


def test_python_is_refused_beside_an_inventory(tmp_path: Path) -> None:
    (tmp_path / "hosts.ini").write_text("[nodes]\nnode1 ansible_host=192.0.2.11\n"
                                        "[client]\noutside ansible_host=192.0.2.254\n")  # fmt: skip
    substrate = {"kind": "existing", "inventory": "hosts.ini", "python": "python3"}
    done = kubelab("plan", str(_spec(tmp_path, tmp_path / "k", substrate=substrate, nodes=None,
                                     client=None, dataplane={"kind": "reference"})))  # fmt: skip
    assert (
        done.returncode == 2 and "substrate.python: read only without an inventory" in done.stderr
    )


def test_the_plan_names_the_access_pods_and_only_reads_the_cluster(
    tmp_path: Path, cluster_nodes: Any
) -> None:
    recorder, kubeconfig = cluster_nodes
    done = kubelab("plan", str(_spec(tmp_path, kubeconfig)))
    assert done.returncode == 0, done.stderr
    for member in NODES:
        assert f"exec into pod kubelab-access-nacc/access-{member}, then ssh" in done.stdout
    assert {r.method for r in recorder.requests} == {"GET"}  # the Node objects, nothing made


def test_an_api_server_that_does_not_answer_is_one_line(tmp_path: Path) -> None:
    kubeconfig = api_recorder.kubeconfig(tmp_path, "http://127.0.0.1:9")  # nothing listens
    done = kubelab("plan", str(_spec(tmp_path, kubeconfig)))
    assert done.returncode != 0
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "the API server did not answer" in lines[0], done.stderr


def test_a_node_the_cluster_does_not_have_is_named(tmp_path: Path, api: Any) -> None:
    recorder, kubeconfig = api
    for obj in json.loads(NODES_JSON.read_text())["items"]:
        recorder.seed("/api/v1/nodes", obj)
    spec = load_spec(_spec(tmp_path, kubeconfig))
    substrate = ExistingSubstrate(spec, tmp_path / "state")
    with pytest.raises(SpecError, match=r"nodes\[0\]\.name: 'node1' is not a node of the cluster"):
        substrate.check()


# --- up and down, on nodes of the test's own -----------------------------------------------


def sh(*argv: str) -> str:
    return subprocess.run(argv, capture_output=True, text=True, check=True).stdout


def in_node(node: str, *argv: str) -> str:
    return sh("nsenter", f"--net=/run/netns/{HOST_PREFIX}{node}", *argv)


class Kubelet:
    """What the cluster would do with the access objects: run the pods sent, and delete
    a namespace's pods with it."""

    def __init__(self, recorder: api_recorder.ApiRecorder) -> None:
        self.recorder = recorder
        self.stop = threading.Event()
        recorder.exec_prefix = lambda pod: [
            "nsenter",
            f"--net=/run/netns/{HOST_PREFIX}{pod['spec']['nodeName']}",
        ]
        threading.Thread(target=self._loop, daemon=True).start()

    def _loop(self) -> None:
        while not self.stop.wait(0.2):
            objects = self.recorder.objects
            for key, obj in list(objects.items()):
                if "/pods/" not in key:
                    continue
                namespace = obj["metadata"].get("namespace", "")
                if f"/api/v1/namespaces/{namespace}" not in objects and namespace != "ns":
                    objects.pop(key, None)
                elif "status" not in obj:
                    obj["status"] = {"phase": "Running", "containerStatuses": [{"ready": True}]}


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[tuple[api_recorder.ApiRecorder, Path]]:
    for node, (address, _) in NODES.items():
        ns = f"{HOST_PREFIX}{node}"
        sh("ip", "netns", "add", ns)
        # both ends inside the namespace: an interface for the address, and no way out
        sh("ip", "-n", ns, "link", "add", "eth0", "type", "veth", "peer", "name", "eth0-peer")
        sh("ip", "-n", ns, "addr", "add", f"{address}/24", "dev", "eth0")
        sh("ip", "-n", ns, "link", "set", "eth0", "up")
    try:
        with api_recorder.serving() as recorder:
            seed_nodes(recorder)
            kubelet = Kubelet(recorder)
            yield recorder, api_recorder.kubeconfig(tmp_path, recorder.url)
            kubelet.stop.set()
    finally:
        for node in NODES:
            subprocess.run(["ip", "netns", "del", f"{HOST_PREFIX}{node}"], check=False)


@pytest.fixture
def cluster_nodes(tmp_path: Path) -> Iterator[tuple[api_recorder.ApiRecorder, Path]]:
    """An API server holding the test's Node objects (nothing runs on them)."""
    with api_recorder.serving() as recorder:
        seed_nodes(recorder)
        yield recorder, api_recorder.kubeconfig(tmp_path, recorder.url)


def seed_nodes(recorder: api_recorder.ApiRecorder) -> None:
    for node, (address, port) in NODES.items():
        recorder.seed("/api/v1/nodes", {
            "apiVersion": "v1", "kind": "Node", "metadata": {"name": node},
            "status": {"addresses": [{"type": "InternalIP", "address": address}],
                       "daemonEndpoints": {"kubeletEndpoint": {"Port": port}}},
        })  # fmt: skip


def access_objects(recorder: api_recorder.ApiRecorder) -> list[str]:
    return sorted(k for k in recorder.objects if "kubelab-access-" in k)


@pytest.mark.root
@pytest.mark.lab
def test_nodes_reached_through_the_api_alone(tmp_path: Path, cluster: Any) -> None:
    recorder, kubeconfig = cluster
    spec = load_spec(_spec(tmp_path, kubeconfig))
    substrate = ExistingSubstrate(spec, state_dir(spec.lab_id))
    assert substrate.check() == []
    try:
        substrate.up(lambda _: None)
        assert access_objects(recorder) == [
            "/api/v1/namespaces/kubelab-access-nacc",
            *(f"/api/v1/namespaces/kubelab-access-nacc/pods/access-{m}" for m in sorted(NODES)),
        ]
        # every member answers over SSH from its own network namespace
        for member, (address, _) in NODES.items():
            got = substrate.runner(member).run(["ip", "-4", "-o", "addr", "show", "eth0"]).stdout
            assert f"inet {address}/24" in got
        assert [str(m.ip) for m in substrate.inventory().nodes] == ["192.0.2.11", "192.0.2.12"]
        assert (
            substrate.location("node2") == "ssh over exec into pod kubelab-access-nacc/access-node2"
        )
        # a background program and its line channel, as the traffic worker uses them
        worker = substrate.runner("outside").start(["sh", "-c", "read x; echo got-$x"])
        assert worker.ask("ping", timeout=30) == "got-ping"
        assert worker.wait(30) == 0
        # testinfra takes the same ssh_config
        host = testinfra.get_host("ssh://node2", ssh_config=str(substrate.ssh_config))
        assert "192.0.2.12/24" in host.check_output("ip -4 -o addr show eth0")
        # a failed node still lets its kubelet's port through: the way in
        substrate.set_node_link("node2", up=False)
        rules = in_node("node2", "nft", "list", "table", "inet", "kubelab_nacc_partition")
        assert "tcp dport 10211 accept" in rules and 'iifname "eth0" drop' in rules
        assert substrate.runner("node2").run(["true"]).ok  # still reached (not over eth0)
        substrate.set_node_link("node2", up=True)
        assert "kubelab_nacc_partition" not in in_node("node2", "nft", "list", "tables")
    finally:
        substrate.down()
    assert access_objects(recorder) == []
    assert lab_traces(spec.lab_id) == []
    assert not state_dir(spec.lab_id).exists()
    assert "sshd -i -f /run/kubelab/nacc" not in sh("ps", "-eo", "args")


@pytest.mark.root
@pytest.mark.lab
def test_a_node_without_the_python_named_fails_up_and_leaves_nothing(
    tmp_path: Path, cluster: Any
) -> None:
    recorder, kubeconfig = cluster
    substrate_options = {"kind": "existing", "python": "/opt/none/bin/python3"}
    spec = load_spec(_spec(tmp_path, kubeconfig, substrate=substrate_options))
    substrate = ExistingSubstrate(spec, state_dir(spec.lab_id))
    with pytest.raises(LabError, match=r"node node1: /opt/none/bin/python3 missing on the node"):
        try:
            substrate.up(lambda _: None)
        finally:
            substrate.down()
    deadline = time.monotonic() + 10
    while access_objects(recorder) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert access_objects(recorder) == []
    assert lab_traces(spec.lab_id) == []
