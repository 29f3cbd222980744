"""The IPVS proxier: kube-proxy's IPVS-mode layout.

Every ClusterIP, external IP and LoadBalancer IP is an address of the dummy `kube-ipvs0`;
each of them with its port, and every node-IP:NodePort, is an IPVS virtual server with the
spec's scheduler (ClientIP affinity = persistence); the KUBE-* ipsets and a handful of
iptables rules do the masquerading and the loadBalancerSourceRanges filter, as in
pkg/proxy/ipvs/proxier.go. As in kube-proxy's IPVS mode, policy Local on an external
address sends every source to this node's endpoints (no pod short-circuit). Left out: the
`physdev` ACCEPT for external IPs (bridge netfilter), as the lab's pods are not bridged
into iptables.

IPVS needs the kernel's ip_vs; `up` refuses this mode where /proc/net/ip_vs is missing.
The four parts are loaded one after another (addresses, `ipset restore`, `iptables-restore`,
`ipvsadm -R`); like kube-proxy's IPVS mode the whole is not one atomic transaction.
"""

from __future__ import annotations

from typing import ClassVar

from kubelab import naming as n
from kubelab.dataplanes.reference.proxier.base import KernelFeature, Proxier, ProxierContext
from kubelab.hosts import Runner
from kubelab.model import ServiceState, categorize

DUMMY = "kube-ipvs0"
SECTIONS = ("addresses", "ipset", "iptables", "ipvsadm")
# What kube-proxy's IPVS mode sets on start (pkg/proxy/ipvs/proxier.go): vs/conntrack lets
# iptables masquerade IPVS-forwarded packets (NodePort and external traffic to endpoints on
# other nodes need it); the two expire settings drop connections to removed real servers.
SYSCTLS = (
    "sysctl -qw net.ipv4.vs.conntrack=1 net.ipv4.vs.expire_nodest_conn=1 "
    "net.ipv4.vs.expire_quiescent_template=1"
)
IPSETS = {
    "KUBE-CLUSTER-IP": ("hash:ip,port", "Kubernetes service cluster ip + port for masquerade purpose"),
    "KUBE-LOOP-BACK": ("hash:ip,port,ip", "Kubernetes endpoints dst ip:port, source ip for solving hairpin purpose"),
    "KUBE-NODE-PORT-TCP": ("bitmap:port range 0-65535", "Kubernetes nodeport TCP port for masquerade purpose"),
    "KUBE-NODE-PORT-LOCAL-TCP": ("bitmap:port range 0-65535", "Kubernetes nodeport TCP port with externalTrafficPolicy=local"),
    "KUBE-NODE-PORT-UDP": ("bitmap:port range 0-65535", "Kubernetes nodeport UDP port for masquerade purpose"),
    "KUBE-NODE-PORT-LOCAL-UDP": ("bitmap:port range 0-65535", "Kubernetes nodeport UDP port with externalTrafficPolicy=local"),
    "KUBE-EXTERNAL-IP": ("hash:ip,port", "Kubernetes service external ip + port for masquerade and filter purpose"),
    "KUBE-EXTERNAL-IP-LOCAL": ("hash:ip,port", "Kubernetes service external ip + port with externalTrafficPolicy=local"),
    "KUBE-LOAD-BALANCER": ("hash:ip,port", "Kubernetes service lb portal"),
    "KUBE-LOAD-BALANCER-LOCAL": ("hash:ip,port", "Kubernetes service load balancer ip + port with externalTrafficPolicy=local"),
    "KUBE-LOAD-BALANCER-FW": ("hash:ip,port", "Kubernetes service load balancer ip + port for load balancer with sourceRange"),
    "KUBE-LOAD-BALANCER-SOURCE-CIDR": ("hash:ip,port,net", "Kubernetes service load balancer ip + port + source cidr for packet filter purpose"),
    "KUBE-LOAD-BALANCER-SOURCE-IP": ("hash:ip,port,ip", "Kubernetes service load balancer ip + port + source IP for packet filter purpose"),
}  # fmt: skip


def _by_key(text: str) -> tuple[dict[tuple[str, ...], str], dict[tuple[str, ...], str]]:
    """Virtual servers by (protocol flag, address) and real servers by (flag, vs, real)."""
    virtual: dict[tuple[str, ...], str] = {}
    real: dict[tuple[str, ...], str] = {}
    for line in text.splitlines():
        words = line.split()
        if words[:1] == ["-A"]:
            virtual[(words[1], words[2])] = line
        elif words[:1] == ["-a"]:
            real[(words[1], words[2], words[words.index("-r") + 1])] = line
    return virtual, real


def ipvs_changes(before: str, after: str) -> str:
    """`ipvsadm -R` input that turns the `before` table into `after`: real servers and
    virtual servers deleted, then virtual servers added or edited, then real servers."""
    old_vs, old_rs = _by_key(before)
    new_vs, new_rs = _by_key(after)
    out = [f"-d {k[0]} {k[1]} -r {k[2]}" for k in old_rs.keys() - new_rs.keys()]
    out += [f"-D {k[0]} {k[1]}" for k in old_vs.keys() - new_vs.keys()]
    out += [line if k not in old_vs else "-E" + line[2:]
            for k, line in new_vs.items() if old_vs.get(k) != line]  # fmt: skip
    out += [line if k not in old_rs else "-e" + line[2:]
            for k, line in new_rs.items() if old_rs.get(k) != line]  # fmt: skip
    return "".join(f"{line}\n" for line in out)


class IpvsProxier(Proxier):
    mode: ClassVar[str] = "ipvs"
    layout: ClassVar[str] = "kube-proxy pkg/proxy/ipvs (release not pinned)"

    def __init__(self, scheduler: str = "rr", node_ips: dict[str, str] | None = None) -> None:
        super().__init__(scheduler, node_ips)
        self._applied: dict[str, str] = {}  # node -> the ipvsadm section it holds

    tools: ClassVar[tuple[str, ...]] = (
        "ipvsadm", "ipset", "iptables-restore", "iptables-save", "conntrack",
    )  # fmt: skip
    packages: ClassVar[str] = "ipvsadm ipset iptables conntrack"
    kernel_features: ClassVar[tuple[KernelFeature, ...]] = (
        KernelFeature(
            "/proc/net/ip_vs",
            "dataplane.proxy_mode ipvs needs the kernel's ip_vs, and this kernel has none "
            "(no /proc/net/ip_vs); run IPVS labs in VMs, or use iptables or nftables here",
        ),
    )
    dump_command: ClassVar[tuple[str, ...]] = ("ipvsadm", "-S", "-n")

    def render(self, services: list[ServiceState], ctx: ProxierContext) -> str:
        addresses: list[str] = []
        members: dict[str, list[str]] = {name: [] for name in IPSETS}
        virtual: list[str] = []
        node_ip = self.node_ips.get(ctx.node)
        for state in services:
            svc = state.service
            if svc.headless:
                continue
            addresses.append(f"{svc.cluster_ip}/32")
            persist = f" -p {svc.affinity_seconds}" if svc.affinity_seconds else ""
            for port in svc.ports:
                flag = "-t" if port.protocol == "TCP" else "-u"
                proto = port.protocol.lower()
                cat = categorize(svc, state.endpoints_for(port), ctx.node)
                internal = cat.internal
                members["KUBE-CLUSTER-IP"].append(f"{svc.cluster_ip},{proto}:{port.port}")
                for ep in cat.reachable:
                    members["KUBE-LOOP-BACK"].append(f"{ep.ip},{proto}:{ep.port},{ep.ip}")
                vs = f"{svc.cluster_ip}:{port.port}"
                virtual.append(f"-A {flag} {vs} -s {self.scheduler}{persist}")
                virtual += [f"-a {flag} {vs} -r {ep.address} -m -w 1" for ep in internal]
                external = cat.external
                for kind, ip in svc.external_addresses:
                    entry = f"{ip},{proto}:{port.port}"
                    addresses.append(f"{ip}/32")
                    base = "KUBE-EXTERNAL-IP" if kind == "externalip" else "KUBE-LOAD-BALANCER"
                    members[base].append(entry)
                    if cat.external_local:
                        members[f"{base}-LOCAL"].append(entry)
                    if kind == "loadbalancer" and svc.load_balancer_source_ranges:
                        members["KUBE-LOAD-BALANCER-FW"].append(entry)
                        for source in svc.load_balancer_source_ranges:
                            members["KUBE-LOAD-BALANCER-SOURCE-CIDR"].append(f"{entry},{source}")
                    virtual.append(f"-A {flag} {ip}:{port.port} -s {self.scheduler}{persist}")
                    virtual += [f"-a {flag} {ip}:{port.port} -r {ep.address} -m -w 1"
                                for ep in external]  # fmt: skip
                if port.node_port is None or node_ip is None:
                    continue
                members[f"KUBE-NODE-PORT-{port.protocol}"].append(str(port.node_port))
                if cat.external_local:
                    members[f"KUBE-NODE-PORT-LOCAL-{port.protocol}"].append(str(port.node_port))
                vs = f"{node_ip}:{port.node_port}"
                virtual.append(f"-A {flag} {vs} -s {self.scheduler}{persist}")
                virtual += [f"-a {flag} {vs} -r {ep.address} -m -w 1" for ep in external]

        ipset = []
        for name, (kind, comment) in IPSETS.items():
            ipset.append(f"create {name} {kind} comment -exist")
            ipset.append(f"flush {name}")
            ipset += [f'add {name} {m} comment "{comment}"' for m in members[name]]
        cidr = ctx.cluster_cidr
        mark = n.MASQUERADE_MARK
        iptables = [
            "*nat",
            ":PREROUTING ACCEPT [0:0]", ":INPUT ACCEPT [0:0]", ":OUTPUT ACCEPT [0:0]",
            ":POSTROUTING ACCEPT [0:0]",
            ":KUBE-SERVICES - [0:0]", ":KUBE-POSTROUTING - [0:0]", ":KUBE-NODE-PORT - [0:0]",
            ":KUBE-LOAD-BALANCER - [0:0]", ":KUBE-MARK-MASQ - [0:0]",
            '-A PREROUTING -m comment --comment "kubernetes service portals" -j KUBE-SERVICES',
            '-A OUTPUT -m comment --comment "kubernetes service portals" -j KUBE-SERVICES',
            '-A POSTROUTING -m comment --comment "kubernetes postrouting rules" -j KUBE-POSTROUTING',
            '-A KUBE-LOAD-BALANCER -m comment --comment "Kubernetes service load balancer ip + port with externalTrafficPolicy=local" -m set --match-set KUBE-LOAD-BALANCER-LOCAL dst,dst -j RETURN',
            "-A KUBE-LOAD-BALANCER -j KUBE-MARK-MASQ",
            f"-A KUBE-MARK-MASQ -j MARK --or-mark {mark}",
            '-A KUBE-NODE-PORT -p tcp -m comment --comment "Kubernetes nodeport TCP port with externalTrafficPolicy=local" -m set --match-set KUBE-NODE-PORT-LOCAL-TCP dst -j RETURN',
            '-A KUBE-NODE-PORT -p tcp -m comment --comment "Kubernetes nodeport TCP port for masquerade purpose" -m set --match-set KUBE-NODE-PORT-TCP dst -j KUBE-MARK-MASQ',
            '-A KUBE-NODE-PORT -p udp -m comment --comment "Kubernetes nodeport UDP port with externalTrafficPolicy=local" -m set --match-set KUBE-NODE-PORT-LOCAL-UDP dst -j RETURN',
            '-A KUBE-NODE-PORT -p udp -m comment --comment "Kubernetes nodeport UDP port for masquerade purpose" -m set --match-set KUBE-NODE-PORT-UDP dst -j KUBE-MARK-MASQ',
            '-A KUBE-POSTROUTING -m comment --comment "Kubernetes endpoints dst ip:port, source ip for solving hairpin purpose" -m set --match-set KUBE-LOOP-BACK dst,dst,src -j MASQUERADE',
            f"-A KUBE-POSTROUTING -m mark ! --mark {mark}/{mark} -j RETURN",
            f"-A KUBE-POSTROUTING -j MARK --xor-mark {mark}",
            '-A KUBE-POSTROUTING -m comment --comment "kubernetes service traffic requiring SNAT" -j MASQUERADE --random-fully',
            '-A KUBE-SERVICES -m comment --comment "Kubernetes service lb portal" -m set --match-set KUBE-LOAD-BALANCER dst,dst -j KUBE-LOAD-BALANCER',
            f'-A KUBE-SERVICES ! -s {cidr} -m comment --comment "Kubernetes service cluster ip + port for masquerade purpose" -m set --match-set KUBE-CLUSTER-IP dst,dst -j KUBE-MARK-MASQ',
            '-A KUBE-SERVICES -m comment --comment "Kubernetes service external ip + port for masquerade and filter purpose" -m set --match-set KUBE-EXTERNAL-IP dst,dst -j KUBE-MARK-MASQ',
            '-A KUBE-SERVICES -m comment --comment "Kubernetes service external ip + port for masquerade and filter purpose" -m set --match-set KUBE-EXTERNAL-IP dst,dst -m addrtype --dst-type LOCAL -j ACCEPT',
            '-A KUBE-SERVICES -m comment --comment "Kubernetes service external ip + port with externalTrafficPolicy=local" -m set --match-set KUBE-EXTERNAL-IP-LOCAL dst,dst -m addrtype --dst-type LOCAL -j ACCEPT',
            "-A KUBE-SERVICES -m addrtype --dst-type LOCAL -j KUBE-NODE-PORT",
            "-A KUBE-SERVICES -m set --match-set KUBE-CLUSTER-IP dst,dst -j ACCEPT",
            "-A KUBE-SERVICES -m set --match-set KUBE-LOAD-BALANCER dst,dst -j ACCEPT",
            "COMMIT",
            "*filter",
            ":INPUT ACCEPT [0:0]", ":FORWARD ACCEPT [0:0]", ":OUTPUT ACCEPT [0:0]",
            ":KUBE-PROXY-FIREWALL - [0:0]", ":KUBE-SOURCE-RANGES-FIREWALL - [0:0]",
            '-A INPUT -m comment --comment "kube-proxy firewall rules" -j KUBE-PROXY-FIREWALL',
            '-A FORWARD -m comment --comment "kube-proxy firewall rules" -j KUBE-PROXY-FIREWALL',
            '-A KUBE-PROXY-FIREWALL -m comment --comment "Kubernetes service load balancer ip + port for load balancer with sourceRange" -m set --match-set KUBE-LOAD-BALANCER-FW dst,dst -j KUBE-SOURCE-RANGES-FIREWALL',
            '-A KUBE-SOURCE-RANGES-FIREWALL -m comment --comment "Kubernetes service load balancer ip + port + source cidr for packet filter purpose" -m set --match-set KUBE-LOAD-BALANCER-SOURCE-CIDR dst,dst,src -j RETURN',
            '-A KUBE-SOURCE-RANGES-FIREWALL -m comment --comment "Kubernetes service load balancer ip + port + source IP for packet filter purpose" -m set --match-set KUBE-LOAD-BALANCER-SOURCE-IP dst,dst,src -j RETURN',
            "-A KUBE-SOURCE-RANGES-FIREWALL -j DROP",
            "COMMIT",
        ]  # fmt: skip
        parts = {"addresses": addresses, "ipset": ipset, "iptables": iptables, "ipvsadm": virtual}
        return "".join(
            f"# {name}\n" + "".join(f"{line}\n" for line in parts[name]) for name in SECTIONS
        )

    @staticmethod
    def sections(text: str) -> dict[str, str]:
        out: dict[str, list[str]] = {}
        current = ""
        for line in text.splitlines():
            if line.startswith("# ") and line[2:] in SECTIONS:
                current = line[2:]
                out[current] = []
            else:
                out[current].append(line)
        return {k: "\n".join(v) + "\n" for k, v in out.items()}

    def apply(self, runner: Runner, text: str) -> None:
        """All four parts in one shell on the node (one round trip over SSH), fed on stdin
        since a rule set of 10,000 Services is far past the longest argument allowed."""
        part = self.sections(text)
        # Like kube-proxy, change only what differs from the last sync: clearing and
        # reloading would leave a moment with no virtual server at all (connections refused)
        before = self._applied.get(runner.name)
        incremental = before is not None
        changes = ipvs_changes(before, part["ipvsadm"]) if before is not None else part["ipvsadm"]
        addresses = "".join(f"addr add {cidr} dev {DUMMY}\n" for cidr in part["addresses"].split())
        script = (
            f"{SYSCTLS}\n"
            f"ip link show {DUMMY} >/dev/null 2>&1 || ip link add {DUMMY} type dummy\n"
            f"ip addr flush dev {DUMMY}\n"
            f"ip -batch - <<'KUBELAB_EOF'\n{addresses}KUBELAB_EOF\n"
            f"ipset restore -exist <<'KUBELAB_EOF'\n{part['ipset']}KUBELAB_EOF\n"
            f"iptables-restore <<'KUBELAB_EOF'\n{part['iptables']}KUBELAB_EOF\n"
            f"{'' if incremental else 'ipvsadm -C'}\n"
            f"ipvsadm -R <<'KUBELAB_EOF'\n{changes}KUBELAB_EOF\n"
        )
        runner.run(["sh", "-e"], input=script)
        self._applied[runner.name] = part["ipvsadm"]

    def forget(self) -> None:
        """The next sync of every node clears IPVS and loads every virtual server."""
        self._applied.clear()

    def count_rules(self, runner: Runner) -> dict[str, int]:
        dump = self.dump(runner)
        return {
            "virtual_servers": dump.count("-A "),
            "real_servers": dump.count("-a "),
        }

    def restore_host_rules(self, runner: Runner, folder: str) -> None:
        runner.run(["ipvsadm", "-C"], check=False)
        runner.run(["ip", "link", "del", DUMMY], check=False)
        super().restore_host_rules(runner, folder)  # iptables first: its rules use the sets
        for name in IPSETS:
            runner.run(["ipset", "destroy", name], check=False)
