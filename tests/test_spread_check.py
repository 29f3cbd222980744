"""The chi-square check of an endpoint spread: its false-alarm rate and its power, on
seeded samples of the size the clusterip scenario draws (1,200 over 6 endpoints)."""

from __future__ import annotations

import numpy as np

from kubelab.checks import SPREAD_ALPHA, uniform_spread

PODS = [f"echo-{i}" for i in range(6)]
N = 1200
TRIALS = 400


class Collected:
    def __init__(self) -> None:
        self.failures: list[str] = []

    def metric(self, name: str, value: float, unit: str = "", detail: str = "") -> None:
        pass

    def expect(self, condition: bool, message: str) -> bool:
        if not condition:
            self.failures.append(message)
        return condition


def rejections(shares: list[float], seed: int) -> int:
    rng = np.random.default_rng(seed)
    rejected = 0
    for _ in range(TRIALS):
        names = list(rng.choice(PODS, size=N, p=shares))
        record = Collected()
        spread = uniform_spread(names, set(PODS), record)
        assert spread.n == N and sum(spread.counts.values()) == N
        rejected += bool(record.failures)
    return rejected


def test_a_fair_spread_is_almost_never_rejected() -> None:
    assert SPREAD_ALPHA == 0.0001
    assert rejections([1 / 6] * 6, seed=1) == 0  # expected 0.04 of 400


def test_one_endpoint_drawing_23_percent_is_caught_most_of_the_time() -> None:
    skewed = [0.23] + [0.77 / 5] * 5
    caught = rejections(skewed, seed=2)
    assert caught / TRIALS >= 0.8, caught  # 88% by the noncentral chi-square


def test_the_failure_names_the_counts_and_the_sample_size() -> None:
    record = Collected()
    uniform_spread(["echo-0"] * 600 + ["echo-1"] * 600, set(PODS[:3]), record)
    assert "n=1200" in record.failures[0] and "echo-2=0" in record.failures[0]
