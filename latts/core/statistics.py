"""Estimators over measurements: plain numbers in, plain numbers out."""

from __future__ import annotations

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

