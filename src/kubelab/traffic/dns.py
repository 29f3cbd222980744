"""A pod's view of cluster DNS, read from what the pod prints: its resolv.conf, and what
`dig +noall +answer` answers, one line per resource record, `NAME TTL CLASS TYPE DATA`
separated by blanks or tabs (a CNAME's chain comes first, then the addresses it led to).
Used by the DNS scenario, which runs both inside a pod (the agnhost image carries dig)
through agnhost netexec's /shell."""

from __future__ import annotations

import shlex
from typing import NamedTuple


class Resolver(NamedTuple):
    nameservers: list[str]
    search: list[str]
    options: dict[str, str]  # ndots -> "5"; a bare option (rotate) -> ""


def resolv_conf(text: str) -> Resolver:
    """resolv.conf's nameserver, search and options lines (the last search line wins, as
    in the resolver)."""
    servers: list[str] = []
    search: list[str] = []
    options: dict[str, str] = {}
    for line in text.splitlines():
        key, *values = line.split() or [""]
        if key == "nameserver":
            servers += values
        elif key == "search":
            search = values
        elif key == "options":
            options |= {k: v for k, _, v in (o.partition(":") for o in values)}
    return Resolver(servers, search, options)


class Record(NamedTuple):
    name: str  # as dig prints it: fully qualified, with the trailing dot
    type: str  # A, AAAA, CNAME, SRV, ...
    data: str


def answers(text: str) -> list[Record]:
    """The records of dig's answer section; comment lines (`;`) and blank ones skipped."""
    out = []
    for line in text.splitlines():
        fields = line.split()
        if not fields or fields[0].startswith(";"):
            continue
        if len(fields) < 5 or not fields[1].isdigit():
            raise ValueError(f"not a dig answer line (NAME TTL CLASS TYPE DATA): {line!r}")
        out.append(Record(fields[0], fields[3].upper(), " ".join(fields[4:])))
    return out


def dig_command(name: str, rtype: str = "A", search: bool = False) -> str:
    """The dig command line for one query (through the pod's resolv.conf search path
    when `search`: how the pod's own lookups complete a short name)."""
    flags = ["+noall", "+answer", *(["+search"] if search else [])]
    return shlex.join(["dig", *flags, name, rtype])
