"""SIGTERM stops kubelab the way Ctrl-C does, and tear-down is shielded from a second signal.

Python's default SIGTERM ends the process at once, skipping every `finally`: the lab would
be left behind. Raising `Terminated` (a KeyboardInterrupt) instead sends SIGTERM down the
path Ctrl-C already takes: pytest stops the scenarios, `run` tears the lab down and renders
the report marked incomplete. SIGKILL cannot be caught; the next `up` or `down` cleans.
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
_received: list[int] = []


class Terminated(KeyboardInterrupt):
    """SIGTERM arrived: stop as for Ctrl-C."""


_installed_by: list[int] = []  # the pid whose stack may unwind on a stop signal


def _stop(signum: int, frame: FrameType | None) -> None:
    if _installed_by and os.getpid() != _installed_by[0]:
        # a forked child (pyroute2's netns helper, multiprocessing) must not unwind the
        # copy of kubelab's stack it carries: that would tear the lab down from there
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)
        return
    _received.append(signum)
    raise Terminated() if signum == signal.SIGTERM else KeyboardInterrupt()


def _defaults_in_child() -> None:
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.default_int_handler)


def install() -> None:
    """Make SIGTERM (and SIGINT) raise; call once, from the command line's main thread.
    Forked children get the default handlers back."""
    if not _installed_by:
        _installed_by.append(os.getpid())
        os.register_at_fork(after_in_child=_defaults_in_child)
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
