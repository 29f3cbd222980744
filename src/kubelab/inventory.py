"""What a substrate hands the rest of the lab: its members, by name and address."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass


@dataclass(frozen=True)
class Member:
    """A node or the client, as the substrate knows it."""

    name: str
    ip: ipaddress.IPv4Address


@dataclass(frozen=True)
class Inventory:
    nodes: tuple[Member, ...]
    client: Member

    def members(self) -> tuple[Member, ...]:
        return (*self.nodes, self.client)

    def node(self, name: str) -> Member:
        for member in self.nodes:
            if member.name == name:
                return member
        raise KeyError(f"no node named {name!r}; nodes are {[m.name for m in self.nodes]}")
