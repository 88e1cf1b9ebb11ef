import math
import random

import numpy as np
import pytest

from latts.core.statistics import answer_shift_p_value, latency_stats, mean_acceptance_length, random_subsets, wilson_interval

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


def _answers(rng: random.Random, p_right: float, n: int) -> list[str | None]:
    """n branch answers: the right one with probability p_right, else a wrong one or none at all."""
    return ["42" if rng.random() < p_right else rng.choice(["41", "43", "7", None]) for _ in range(n)]


def _study(rng: random.Random, shift: float) -> tuple[list, list]:
    """24 problems of varied difficulty: 8 baseline branches, 4 candidate branches with accuracy scaled by `shift`."""
    difficulty = [rng.uniform(0.2, 0.9) for _ in range(24)]
    return [_answers(rng, p, 8) for p in difficulty], [_answers(rng, p * shift, 4) for p in difficulty]


def test_answer_shift_passes_honest_samples_at_the_documented_rate():
    from latts.optimizer.losslessness import LOSSY_BELOW_P

    rng = random.Random(0)
    p_values = [answer_shift_p_value(*_study(rng, 1.0), permutations=999, seed=i) for i in range(200)]
    flagged = sum(p < LOSSY_BELOW_P for p in p_values)
    # 1% of 200 is 2; Binomial(200, 0.01) exceeds 7 with probability < 0.001.
    assert flagged <= 7, flagged
    # And the p-values are spread as a valid test's are: about half below 0.5.
    assert 70 <= sum(p < 0.5 for p in p_values) <= 130


def test_answer_shift_flags_a_corrupted_distribution():
    rng = random.Random(1)
    p_values = [answer_shift_p_value(*_study(rng, 0.3), permutations=999, seed=i) for i in range(20)]
    assert max(p_values) < 0.01, p_values


def test_answer_shift_edge_cases():
    same = [["1", "1"], ["2", "2"]]
    assert answer_shift_p_value(same, same) == 1.0  # nothing differs under any permutation
    assert answer_shift_p_value([["1"] * 8], [["2"] * 8], permutations=99) == pytest.approx(1 / 100)
    with pytest.raises(ValueError, match="same problems"):
        answer_shift_p_value([["1"]], [["1"], ["2"]])


def test_random_subsets_draw_every_subset_equally_often():
    rows = random_subsets(6, 3, 40_000, np.random.default_rng(1))
    assert (np.diff(rows, axis=1) > 0).all()  # sorted, no element twice
    counts = np.unique(rows, axis=0, return_counts=True)[1]
    assert len(counts) == math.comb(6, 3)
    # Each of the 20 subsets 2000 times in expectation (sd 44): a bias of a few percent would show.
    assert counts.min() > 1800 and counts.max() < 2200
    assert random_subsets(5, 0, 3, np.random.default_rng(0)).shape == (3, 0)
    assert (random_subsets(4, 4, 2, np.random.default_rng(0)) == [0, 1, 2, 3]).all()
    with pytest.raises(ValueError, match="cannot choose 5 of 4"):
        random_subsets(4, 5, 1, np.random.default_rng(0))
