import math
import random

import numpy as np
import pytest

from latts.core.statistics import latency_stats, mean_acceptance_length, wilson_interval

Z = 1.959964


@pytest.mark.parametrize(
    ("successes", "n", "expected"),
    [
        # Hand-computed: at 0/n the upper bound is (z^2/n) / (1 + z^2/n); 5/10 is symmetric around 0.5.
        (0, 10, (0.0, (Z * Z / 10) / (1 + Z * Z / 10))),
        (10, 10, (1 - (Z * Z / 10) / (1 + Z * Z / 10), 1.0)),
        (5, 10, (0.5 - Z / (1 + Z * Z / 10) * math.sqrt(0.025 + Z * Z / 400), 0.5 + Z / (1 + Z * Z / 10) * math.sqrt(0.025 + Z * Z / 400))),
        (0, 0, (0.0, 1.0)),
    ],
)
def test_wilson_known_values(successes, n, expected):
    lo, hi = wilson_interval(successes, n)
    assert lo == pytest.approx(expected[0], abs=1e-12)
    assert hi == pytest.approx(expected[1], abs=1e-12)


def test_wilson_published_numbers():
    # The textbook values, rounded to 4 places.
    assert wilson_interval(0, 10) == pytest.approx((0.0, 0.2775), abs=5e-5)
    assert wilson_interval(5, 10) == pytest.approx((0.2366, 0.7634), abs=5e-5)
    assert wilson_interval(10, 10) == pytest.approx((0.7225, 1.0), abs=5e-5)
    assert wilson_interval(81, 100) == pytest.approx((0.7222, 0.8749), abs=5e-5)


def test_wilson_rejects_impossible_counts():
    with pytest.raises(ValueError):
        wilson_interval(11, 10)
    with pytest.raises(ValueError):
        wilson_interval(-1, 10)


@pytest.mark.parametrize("n", [1, 2, 3, 10, 101, 1000])
def test_latency_percentiles_match_numpy(n):
    values = [random.Random(n).lognormvariate(0, 1) for _ in range(n)]
    stats = latency_stats(values)
    expected = np.percentile(values, [50, 90, 99])
    assert (stats.p50, stats.p90, stats.p99) == pytest.approx(tuple(expected), rel=1e-12)
    assert stats.mean == pytest.approx(float(np.mean(values)), rel=1e-12)
    assert stats.get("p90") == stats.p90


def test_latency_stats_needs_values():
    with pytest.raises(ValueError):
        latency_stats([])


def test_mean_acceptance_length():
    assert mean_acceptance_length(10, 25) == 3.5
    assert mean_acceptance_length(10, 0) == 1.0
    assert mean_acceptance_length(0, 0) is None
    assert mean_acceptance_length(None, None) is None
