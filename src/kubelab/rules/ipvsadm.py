"""ForwardingTable from kube-proxy's IPVS mode: `ipvsadm -Ln` (with or without `--stats` /
`--rate` columns) and `ipvsadm -S -n` (the save format).

IPVS shows no Service names and no masquerading (that lives in iptables and ipsets), so
`service` and `masquerade_offcluster` are null. A NodePort is one virtual server per node
address on the same port: virtual servers sharing a protocol and a port in the NodePort
range on two or more addresses become one `nodeport` frontend listing those addresses.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from kubelab.rules.table import ForwardingTable, Frontend

NODE_PORT_RANGE = range(30000, 32768)
PROTOCOLS = {
    "TCP": "tcp",
    "UDP": "udp",
    "SCTP": "sctp",
    "-t": "tcp",
    "-u": "udp",
    "--sctp-service": "sctp",
}


@dataclass
class VirtualServer:
    protocol: str
    address: str
    port: int
    scheduler: str | None = None
    persistent: int | None = None
    reals: list[tuple[str, int]] = field(default_factory=list)  # ("ip:port", weight)


def _split(hostport: str) -> tuple[str, int]:
    host, _, port = hostport.rpartition(":")
    return host.strip("[]"), int(port)


def parse_list(text: str, warnings: list[str]) -> list[VirtualServer]:
    """`ipvsadm -Ln` and its --stats / --rate variants."""
    servers: list[VirtualServer] = []
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith(("IP Virtual Server", "Prot ", "-> RemoteAddress")):
            continue
        parts = line.split()
        if parts[0] in ("TCP", "UDP", "SCTP") and len(parts) >= 2:
            host, port = _split(parts[1])
            vs = VirtualServer(PROTOCOLS[parts[0]], host, port)
            rest = parts[2:]
            if rest and not rest[0].isdigit():  # -Ln: scheduler and flags; --stats: numbers
                vs.scheduler = rest[0]
                if "persistent" in rest:
                    vs.persistent = int(rest[rest.index("persistent") + 1])
            servers.append(vs)
        elif parts[0] == "->" and len(parts) >= 2 and servers:
            host, port = _split(parts[1])
            weight = 1
            if len(parts) >= 4 and parts[2] in ("Masq", "Route", "Tunnel", "Local"):
                weight = int(parts[3])
            servers[-1].reals.append((f"{host}:{port}", weight))
        else:
            warnings.append(f"line {number}: not an ipvsadm line: {line[:60]}")
    return servers


def parse_save(text: str, warnings: list[str]) -> list[VirtualServer]:
    """`ipvsadm -S -n`: -A adds a virtual server, -a a real server."""
    servers: dict[tuple[str, str], VirtualServer] = {}
    for number, raw in enumerate(text.splitlines(), start=1):
        args = raw.split()
        if not args:
            continue
        if args[0] not in ("-A", "-a") or len(args) < 3 or args[1] not in PROTOCOLS:
            warnings.append(f"line {number}: not an ipvsadm -S line: {raw.strip()[:60]}")
            continue
        proto, target = PROTOCOLS[args[1]], args[2]
        if args[0] == "-A":
            host, port = _split(target)
            vs = VirtualServer(proto, host, port)
            if "-s" in args:
                vs.scheduler = args[args.index("-s") + 1]
            if "-p" in args:
                vs.persistent = int(args[args.index("-p") + 1])
            servers[(proto, target)] = vs
        else:
            vs_found = servers.get((proto, target))
            if vs_found is None or "-r" not in args:
                warnings.append(f"line {number}: real server for unknown virtual {target}")
                continue
            weight = int(args[args.index("-w") + 1]) if "-w" in args else 1
            real = args[args.index("-r") + 1]
            vs_found.reals.append((real, weight))
    return list(servers.values())


def read_ipvsadm(text: str, node_addresses: set[str] | None = None) -> ForwardingTable:
    """`node_addresses`: the node's own addresses, when known. A dump alone shows a node
    address only where one NodePort sits on several addresses; a node whose NodePorts are
    on its node IP alone needs them named."""
    table = ForwardingTable("ipvs")
    is_save = re.search(r"^\s*-A\s+-[tu]\s", text, re.M) is not None
    servers = (parse_save if is_save else parse_list)(text, table.warnings)
    groups: dict[tuple[str, int], list[VirtualServer]] = {}
    for vs in servers:
        groups.setdefault((vs.protocol, vs.port), []).append(vs)
    # an address serving one NodePort on several addresses is a node address: every other
    # virtual server on it in the NodePort range is a NodePort too
    node_addresses = set(node_addresses or ()) | {
        vs.address
        for (_, port), members in groups.items()
        if port in NODE_PORT_RANGE and len({m.address for m in members}) >= 2
        for vs in members
    }
    for (proto, port), members in groups.items():
        addresses = sorted({vs.address for vs in members})
        on_node = port in NODE_PORT_RANGE and bool(set(addresses) & node_addresses)
        if port in NODE_PORT_RANGE and (len(addresses) >= 2 or on_node):
            first = members[0]
            front = table.add(Frontend("nodeport", None, port, proto, addresses=addresses))
            _fill(front, first)
            continue
        for vs in members:
            _fill(table.add(Frontend("clusterip", vs.address, vs.port, proto)), vs)
    table.sort()
    return table


def _fill(front: Frontend, vs: VirtualServer) -> None:
    front.scheduler = vs.scheduler
    front.affinity_seconds = vs.persistent
    front.endpoints = [r for r, _ in vs.reals]
    total = sum(w for _, w in vs.reals)
    front.weights = [w / total if total else 0.0 for _, w in vs.reals]
    front.masquerade_offcluster = None
    if not vs.reals:
        # IPVS answers a virtual server with no real server with ICMP port unreachable:
        # the client sees a refusal, as with a REJECT rule (seen on a Debian 6.1 guest)
        front.no_endpoints = "reject"
