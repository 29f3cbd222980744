"""Work each node would do on its own (its kube-proxy's sync, its CNI's setup) runs side by
side, a few nodes at a time: the tools it calls (ip, iptables-restore, nft) run in parallel,
the harness's Python between them does not (the GIL), so a few workers get most of it."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

WORKERS = 8
T = TypeVar("T")


def for_each(items: Sequence[T], work: Callable[[T], object], workers: int = WORKERS) -> None:
    """`work(item)` for every item; the first failure is raised once the started ones end
    (those not started yet are dropped). One item, or one worker, runs in this thread."""
    if len(items) <= 1 or workers <= 1:
        for item in items:
            work(item)
        return
    pool = ThreadPoolExecutor(max_workers=min(len(items), workers))
    try:
        for done in [pool.submit(work, item) for item in items]:
            done.result()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
