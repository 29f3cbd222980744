"""Parse rule lines as `iptables-save` and `iptables -S` print them.

Pure functions over text. This is the first piece of the rule auditor: it reads one rule
into its chain, matches, target and the two things load balancing depends on (the
statistic probability and the comment naming the Service).
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Rule:
    chain: str
    target: str | None
    target_args: tuple[str, ...] = ()
    comment: str | None = None
    probability: float | None = None
    probability_text: str | None = None
    args: tuple[str, ...] = field(default=(), repr=False)

    @property
    def conditions(self) -> tuple[str, ...]:
        """The match arguments only: no chain, no comment, no target."""
        out: list[str] = []
        args = self.args[2:]
        i = 0
        while i < len(args):
            if args[i] in ("-j", "-g"):
                break
            if args[i : i + 2] == ("-m", "comment"):
                i += 2
                continue
            if args[i] == "--comment":
                i += 2
                continue
            out.append(args[i])
            i += 1
        return tuple(out)

    def has(self, *tokens: str) -> bool:
        """Whether the rule's arguments contain `tokens` in sequence (e.g. "-s", "10.0.0.0/8")."""
        n = len(tokens)
        return any(self.args[i : i + n] == tokens for i in range(len(self.args) - n + 1))


def parse_rule(line: str) -> Rule | None:
    """One `-A CHAIN ...` line, or None for anything else (-P, -N, comments, table lines)."""
    line = line.strip()
    if line.startswith("[") and "]" in line:  # "[packets:bytes] -A ..." from iptables-save -c
        line = line.split("]", 1)[1].strip()
    if not line.startswith("-A "):
        return None
    args = tuple(shlex.split(line))
    chain = args[1]
    target = None
    target_args: tuple[str, ...] = ()
    comment = None
    prob_text = None
    i = 2
    while i < len(args):
        tok = args[i]
        if tok in ("-j", "-g") and i + 1 < len(args):
            target = args[i + 1]
            target_args = args[i + 2 :]
            break
        if tok == "--comment" and i + 1 < len(args):
            comment = args[i + 1]
            i += 2
            continue
        if tok == "--probability" and i + 1 < len(args):
            prob_text = args[i + 1]
            i += 2
            continue
        i += 1
    return Rule(
        chain=chain,
        target=target,
        target_args=target_args,
        comment=comment,
        probability=float(prob_text) if prob_text is not None else None,
        probability_text=prob_text,
        args=args,
    )


def parse_rules(text: str) -> list[Rule]:
    return [r for r in (parse_rule(line) for line in text.splitlines()) if r is not None]
