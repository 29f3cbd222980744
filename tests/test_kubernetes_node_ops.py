"""What the kubernetes dataplane runs on a node, on a real embedded lab's nodes and pods:
commands in a pod's network namespace by a PID in it (as a sandbox's PID from crictl is
used on a real node), a pod's processes killed beside its sandbox, the node's addresses,
the rule counts from a real dump, conntrack clearing. crictl itself needs a container
runtime, which no lab here runs."""

from __future__ import annotations

import ipaddress
import time

import pytest

from kubelab.dataplanes.kubernetes import node_ops
from kubelab.errors import LabError
from kubelab.lab import Lab

pytestmark = [pytest.mark.root, pytest.mark.lab]


def test_a_pods_commands_run_in_its_namespace_by_a_pid_in_it(running_lab: Lab) -> None:
    pod = running_lab.running_pods("echo")[0]
    holder = running_lab.runner(pod.name).start(["sleep", "60"])  # a process in the pod
    try:
        runner = node_ops.PodRunner(running_lab.substrate.runner(pod.node), holder.pid, pod.name)
        shown = runner.run(["ip", "-4", "-o", "addr", "show"]).stdout
        assert f" {pod.ip}/" in shown
        route = runner.run(["ip", "-4", "route", "show", "default"]).stdout
        assert route.startswith("default via"), route
        node_view = running_lab.substrate.runner(pod.node).run(["ip", "-4", "-o", "addr"]).stdout
        assert f" {pod.ip}/" not in node_view  # the node itself does not hold it
    finally:
        holder.kill()


def test_the_node_addresses_hold_the_node_ip_and_no_loopback(running_lab: Lab) -> None:
    node = running_lab.topology.nodes[0]
    found = node_ops.node_addresses(running_lab.substrate.runner(node.name))
    assert str(node.ip) in found
    assert not any(ipaddress.IPv4Address(a).is_loopback for a in found)


def test_rule_counts_from_a_dump_match_the_proxiers_own(running_lab: Lab) -> None:
    node = running_lab.topology.nodes[0].name
    dump = running_lab.dataplane.dump_rules(node)
    mode = running_lab.dataplane.proxy_mode
    assert node_ops.count_rules(mode, dump) == running_lab.dataplane.count_rules(node)


def test_conntrack_clearing_counts_what_it_deleted(running_lab: Lab) -> None:
    runner = running_lab.substrate.runner(running_lab.topology.nodes[0].name)
    assert node_ops.clear_conntrack(runner, 1, every_state=True) == 0  # nothing on port 1


def test_a_kill_takes_the_pods_processes_and_leaves_its_sandbox(running_lab: Lab) -> None:
    """The pause process of a real pod holds its network namespace; the containers'
    processes are the others in it. Here a `sleep` plays the sandbox and a listener plus
    another process play the containers."""
    pod = running_lab.running_pods("echo")[0]
    inside = running_lab.runner(pod.name)
    node = running_lab.substrate.runner(pod.node)
    sandbox = inside.start(["sleep", "120"])
    listener = inside.start([inside.python, "-m", "http.server", "18321", "--bind", str(pod.ip)])
    worker = inside.start(["sleep", "120"])
    bystander = node.start(["sleep", "120"])  # the node's own: not the pod's
    try:
        asked = f"import urllib.request as u; u.urlopen('http://{pod.ip}:18321/', timeout=2)"
        deadline = time.monotonic() + 10
        while not inside.run([inside.python, "-c", asked], check=False).ok:
            assert time.monotonic() < deadline, "the listener never answered"
            time.sleep(0.2)
        assert node_ops.kill_pod_processes(node, sandbox.pid) >= 2
        for process in (listener, worker):
            process.wait(timeout=5)  # SIGKILLed: gone at once
        assert not inside.run([inside.python, "-c", asked], check=False).ok
        assert sandbox.alive() and bystander.alive()
        assert (
            f" {pod.ip}/"
            in node_ops.PodRunner(node, sandbox.pid, pod.name)
            .run(["ip", "-4", "-o", "addr", "show"])
            .stdout
        )  # the pod keeps its address
        with pytest.raises(LabError, match="node's own network namespace"):
            node_ops.kill_pod_processes(node, bystander.pid)
        assert bystander.alive()
    finally:
        for process in (sandbox, listener, worker, bystander):
            process.kill()
