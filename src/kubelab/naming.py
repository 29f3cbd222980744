"""kube-proxy's chain names: constants plus one hash helper (pkg/proxy/iptables/proxier.go)."""

from __future__ import annotations

import base64
import hashlib
import os
from pathlib import Path

# Every namespace, process and file of lab <id> carries "kl-<id>-" or "/run/kubelab/<id>".
LAB_PREFIX = "kl"
STATE_ROOT = "/run/kubelab"


def lab_prefix(lab_id: str) -> str:
    """Every namespace of lab `lab_id` starts with this. Lab ids contain no '-', so the
    prefix of lab 'a' never matches lab 'ab'."""
    return f"{LAB_PREFIX}-{lab_id}-"


def lab_netns(lab_id: str, member: str) -> str:
    return f"{lab_prefix(lab_id)}{member}"


def state_dir(lab_id: str, state_root: Path | None = None) -> Path:
    """Where this machine keeps a lab's state (ssh_config, inventory, status):
    KUBELAB_STATE_DIR, default STATE_ROOT, then the lab's id."""
    root = state_root or Path(os.environ.get("KUBELAB_STATE_DIR", STATE_ROOT))
    return root / lab_id


def member_dir(lab_id: str, member: str) -> str:
    """Where the lab keeps files on a member (shipped programs, plans, samples, saved
    rules). Under the lab's state root, so `down` finds everything by the lab's id."""
    return f"{STATE_ROOT}/{lab_id}/members/{member}"


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


# --- nftables mode (pkg/proxy/nftables/proxier.go) ---------------------------------------------

NFT_TABLE = "kube-proxy"
NFT_MASQUERADE_MARK = "0x004000"  # fmt.Sprintf("%#08x", 1<<14), as kube-proxy prints it


def nft_hash_and_truncate(name: str) -> str:
    """kube-proxy's hashAndTruncate: 8 chars of base32(sha256(name)), "-", then the name."""
    encoded = base64.b32encode(hashlib.sha256(name.encode()).digest()).decode()
    out = f"{encoded[:8]}-{name}"
    limit = 256 - 16  # knftables.NameLengthMax - chainNamePrefixLengthMax
    return out if len(out) <= limit else out[: limit - 3] + "..."


def nft_service_base(namespace: str, name: str, protocol: str, port_name: str | None) -> str:
    """ "HASH-namespace/serviceName/protocol/portName", e.g. "ULMVA6XW-ns1/svc1/tcp/p80"."""
    return nft_hash_and_truncate(f"{namespace}/{name}/{protocol.lower()}/{port_name or ''}")


def nft_endpoint_base(
    namespace: str, name: str, protocol: str, port_name: str | None, ip: str, port: int
) -> str:
    """ "HASH-namespace/serviceName/protocol/portName__endpointIP/endpointPort"."""
    return nft_hash_and_truncate(
        f"{namespace}/{name}/{protocol.lower()}/{port_name or ''}__{ip}/{port}"
    )
