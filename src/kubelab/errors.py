"""Exceptions. Each carries one line meant for a person: what is wrong and how to fix it."""

from __future__ import annotations


class KubelabError(Exception):
    """Base of every error kubelab raises on purpose."""

    exit_code = 1


class SpecError(KubelabError):
    """The lab spec (or another input) is invalid. Raised before anything is built."""

    exit_code = 2


class LabError(KubelabError):
    """The lab could not be built, reached or torn down."""

    exit_code = 1


class EnvironmentMissing(KubelabError):
    """The machine lacks what the lab needs (root, a tool, a kernel feature)."""

    exit_code = 2

    @classmethod
    def first_of(cls, lines: list[str]) -> EnvironmentMissing:
        """The first missing thing's line; `kubelab doctor` lists them all."""
        more = f"; `kubelab doctor` on this lab lists all {len(lines)}" if len(lines) > 1 else ""
        return cls(lines[0] + more)
