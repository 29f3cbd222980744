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
from typing import Any

from kubelab.dataplanes.kubernetes.api_objects import epoch
from kubelab.dataplanes.kubernetes.kubeadm import METRICS_PORT
from kubelab.dataplanes.kubernetes.proxy_metrics import ProxyMetrics
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


def fetch(runner: Runner, port: int, path: str, timeout: float = 5.0) -> tuple[int, str] | None:
    """GET http://127.0.0.1:PORT/PATH on the node: its status and body, an error status
    included (kube-proxy's /healthz answers 503 with the same JSON); None when nothing
    answers."""
    script = (
        "import json, sys, urllib.error, urllib.request\n"
        "try:\n"
        f"    r = urllib.request.urlopen('http://127.0.0.1:{port}{path}', timeout={timeout})\n"
        "except urllib.error.HTTPError as e:\n"
        "    r = e\n"
        "sys.stdout.write(json.dumps([r.getcode(), r.read().decode()]))\n"
    )
    result = runner.run([runner.python, "-c", script], check=False, timeout=timeout + 10)
    if not result.ok:
        return None
    status, body = json.loads(result.stdout)
    return int(status), str(body)


def metrics(runner: Runner) -> str | None:
    answer = fetch(runner, METRICS_PORT, "/metrics")
    return answer[1] if answer and answer[0] == 200 else None


def healthz(runner: Runner, port: int = HEALTHZ_PORT) -> tuple[int, dict[str, object]] | None:
    """kube-proxy's /healthz: 200 while it is in sync, 503 once a queued change waits
    longer than its health timeout or its node is being deleted; None when nothing
    answers (kube-proxy is not running)."""
    answer = fetch(runner, port, "/healthz")
    if answer is None:
        return None
    try:
        doc = json.loads(answer[1])
    except ValueError:
        doc = None
    return answer[0], doc if isinstance(doc, dict) else {}


def proxy_health(
    health: tuple[int, dict[str, object]] | None, account: ProxyMetrics | None
) -> dict[str, Any]:
    """One node's kube-proxy as `Dataplane.proxy_health` reports it. Its metrics say when
    it last synced (`kubeproxy_sync_proxy_rules_last_timestamp_seconds`) and how many
    changes wait (`..._endpoint_changes_pending` + `..._service_changes_pending`);
    /healthz says whether it runs and is healthy. Without metrics, /healthz's own
    `lastUpdated` stands in: kube-proxy reports the current time there while healthy and
    the last update once it is not."""
    if health is None:
        return {"running": False, "healthy": False, "last_sync": None, "changes_since": 0}
    status, doc = health
    healthy = status == 200
    if account is not None:
        last_sync = account.last_sync
        pending = sum(account.counters.get(f"sync_proxy_rules_{kind}_changes_pending", 0.0)
                      for kind in ("endpoint", "service"))  # fmt: skip
    else:  # a 503 of a node that is being deleted is no change waiting
        waiting = not healthy and doc.get("nodeEligible") is not False
        last_sync, pending = epoch(doc.get("lastUpdated")), float(waiting)
    return {"running": True, "healthy": healthy, "last_sync": last_sync,
            "changes_since": int(pending)}  # fmt: skip


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


# Every process in the sandbox's network namespace but the sandbox itself: the pod's
# containers. A sandbox in the node's own network (hostNetwork) is refused: that would be
# the node's processes.
KILL_POD_PROCESSES = r"""
sandbox=$1
net=$(readlink "/proc/$sandbox/ns/net") || exit 3
if [ "$net" = "$(readlink /proc/$$/ns/net)" ]; then
    echo "process $sandbox is in the node's own network namespace" >&2; exit 4
fi
killed=0
for dir in /proc/[0-9]*; do
    pid=${dir#/proc/}
    [ "$pid" = "$sandbox" ] && continue
    [ "$(readlink "$dir/ns/net" 2>/dev/null)" = "$net" ] || continue
    kill -KILL "$pid" 2>/dev/null && killed=$((killed + 1))
done
echo "$killed"
"""


def kill_pod_processes(node: Runner, sandbox: int) -> int:
    """SIGKILL the pod's containers on its node, as a crash would: every process in the
    network namespace of its sandbox (the pause process, which stays and keeps the pod's
    address). Returns how many were killed."""
    result = node.run(["sh", "-c", KILL_POD_PROCESSES, "sh", str(sandbox)], check=False)
    if not result.ok:
        raise LabError(
            f"cannot kill the pod of sandbox {sandbox} on {node.name}: "
            f"{result.stderr.strip() or 'no such process'}"
        )
    return int(result.stdout.strip() or 0)


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
