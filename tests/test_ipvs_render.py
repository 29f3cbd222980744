"""The IPVS proxier's text (this kernel has no ip_vs, so loading it is tested only in VMs)."""

from __future__ import annotations

import ipaddress

from kubelab.dataplanes.reference.proxier import IpvsProxier, ProxierContext
from kubelab.model import Endpoint, Service, ServicePort, ServiceState

IP = ipaddress.IPv4Address
CTX = ProxierContext(node="node1", cluster_cidr=ipaddress.IPv4Network("10.244.0.0/16"))


def state(policy: str = "Cluster", affinity: str = "None") -> ServiceState:
    svc = Service(
        "default",
        "web",
        "NodePort",
        IP("10.96.0.20"),
        (ServicePort("http", "TCP", 80, 8080, 30100),),
        "web",
        external_traffic_policy=policy,
        session_affinity=affinity,
    )  # type: ignore[arg-type]
    eps = (
        Endpoint(IP("10.244.1.2"), 8080, "node1", "a"),
        Endpoint(IP("10.244.2.2"), 8080, "node2", "b"),
    )
    return ServiceState(svc, eps)


def render(*states: ServiceState, scheduler: str = "rr") -> dict[str, str]:
    proxier = IpvsProxier(scheduler, {"node1": "192.168.56.11"})
    return IpvsProxier.sections(proxier.render(list(states), CTX))


def test_virtual_servers_for_clusterip_and_nodeport() -> None:
    part = render(state(), scheduler="wlc")
    assert part["addresses"].split() == ["10.96.0.20/32"]
    assert part["ipvsadm"].splitlines() == [
        "-A -t 10.96.0.20:80 -s wlc",
        "-a -t 10.96.0.20:80 -r 10.244.1.2:8080 -m -w 1",
        "-a -t 10.96.0.20:80 -r 10.244.2.2:8080 -m -w 1",
        "-A -t 192.168.56.11:30100 -s wlc",
        "-a -t 192.168.56.11:30100 -r 10.244.1.2:8080 -m -w 1",
        "-a -t 192.168.56.11:30100 -r 10.244.2.2:8080 -m -w 1",
    ]
    assert "add KUBE-CLUSTER-IP 10.96.0.20,tcp:80" in part["ipset"]
    assert "add KUBE-NODE-PORT-TCP 30100" in part["ipset"]
    assert "-m set --match-set KUBE-CLUSTER-IP dst,dst -j ACCEPT" in part["iptables"]


def test_local_policy_and_affinity() -> None:
    part = render(state("Local", "ClientIP"))
    lines = part["ipvsadm"].splitlines()
    assert "-A -t 10.96.0.20:80 -s rr -p 10800" in lines
    assert "-A -t 192.168.56.11:30100 -s rr -p 10800" in lines
    nodeport_reals = [x for x in lines if x.startswith("-a -t 192.168.56.11:30100")]
    assert nodeport_reals == ["-a -t 192.168.56.11:30100 -r 10.244.1.2:8080 -m -w 1"]
    assert "add KUBE-NODE-PORT-LOCAL-TCP 30100" in part["ipset"]
