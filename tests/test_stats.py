"""P99 intervals that respect correlation in time, and the non-decreasing fit behind a trial's knee."""
from __future__ import annotations

import math

import numpy as np
import pytest

from autotune.stats import increasing_fit, p99_interval


def _correlated_level(rng: np.random.Generator, n: int = 6000, episodes: int = 200) -> tuple[np.ndarray, np.ndarray]:
    """60 s of latencies whose level moves in episodes of 0.3 s (as a prefill queue builds and drains): values
    close in time share a factor, so single values are far from independent."""
    times = np.sort(rng.uniform(0, 60, n))
    factor = np.exp(rng.normal(0, 0.35, episodes))[np.minimum((times / 60 * episodes).astype(int), episodes - 1)]
    return 100.0 * factor * rng.lognormal(0, 0.2, n), times


@pytest.mark.slow
def test_the_interval_covers_the_true_p99_about_as_often_as_it_says():
    rng = np.random.default_rng(1)
    truth = np.quantile(np.concatenate([_correlated_level(rng)[0] for _ in range(200)]), 0.99)
    covered = 0
    for seed in range(60):
        values, times = _correlated_level(np.random.default_rng(100 + seed))
        iv = p99_interval(values, times, confidence=0.9, seed=seed)
        assert iv.low <= iv.value <= iv.high
        covered += iv.low <= truth <= iv.high
    # nominal 90%; over 16 batches it runs a little short (82 of 100 seeds here; with 1 s episodes 55 of 100: slow
    # drifts within a run are beyond a single run's interval, and fresh-server repeats are what judge those)
    assert covered >= 45  # 75%


@pytest.mark.slow
def test_resampling_single_values_would_be_far_too_narrow():
    values, times = _correlated_level(np.random.default_rng(7))
    batches = p99_interval(values, times)
    singles = p99_interval(values, np.arange(len(values), dtype=float), n_batches=len(values))
    assert (batches.high - batches.low) > 2 * (singles.high - singles.low)


def test_degenerate_inputs():
    assert math.isnan(p99_interval(np.array([]), np.array([])).value)
    one_time = p99_interval(np.array([5.0, 6.0]), np.array([1.0, 1.0]))
    assert one_time.value == pytest.approx(5.99) and math.isnan(one_time.low)
    nan_dropped = p99_interval(np.array([np.nan, 1.0, 2.0, 3.0]), np.array([0.0, 1.0, 2.0, 3.0]))
    assert nan_dropped.value == pytest.approx(np.quantile([1.0, 2.0, 3.0], 0.99))


def test_increasing_fit_pools_a_lucky_level_with_its_neighbour():
    fitted = increasing_fit([8, 16, 32, 64, 128], [100, 120, 300, 250, 900])
    assert list(fitted) == [100, 120, 275, 275, 900]
    weighted = increasing_fit([32, 64], [300, 250], weights=[1, 3])
    assert list(weighted) == [250, 250]  # the weighted median: most of the requests measured 250
    assert list(increasing_fit([64, 8, 16], [5, 3, 2])) == [5.0, 2.5, 2.5]  # follows x, not the input order


def test_increasing_fit_is_not_carried_by_one_stalled_level():
    """As on an H200 (P99 TTFT ms, runs per level): the stalled level at 152 does not lift the one above it."""
    fitted = increasing_fit([64, 128, 152, 181, 256], [191, 375, 2879, 594, 3698], weights=[1, 1, 1, 3, 1])  # runs pooled
    assert list(fitted) == [191, 375, 594, 594, 3698]
    three = increasing_fit([1, 2, 3], [10, 40, 20], weights=[1, 1, 1])
    assert list(three) == [10, 30, 30]  # two equal weights: midway, as least squares
    assert list(increasing_fit([1, 2, 3, 4], [50, 10, 20, 30], weights=[1, 1, 1, 5])) == [20, 20, 20, 30]
