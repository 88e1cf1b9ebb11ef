"""Estimators over measurements: plain numbers in, plain numbers out."""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

import numpy as np

from latts.core.records import LatencyStats


def wilson_interval(successes: int, n: int, z: float = 1.959964) -> tuple[float, float]:
    """Wilson score interval for a binomial share (95% by default).

    Wilson rather than the normal approximation: it stays inside [0, 1] and is
    honest at 0/n and n/n, which small problem sets hit often.
    """
    if not 0 <= successes <= n:
        raise ValueError(f"successes must be in [0, n], got {successes}/{n}")
    if n == 0:
        return (0.0, 1.0)
    p = successes / n
    z2n = z * z / n
    center = (p + z2n / 2) / (1 + z2n)
    half = z / (1 + z2n) * math.sqrt(p * (1 - p) / n + z2n / (4 * n))
    return (max(0.0, center - half), min(1.0, center + half))


def latency_stats(latencies: Sequence[float]) -> LatencyStats:
    if not latencies:
        raise ValueError("latency_stats needs at least one latency")
    p50, p90, p99 = np.percentile(latencies, [50, 90, 99])  # linear interpolation between ranks
    return LatencyStats(mean=math.fsum(latencies) / len(latencies), p50=float(p50), p90=float(p90), p99=float(p99))


def mean_acceptance_length(num_drafts: int | None, accepted_tokens: int | None) -> float | None:
    """Tokens emitted per draft step, vLLM's definition: the step's own token plus the accepted ones."""
    if not num_drafts or accepted_tokens is None:
        return None
    return 1 + accepted_tokens / num_drafts


def random_subsets(size: int, k: int, rows: int, rng: np.random.Generator) -> np.ndarray:
    """`rows` uniform random k-subsets of range(size), one per row, each row sorted.

    Floyd's algorithm, vectorised over rows: k steps of one draw each, so a few branches out of a
    pool of hundreds cost little (sorting `size` random keys per row cost ~6 ms per 2000 rows).
    """
    if not 0 <= k <= size:
        raise ValueError(f"cannot choose {k} of {size}")
    chosen = np.empty((rows, k), dtype=np.int64)
    for step, j in enumerate(range(size - k, size)):
        # Add a draw t from [0, j]; where a row holds t already, add j, which no earlier step could add.
        t = rng.integers(0, j + 1, size=rows)
        chosen[:, step] = np.where((chosen[:, :step] == t[:, None]).any(axis=1), j, t)
    return np.sort(chosen, axis=1)


def answer_shift_p_value(
    baseline: Sequence[Sequence[str | None]],
    candidate: Sequence[Sequence[str | None]],
    permutations: int = 4999,
    seed: int = 0,
) -> float:
    """p-value that `candidate`'s answers come from the same distribution as `baseline`'s.

    Both hold one list of branch answers per problem (None: no answer), problems in the same
    order. The statistic is the sum over problems of the total variation distance between the two
    answer distributions; its null distribution comes from permuting the pooled answers of each
    problem between the two groups (exact under the null, since the branches of a problem are
    exchangeable then), so the false-alarm rate at level a is a. The p-value is (1 + #{permuted >=
    observed}) / (1 + permutations), never 0.
    """
    if len(baseline) != len(candidate):
        raise ValueError(f"baseline has {len(baseline)} problems, candidate {len(candidate)}; give the same problems")
    rng = np.random.default_rng(seed)
    observed = 0.0
    permuted = np.zeros(permutations)
    for base, cand in zip(baseline, candidate, strict=True):
        n_base, n_cand = len(base), len(cand)
        if not n_base or not n_cand:
            continue
        pooled = list(base) + list(cand)
        labels = {answer: k for k, answer in enumerate(dict.fromkeys(pooled))}
        if len(labels) == 1:  # every branch gave the same answer: no distance, under any permutation
            continue
        onehot = np.eye(len(labels))[[labels[a] for a in pooled]]  # (n_base + n_cand, categories)
        observed += _tvd(onehot[:n_base].sum(0), onehot[n_base:].sum(0), n_base, n_cand)
        # Each row a random split of the pooled branches: n_cand of them go to the candidate.
        in_cand = np.zeros((permutations, len(pooled)))
        np.put_along_axis(in_cand, random_subsets(len(pooled), n_cand, permutations, rng), 1.0, axis=1)
        cand_counts = in_cand @ onehot
        permuted += _tvd(onehot.sum(0) - cand_counts, cand_counts, n_base, n_cand)
    return float((1 + np.count_nonzero(permuted >= observed - 1e-12)) / (1 + permutations))


def _tvd(counts_a: np.ndarray, counts_b: np.ndarray, n_a: int, n_b: int) -> np.ndarray:
    """Total variation distance between two count vectors (along the last axis)."""
    return 0.5 * np.abs(counts_a / n_a - counts_b / n_b).sum(axis=-1)


def bootstrap_mean_interval(values: Sequence[float], resamples: int = 2000, seed: int = 0) -> tuple[float, float]:
    """95% percentile-bootstrap interval of the mean of `values` (resampling the values)."""
    data = np.asarray(values, dtype=float)
    if data.size == 0:
        return (0.0, 1.0)
    rng = np.random.default_rng(seed)
    means = data[rng.integers(0, data.size, (resamples, data.size))].mean(axis=1)
    lo, hi = np.percentile(means, [2.5, 97.5])
    return (float(lo), float(hi))


def quantile_interval(values: Sequence[float], q: float, confidence: float = 0.95) -> tuple[float | None, float | None]:
    """Distribution-free interval for the q-quantile: a pair of order statistics (the binomial method).

    An end is None where no order statistic of this few values reaches the confidence (a p99 of
    ten latencies has no upper bound).
    """
    ordered = sorted(values)
    n, tail = len(ordered), (1 - confidence) / 2
    # P(at most k of n values fall below the quantile): X_(k) (0-based) lies below it unless so.
    at_most = list(itertools.accumulate(math.comb(n, j) * q**j * (1 - q) ** (n - j) for j in range(n + 1)))
    lower = [k for k in range(n) if at_most[k] <= tail]
    upper = [k for k in range(n) if 1 - at_most[k] <= tail]
    return (ordered[max(lower)] if lower else None, ordered[min(upper)] if upper else None)


def latency_intervals(latencies: Sequence[float], seed: int = 0) -> dict[str, tuple[float | None, float | None]]:
    """95% interval of each latency statistic: bootstrap over problems for the mean, order statistics for percentiles."""
    return {
        "mean": bootstrap_mean_interval(latencies, seed=seed),
        "p50": quantile_interval(latencies, 0.50),
        "p90": quantile_interval(latencies, 0.90),
        "p99": quantile_interval(latencies, 0.99),
    }
