"""SIGTERM stops kubelab the way Ctrl-C does, and tear-down is shielded from a second signal.

Python's default SIGTERM ends the process at once, skipping every `finally`: the lab would
be left behind. Raising `Terminated` (a KeyboardInterrupt) instead sends SIGTERM down the
path Ctrl-C already takes: pytest stops the scenarios, `run` tears the lab down and renders
the report marked incomplete. SIGKILL cannot be caught; the next `up` or `down` cleans.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
_received: list[int] = []


class Terminated(KeyboardInterrupt):
    """SIGTERM arrived: stop as for Ctrl-C."""


def _stop(signum: int, frame: FrameType | None) -> None:
    _received.append(signum)
    raise Terminated() if signum == signal.SIGTERM else KeyboardInterrupt()


def install() -> None:
    """Make SIGTERM (and SIGINT) raise; call once, from the command line's main thread."""
    for sig in STOP_SIGNALS:
        signal.signal(sig, _stop)


def interrupted_exit_code() -> int:
    """What a shell reports for the signal that stopped the run: 143 SIGTERM, 130 SIGINT."""
    return 128 + (_received[-1] if _received else signal.SIGINT)


@contextmanager
def shielded() -> Iterator[list[int]]:
    """Hold SIGINT and SIGTERM while the body runs (tear-down must finish; a library that
    polls for cancellation, like ansible-runner, is handed the list of held signals); the
    held signal is raised afterwards. Outside the main thread signals cannot be held."""
    held: list[int] = []
    if threading.current_thread() is not threading.main_thread():
        yield held
        return
    previous = {sig: signal.signal(sig, lambda s, _f: held.append(s)) for sig in STOP_SIGNALS}
    try:
        yield held
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if held:
            _stop(held[-1], None)
