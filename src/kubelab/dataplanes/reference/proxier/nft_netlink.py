"""One-Service nftables changes as one nf_tables netlink batch, sent straight to the kernel.

Why not `nft -f`: before nft 1.0.6 runs any command it dumps every chain of the table from
the kernel to fill its cache, and the kernel's chain dump restarts its walk at every
message, so at 10,000 Services x 10 endpoints (110,000 chains) the dump alone costs
~0.35 s of a ~0.45 s one-Service change, in libnftables as in the `nft` program (measured).
kube-proxy links newer nftables that filter the cache down to the chains a command names.

This module compiles the proxier's own vocabulary (the rule texts `NftablesProxier` writes
into Service chains, its map elements and affinity sets) into the same bytecode nft 1.0.6
emits for it (read from `nft --debug=netlink,mnl`), and sends it as one atomic batch from a
socket opened in the node's network namespace. A rule outside that vocabulary is refused
with a LabError rather than guessed at. The attributes are packed with `struct`, byte for
byte as in nft's own batches (set user data, concatenated keys included); the proxier's
tests compare the kernel's bytecode after a batch with what `nft -f` leaves.

The kernel still validates every chain reachable from the base chains at each commit that
adds a jump, goto or verdict-map element, whoever writes the batch: at 10,000 Services x 10
endpoints a one-chain `accept` batch commits in ~0.19 s, a `counter` one in ~5 ms
(`kubelab bench scale`, kernel_commit_verdict / kernel_commit_plain).
"""

from __future__ import annotations

import errno
import ipaddress
import itertools
import os
import re
import select
import shlex
import socket
import struct
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

from kubelab.errors import LabError
from kubelab.hosts import Runner

NETLINK_NETFILTER = 12
SOL_NETLINK = 270
NETLINK_CAP_ACK = 10  # acks carry only the header of the message they answer
SO_SNDBUFFORCE, SO_RCVBUFFORCE = 32, 33
REPLY_TIMEOUT_S = 600.0  # a batch of thousands of Services is committed in minutes here

NFNL_SUBSYS_NFTABLES = 10
NFNL_MSG_BATCH_BEGIN, NFNL_MSG_BATCH_END = 0x10, 0x11
NLM_F_REQUEST, NLM_F_ACK, NLM_F_APPEND, NLM_F_CREATE = 0x1, 0x4, 0x800, 0x400
NLMSG_ERROR = 2
NLA_F_NESTED = 0x8000
AF_INET = 2

# nf_tables message types
NEWCHAIN, DELCHAIN, NEWRULE, DELRULE = 3, 5, 6, 8
NEWSET, DELSET, NEWSETELEM, DELSETELEM = 9, 11, 12, 14

# verdict codes
NF_DROP, NF_ACCEPT, NFT_JUMP, NFT_GOTO = 0, 1, -3, -4
VERDICTS = {"jump": NFT_JUMP, "goto": NFT_GOTO}

# expression constants
PAYLOAD_NETWORK, PAYLOAD_TRANSPORT = 1, 2
META_L4PROTO = 16
FIB_RESULT_ADDRTYPE, FIB_F_SADDR, RTN_LOCAL = 3, 1, 2
CMP_EQ, CMP_NEQ = 0, 1
REG_VERDICT, REG_1, REG_2 = 0, 1, 2
NAT_DNAT, NF_NAT_RANGE_PROTO_SPECIFIED = 1, 2
NUMGEN_RANDOM = 1
DYNSET_OP_UPDATE = 1
PROTOCOLS = {"tcp": 6, "udp": 17, "sctp": 132}

# sets: flags and nft's datatypes
SET_ANONYMOUS, SET_CONSTANT, SET_MAP, SET_TIMEOUT, SET_EVAL = 0x1, 0x2, 0x8, 0x10, 0x20
TYPE_INTEGER, TYPE_IPADDR, TYPE_VERDICT = 4, 7, 0xFFFFFF00
# user data nft writes for these two kinds of set (NFTNL_UDATA_SET_*), from its own batches
AFFINITY_SET_UDATA = bytes.fromhex("000402000000")  # key byte order: big endian
NUMGEN_MAP_UDATA = bytes.fromhex("00040100000001040000000004080004010000000100060400000000")


# --- attributes -------------------------------------------------------------------------------


def attr(kind: int, payload: bytes) -> bytes:
    head = struct.pack("=HH", 4 + len(payload), kind)
    return head + payload + b"\0" * (-len(payload) % 4)


def nested(kind: int, *children: bytes) -> bytes:
    return attr(kind | NLA_F_NESTED, b"".join(children))


def u32(kind: int, value: int) -> bytes:
    return attr(kind, struct.pack(">I", value & 0xFFFFFFFF))


def u64(kind: int, value: int) -> bytes:
    return attr(kind, struct.pack(">Q", value))


def string(kind: int, text: str) -> bytes:
    return attr(kind, text.encode() + b"\0")


def comment_udata(text: str) -> bytes:
    """A comment as nftnl user data: type 0, length, the text with its NUL."""
    raw = text.encode() + b"\0"
    return struct.pack("BB", 0, len(raw)) + raw


def verdict_data(kind: int, verb: str, chain: str | None = None) -> bytes:
    """NFTA_*_DATA holding a verdict: drop, accept, or jump/goto a chain."""
    if verb in VERDICTS:
        assert chain is not None
        body = u32(1, VERDICTS[verb]) + string(2, chain)
    else:
        body = u32(1, {"drop": NF_DROP, "accept": NF_ACCEPT}[verb])
    return nested(kind, nested(2, body))


def value_data(kind: int, raw: bytes) -> bytes:
    return nested(kind, attr(1, raw))


# --- expressions ------------------------------------------------------------------------------


def expr(name: str, *attrs: bytes) -> bytes:
    return nested(1, string(1, name), nested(2, *attrs))


def payload(base: int, offset: int, length: int) -> bytes:
    return expr("payload", u32(1, REG_1), u32(2, base), u32(3, offset), u32(4, length))


def cmp(op: int, raw: bytes) -> bytes:
    return expr("cmp", u32(1, REG_1), u32(2, op), value_data(3, raw))


def meta_l4proto() -> bytes:
    return expr("meta", u32(2, META_L4PROTO), u32(1, REG_1))


def immediate_verdict(verb: str, chain: str | None) -> bytes:
    return expr("immediate", u32(1, REG_VERDICT), verdict_data(2, verb, chain))


def immediate_value(reg: int, raw: bytes) -> bytes:
    return expr("immediate", u32(1, reg), value_data(2, raw))


def ip_match(field_name: str, op: int, text: str) -> list[bytes]:
    """`ip saddr|daddr [!=] ADDR[/LEN]` as nft compiles it: a byte-aligned prefix loads and
    compares only its bytes; any other prefix loads four bytes and masks them first."""
    offset = 12 if field_name == "saddr" else 16
    net = ipaddress.IPv4Network(text, strict=False)
    if net.prefixlen % 8 == 0:
        size = net.prefixlen // 8
        return [payload(PAYLOAD_NETWORK, offset, size), cmp(op, net.network_address.packed[:size])]
    mask = net.netmask.packed
    bitwise = expr(
        "bitwise",
        u32(1, REG_1),
        u32(2, REG_1),
        u32(3, 4),
        value_data(4, mask),
        value_data(5, b"\0\0\0\0"),
    )
    return [payload(PAYLOAD_NETWORK, offset, 4), bitwise, cmp(op, net.network_address.packed)]


def l4proto_match(proto: str) -> list[bytes]:
    return [meta_l4proto(), cmp(CMP_EQ, bytes([PROTOCOLS[proto]]))]


# --- the vocabulary ---------------------------------------------------------------------------


@dataclass
class _Rule:
    """One rule being compiled: its expressions and the anonymous maps it needs."""

    exprs: list[bytes] = field(default_factory=list)
    comment: str | None = None
    anon_maps: list[tuple[int, int, list[tuple[int, str, str]]]] = field(default_factory=list)


UPDATE_KEY = ["{", "ip", "saddr", "}"]  # `update @set { ip saddr }`: the affinity key


class RuleCompiler:
    """Compiles the proxier's rule texts; `ids` numbers the batch's sets (anonymous maps
    are found by that number, not by name)."""

    def __init__(self, ids: Iterator[int]) -> None:
        self.ids = ids

    def compile(self, text: str) -> _Rule:
        rule = _Rule()
        tokens = shlex.split(text.replace("{", " { ").replace("}", " } ").replace(",", " , "))
        i = 0
        try:
            while i < len(tokens):
                i = self._term(rule, tokens, i, text)
        except (IndexError, ValueError, KeyError):  # a term cut short or a bad value
            raise self._unknown(text) from None
        return rule

    def _term(self, rule: _Rule, t: list[str], i: int, text: str) -> int:
        word = t[i]
        if word == "ip" and t[i + 1] in ("saddr", "daddr"):
            field_name, i = t[i + 1], i + 2
            op = CMP_EQ
            if t[i] == "!=":
                op, i = CMP_NEQ, i + 1
            if t[i] == "{" and t[i + 2] == "}":  # a one-element set: nft compiles a match
                i += 1
            if t[i].startswith("@"):
                if op != CMP_EQ:
                    raise self._unknown(text)
                offset = 12 if field_name == "saddr" else 16
                rule.exprs.append(payload(PAYLOAD_NETWORK, offset, 4))
                rule.exprs.append(expr("lookup", u32(2, REG_1), string(1, t[i][1:])))
            else:
                rule.exprs += ip_match(field_name, op, t[i])
            return i + 2 if t[i + 1 : i + 2] == ["}"] else i + 1
        if word in PROTOCOLS and t[i + 1] == "dport":
            port = int(t[i + 2])
            rule.exprs += l4proto_match(word)
            rule.exprs += [payload(PAYLOAD_TRANSPORT, 2, 2), cmp(CMP_EQ, struct.pack(">H", port))]
            return i + 3
        if t[i : i + 4] == ["fib", "saddr", "type", "local"]:
            fib = expr("fib", u32(1, REG_1), u32(2, FIB_RESULT_ADDRTYPE), u32(3, FIB_F_SADDR))
            rule.exprs += [fib, cmp(CMP_EQ, struct.pack("=I", RTN_LOCAL))]
            return i + 4
        if t[i : i + 2] == ["meta", "l4proto"]:
            rule.exprs += l4proto_match(t[i + 2])
            return i + 3
        if word in VERDICTS:
            rule.exprs.append(immediate_verdict(word, t[i + 1]))
            return i + 2
        if word in ("drop", "accept"):
            rule.exprs.append(immediate_verdict(word, None))
            return i + 1
        if word == "comment":
            rule.comment = t[i + 1]
            return i + 2
        if t[i : i + 3] == ["numgen", "random", "mod"] and t[i + 4 : i + 6] == ["vmap", "{"]:
            modulus = int(t[i + 3])
            end = t.index("}", i)
            elements = []
            for item in " ".join(t[i + 6 : end]).split(","):
                key, _, verdict = item.strip().partition(" : ")
                verb, _, chain = verdict.partition(" ")
                elements.append((int(key), verb, chain))
            set_id = next(self.ids)
            rule.anon_maps.append((set_id, modulus, elements))
            rule.exprs.append(
                expr("numgen", u32(1, REG_1), u32(2, modulus), u32(3, NUMGEN_RANDOM), u32(4, 0))
            )
            # the anonymous map is found by its id in this batch, not by its name
            rule.exprs.append(
                expr(
                    "lookup",
                    u32(2, REG_1),
                    u32(3, REG_VERDICT),
                    string(1, "__map%d"),
                    u32(4, set_id),
                )
            )
            return end + 1
        if word == "update" and t[i + 1].startswith("@") and t[i + 2 : i + 6] == UPDATE_KEY:
            rule.exprs.append(payload(PAYLOAD_NETWORK, 12, 4))
            rule.exprs.append(
                expr("dynset", u32(4, REG_1), u32(3, DYNSET_OP_UPDATE), string(1, t[i + 1][1:]))
            )
            return i + 6
        if t[i : i + 2] == ["dnat", "to"]:
            address, _, to_port = t[i + 2].rpartition(":")
            rule.exprs.append(immediate_value(REG_1, ipaddress.IPv4Address(address).packed))
            rule.exprs.append(immediate_value(REG_2, struct.pack(">H", int(to_port))))
            rule.exprs.append(
                expr(
                    "nat",
                    u32(1, NAT_DNAT),
                    u32(2, AF_INET),
                    u32(3, REG_1),
                    u32(5, REG_2),
                    u32(7, NF_NAT_RANGE_PROTO_SPECIFIED),
                )
            )
            return i + 3
        raise self._unknown(text)

    @staticmethod
    def _unknown(text: str) -> LabError:
        return LabError(f"nft netlink: no encoding for rule {text!r}; extend nft_netlink.py")


# --- map keys ---------------------------------------------------------------------------------

ELEMENT = re.compile(r'^(?P<key>.*?)(?: comment "(?P<comment>[^"]*)")?$')


def element_key(text: str) -> bytes:
    """`10.96.0.1 . tcp . 80` or `tcp . 30080` as a concatenated key: each field padded to
    four bytes, as the kernel stores concatenations."""
    out = b""
    for part in (p.strip() for p in text.split(" . ")):
        if part in PROTOCOLS:
            raw = bytes([PROTOCOLS[part]])
        elif part.isdigit():
            raw = struct.pack(">H", int(part))
        else:
            raw = ipaddress.IPv4Address(part).packed
        out += raw + b"\0" * (-len(raw) % 4)
    return out


def element_verdict(text: str) -> bytes:
    verb, _, chain = text.partition(" ")
    return verdict_data(2, verb, chain or None)


def _chunks(items: list[bytes], limit: int = 32_000) -> list[list[bytes]]:
    """Elements split over messages: an attribute's length is 16 bits, so one message
    holds some hundreds of elements (nft splits them the same way)."""
    out: list[list[bytes]] = [[]]
    size = 0
    for item in items:
        if out[-1] and size + len(item) > limit:
            out.append([])
            size = 0
        out[-1].append(item)
        size += len(item)
    return out


# --- the batch --------------------------------------------------------------------------------


@dataclass
class Batch:
    """nf_tables messages for one table, in order, each with the command it came from."""

    table: str
    messages: list[tuple[int, int, bytes, str]] = field(default_factory=list)
    ids: Iterator[int] = field(default_factory=lambda: itertools.count(1))
    compiler: RuleCompiler = field(init=False)

    def __post_init__(self) -> None:
        self.compiler = RuleCompiler(self.ids)

    def _add(self, msg_type: int, flags: int, body: bytes, command: str) -> None:
        self.messages.append((msg_type, flags, body, command))

    def _table(self) -> bytes:
        return string(1, self.table)

    def add_chain(self, name: str) -> None:
        self._add(NEWCHAIN, NLM_F_CREATE, self._table() + string(3, name), f"add chain {name}")

    def flush_chain(self, name: str) -> None:
        self._add(DELRULE, 0, self._table() + string(2, name), f"flush chain {name}")

    def delete_chain(self, name: str) -> None:
        self._add(DELCHAIN, 0, self._table() + string(3, name), f"delete chain {name}")

    def add_affinity_set(self, name: str, timeout_s: int) -> None:
        body = (
            self._table()
            + string(2, name)
            + u32(3, SET_TIMEOUT | SET_EVAL)
            + u32(4, TYPE_IPADDR)
            + u32(5, 4)
            + u32(10, next(self.ids))
            + u64(11, timeout_s * 1000)
            + attr(13, AFFINITY_SET_UDATA)
        )
        self._add(NEWSET, NLM_F_CREATE, body, f"add set {name}")

    def delete_set(self, name: str) -> None:
        self._add(DELSET, 0, self._table() + string(2, name), f"delete set {name}")

    def add_rule(self, chain: str, text: str) -> None:
        rule = self.compiler.compile(text)
        for set_id, size, elements in rule.anon_maps:
            self._anon_map(set_id, size, elements, text)
        body = self._table() + string(2, chain) + nested(4, *rule.exprs)
        if rule.comment is not None:
            body += attr(7, comment_udata(rule.comment))
        self._add(NEWRULE, NLM_F_CREATE | NLM_F_APPEND, body, f"add rule {chain} {text}")

    def add_probe_rule(self, chain: str, with_verdict: bool) -> None:
        """A rule that matches nothing useful: `accept` (a verdict, so the kernel
        revalidates the table at commit) or `counter` (no verdict, no revalidation)."""
        exprs = immediate_verdict("accept", None) if with_verdict else expr("counter")
        body = self._table() + string(2, chain) + nested(4, exprs)
        self._add(NEWRULE, NLM_F_CREATE | NLM_F_APPEND, body, f"add rule {chain} (probe)")

    def _anon_map(
        self, set_id: int, size: int, elements: list[tuple[int, str, str]], text: str
    ) -> None:
        body = (
            self._table()
            + string(2, "__map%d")
            + u32(3, SET_ANONYMOUS | SET_CONSTANT | SET_MAP)
            + u32(4, TYPE_INTEGER)
            + u32(5, 4)
            + u32(6, TYPE_VERDICT)
            + u32(7, 0)
            + u32(10, set_id)
            + nested(9, u32(1, size))
            + attr(13, NUMGEN_MAP_UDATA)
        )
        self._add(NEWSET, NLM_F_CREATE, body, f"the vmap of {text}")
        items = [
            nested(1, value_data(1, struct.pack("=I", key)), verdict_data(2, verb, chain or None))
            for key, verb, chain in elements
        ]
        for chunk in _chunks(items):
            body = self._table() + string(2, "__map%d") + u32(4, set_id) + nested(3, *chunk)
            self._add(NEWSETELEM, NLM_F_CREATE, body, f"the vmap elements of {text}")

    def add_elements(self, map_name: str, elements: dict[str, str]) -> None:
        """Elements of a verdict map, or of a plain set where the verdict is ""."""
        items = []
        for key_text, verdict in elements.items():
            match = ELEMENT.match(key_text)
            assert match is not None
            item = value_data(1, element_key(match["key"]))
            if verdict:
                item += element_verdict(verdict)
            if match["comment"] is not None:
                item += attr(6, comment_udata(match["comment"]))
            items.append(nested(1, item))
        for chunk in _chunks(items):
            body = self._table() + string(2, map_name) + nested(3, *chunk)
            self._add(NEWSETELEM, NLM_F_CREATE, body, f"add element {map_name} {{ ... }}")

    def delete_elements(self, map_name: str, keys: list[str]) -> None:
        items = [nested(1, value_data(1, element_key(k.split(" comment ")[0]))) for k in keys]
        for chunk in _chunks(items):
            body = self._table() + string(2, map_name) + nested(3, *chunk)
            self._add(DELSETELEM, 0, body, f"delete element {map_name} {{ ... }}")

    # --- sending ------------------------------------------------------------------------------

    def encode(self) -> bytes:
        """Batch begin (sequence 1), the messages (2, 3, ...), batch end."""

        def message(msg_type: int, flags: int, seq: int, body: bytes, family: int) -> bytes:
            head = struct.pack("=BBH", family, 0, socket.htons(NFNL_SUBSYS_NFTABLES))
            if msg_type not in (NFNL_MSG_BATCH_BEGIN, NFNL_MSG_BATCH_END):
                head = struct.pack("=BBH", family, 0, 0)
                msg_type |= NFNL_SUBSYS_NFTABLES << 8
            payload_ = head + body
            return struct.pack("=IHHII", 16 + len(payload_), msg_type, flags, seq, 0) + payload_

        out = [message(NFNL_MSG_BATCH_BEGIN, NLM_F_REQUEST, 1, b"", 0)]
        last = 1 + len(self.messages)
        for seq, (msg_type, flags, body, _) in enumerate(self.messages, start=2):
            # the kernel answers a failed message always and a good one only when asked: an
            # ack for the last message alone says the whole batch was taken
            ack = NLM_F_ACK if seq == last else 0
            out.append(message(msg_type, NLM_F_REQUEST | ack | flags, seq, body, AF_INET))
        out.append(message(NFNL_MSG_BATCH_END, NLM_F_REQUEST, last + 1, b"", 0))
        return b"".join(out)

    def send(self, sock: socket.socket, node: str) -> None:
        """Send the batch over `sock`, a NETLINK_NETFILTER socket into the node's kernel
        (which this closes); all of it or none is applied. A rejected message raises a
        LabError naming its command and the kernel's reason."""
        if not self.messages:
            sock.close()
            return
        data = self.encode()
        try:
            sock.setsockopt(SOL_NETLINK, NETLINK_CAP_ACK, 1)
            sock.setsockopt(socket.SOL_SOCKET, SO_SNDBUFFORCE, max(2 * len(data), 1 << 20))
            sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, 8 << 20)
            sock.bind((0, 0))
            sock.send(data)
            errors = self._replies(sock, node)
        finally:
            sock.close()
        if errors:
            seq, code = errors[0]
            index = seq - 2  # see encode()
            what = self.messages[index][3] if 0 <= index < len(self.messages) else "the commit"
            more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
            raise LabError(
                f"{node}: nf_tables refused {what!r}{more}: {os.strerror(code)} "
                f"({errno.errorcode.get(code, code)}); nothing of this change was applied"
            )

    def _replies(self, sock: socket.socket, node: str) -> list[tuple[int, int]]:
        """The errors the kernel sent, as (sequence number, errno). Its answers are all
        queued before send() returns: wait for the first, then take what is there."""
        errors: list[tuple[int, int]] = []
        if not select.select([sock], [], [], REPLY_TIMEOUT_S)[0]:
            raise LabError(f"{node}: nf_tables did not answer in {REPLY_TIMEOUT_S}s")
        while True:
            try:
                buf = sock.recv(1 << 20, socket.MSG_DONTWAIT)
            except BlockingIOError:
                return errors
            except OSError as exc:
                if exc.errno != errno.ENOBUFS:
                    raise
                # too many refusals to queue: the batch failed, whatever else it said
                return errors or [(0, errno.ENOBUFS)]
            offset = 0
            while offset + 16 <= len(buf):
                length, msg_type, _, seq, _ = struct.unpack_from("=IHHII", buf, offset)
                if msg_type == NLMSG_ERROR:
                    code = -struct.unpack_from("=i", buf, offset + 16)[0]
                    if code:
                        errors.append((seq, code))
                offset += (length + 3) & ~3


PROBE_CHAIN = "kubelab-commit-probe"


def commit_floor(runner: Runner, table: str, with_verdict: bool) -> float | None:
    """Seconds the node's kernel takes to commit a batch adding one unreferenced chain with
    one rule to `table`: with a verdict rule this is the revalidation every Service change
    pays at the table's current size; without one, the commit's fixed cost. The chain is
    removed again afterwards. None when the node cannot be reached over netlink."""
    sock = runner.netlink(NETLINK_NETFILTER)
    if sock is None:
        return None
    add = Batch(table)
    add.add_chain(PROBE_CHAIN)
    add.add_probe_rule(PROBE_CHAIN, with_verdict)
    started = time.perf_counter()
    add.send(sock, runner.name)
    seconds = time.perf_counter() - started
    remove = Batch(table)
    remove.flush_chain(PROBE_CHAIN)
    remove.delete_chain(PROBE_CHAIN)
    sock = runner.netlink(NETLINK_NETFILTER)
    assert sock is not None
    remove.send(sock, runner.name)
    return seconds
