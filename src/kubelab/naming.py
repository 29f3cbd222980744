"""kube-proxy's chain names: constants plus one hash helper (pkg/proxy/iptables/proxier.go)."""

from __future__ import annotations

import base64
import hashlib

# nat and filter chains kube-proxy owns, iptables mode
KUBE_SERVICES = "KUBE-SERVICES"
KUBE_NODEPORTS = "KUBE-NODEPORTS"
KUBE_POSTROUTING = "KUBE-POSTROUTING"
KUBE_MARK_MASQ = "KUBE-MARK-MASQ"
KUBE_EXTERNAL_SERVICES = "KUBE-EXTERNAL-SERVICES"
KUBE_FORWARD = "KUBE-FORWARD"
KUBE_PROXY_FIREWALL = "KUBE-PROXY-FIREWALL"
KUBE_PROXY_CANARY = "KUBE-PROXY-CANARY"

MASQUERADE_MARK = "0x4000"

SVC_PREFIX = "KUBE-SVC-"  # per service port, cluster traffic policy
SVL_PREFIX = "KUBE-SVL-"  # per service port, local traffic policy
EXT_PREFIX = "KUBE-EXT-"  # per service port, external traffic
FW_PREFIX = "KUBE-FW-"  # per service port, loadBalancerSourceRanges
SEP_PREFIX = "KUBE-SEP-"  # per endpoint


def hash16(text: str) -> str:
    """First 16 characters of base32(sha256(text)), kube-proxy's portProtoHash."""
    return base64.b32encode(hashlib.sha256(text.encode()).digest()).decode()[:16]


def _service_hash(port_name: str, protocol: str) -> str:
    return hash16(port_name + protocol.lower())


def svc_chain(port_name: str, protocol: str) -> str:
    return SVC_PREFIX + _service_hash(port_name, protocol)


def svl_chain(port_name: str, protocol: str) -> str:
    return SVL_PREFIX + _service_hash(port_name, protocol)


def ext_chain(port_name: str, protocol: str) -> str:
    return EXT_PREFIX + _service_hash(port_name, protocol)


def fw_chain(port_name: str, protocol: str) -> str:
    return FW_PREFIX + _service_hash(port_name, protocol)


def sep_chain(port_name: str, protocol: str, endpoint: str) -> str:
    """`endpoint` is "ip:port"."""
    return SEP_PREFIX + hash16(port_name + protocol.lower() + endpoint)


def probability(i: int, n: int) -> str:
    """The statistic match of endpoint i (0-based) of n, printed as kube-proxy does."""
    return f"{1.0 / (n - i):0.10f}"
