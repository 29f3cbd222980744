"""What the kubernetes dataplane does on a node, over the substrate's runner (SSH, root):
read the proxy's rules, scrape kube-proxy's /metrics and /healthz, find a pod's network
namespace through the container runtime, clear conntrack entries.

A pod's commands run in its network namespace with the node's own tools (`nsenter -t PID
-n`, the sandbox's PID from `crictl inspectp`): the probes see the pod's address and
routes, as they do in the reference dataplane's namespaces, without needing anything in
the agnhost image.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence

from kubelab.dataplanes.kubernetes.kubeadm import METRICS_PORT
from kubelab.errors import LabError
from kubelab.hosts import Runner

HEALTHZ_PORT = 10256  # kube-proxy's healthzBindAddress default
CILIUM_LIST = (
    "sh", "-c",
    "crictl exec $(crictl ps -q --name cilium-agent | head -n 1) cilium-dbg service list",
)  # fmt: skip
DUMP_COMMANDS: dict[str, tuple[str, ...]] = {
    "iptables": ("iptables-save",),
    "nftables": ("nft", "-j", "list", "table", "ip", "kube-proxy"),
    "ipvs": ("ipvsadm", "-Ln"),
    "none": CILIUM_LIST,  # Cilium's kube-proxy replacement: its load-balancer state
}


def fetch(runner: Runner, port: int, path: str, timeout: float = 5.0) -> str | None:
    """GET http://127.0.0.1:PORT/PATH on the node; None when nothing answers."""
    script = (
        "import sys, urllib.request\n"
        f"r = urllib.request.urlopen('http://127.0.0.1:{port}{path}', timeout={timeout})\n"
        "sys.stdout.write(r.read().decode())\n"
    )
    result = runner.run([runner.python, "-c", script], check=False, timeout=timeout + 10)
    return result.stdout if result.ok else None


def metrics(runner: Runner) -> str | None:
    return fetch(runner, METRICS_PORT, "/metrics")


def healthz(runner: Runner) -> dict[str, object] | None:
    text = fetch(runner, HEALTHZ_PORT, "/healthz")
    try:
        doc = json.loads(text) if text else None
    except ValueError:
        return None
    return doc if isinstance(doc, dict) else None


def sandbox_pid(runner: Runner, namespace: str, pod: str) -> int:
    """The PID of the pod's sandbox, whose network namespace is the pod's."""
    ids = runner.run(
        [
            "crictl",
            "pods",
            "--namespace",
            namespace,
            "--name",
            f"^{pod}$",
            "--state",
            "Ready",
            "-q",
        ],
        check=False,
    ).stdout.split()
    if not ids:
        raise LabError(f"pod {namespace}/{pod} has no ready sandbox on {runner.name}")
    info = json.loads(runner.run(["crictl", "inspectp", "-o", "json", ids[0]]).stdout)
    pid = (info.get("info") or {}).get("pid")
    if not isinstance(pid, int) or pid <= 0:
        raise LabError(f"crictl inspectp gives no PID for pod {namespace}/{pod}")
    return pid


class PodRunner(Runner):
    """Commands in a pod's network namespace, with its node's tools."""

    def __init__(self, node: Runner, pid: int, name: str) -> None:
        self.node = node
        self.pid = pid
        self.name = name
        self.python = node.python

    def wrap(self, argv: Sequence[str]) -> list[str]:
        return self.node.wrap(["nsenter", "-t", str(self.pid), "-n", *argv])


def node_addresses(runner: Runner) -> set[str]:
    """Every IPv4 address on the node but loopback: node IP, tunnel and bridge addresses,
    whichever a masqueraded packet can leave with."""
    links = json.loads(runner.run(["ip", "-j", "-4", "addr", "show"]).stdout)
    return {
        a["local"]
        for link in links
        for a in link.get("addr_info", [])
        if a.get("family") == "inet" and not a["local"].startswith("127.")
    }


def clear_conntrack(runner: Runner, port: int, every_state: bool) -> int:
    state = [] if every_state else ["--state", "TIME_WAIT"]
    result = runner.run(["conntrack", "-D", "-p", "tcp", "--dport", str(port), *state], check=False)
    match = re.search(r"(\d+) flow entries have been deleted", result.stderr)
    return int(match.group(1)) if match else 0


def count_rules(mode: str, dump: str) -> dict[str, int]:
    """Counts of what the proxy wrote, by the same keys the reference records."""
    if mode == "iptables":
        return {"rules": dump.count("\n-A "), "chains": dump.count("\n:")}
    if mode == "nftables":
        doc = json.loads(dump).get("nftables", [])
        return {
            "rules": sum(1 for o in doc if "rule" in o),
            "chains": sum(1 for o in doc if "chain" in o),
            "map_elements": sum(len(o["map"].get("elem", [])) for o in doc if "map" in o),
        }
    if mode == "ipvs":
        lines = dump.splitlines()
        return {
            "virtual_servers": sum(1 for line in lines if re.match(r"^(TCP|UDP|SCTP)\s", line)),
            "real_servers": sum(1 for line in lines if line.strip().startswith("->")
                                and "RemoteAddress" not in line),
        }  # fmt: skip
    return {"frontends": sum(1 for line in dump.splitlines() if re.match(r"^\s*\d+\s", line))}
