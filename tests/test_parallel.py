"""for_each, which runs each node's own work side by side: every item is done, the first
failure is raised, and work not started yet after a failure is dropped."""

from __future__ import annotations

import threading
import time

import pytest

from kubelab.parallel import for_each


def test_every_item_runs_side_by_side() -> None:
    started: list[int] = []
    both_running = threading.Barrier(2, timeout=5)

    def work(item: int) -> None:
        started.append(item)
        if item < 2:
            both_running.wait()  # would time out (BrokenBarrierError) if they ran in turn

    for_each([0, 1, 2, 3], work, workers=2)
    assert sorted(started) == [0, 1, 2, 3]


def test_the_first_failure_is_raised_and_later_work_dropped() -> None:
    done: list[int] = []

    def work(item: int) -> None:
        if item == 0:
            raise RuntimeError("node0: iptables-restore failed")
        time.sleep(0.05)
        done.append(item)

    with pytest.raises(RuntimeError, match="node0"):
        for_each(list(range(50)), work, workers=2)
    assert len(done) < 49, "work queued after the failure ran anyway"


def test_one_item_runs_in_the_calling_thread() -> None:
    seen: list[threading.Thread] = []
    for_each(["node1"], lambda _: seen.append(threading.current_thread()))
    assert seen == [threading.current_thread()]
