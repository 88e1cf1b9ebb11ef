"""Aggregation rules: many branches in, one answer out. Pure functions over branch records.

Every rule ignores branches without an extracted answer. Ties are broken deterministically in
favour of the answer that appears first among the branches (branch order is the engine's
output order), so the same record always aggregates to the same answer.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

from latts.records import Branch

DEFAULT_WINDOW = 16  # weighted_min_window: sliding window, in tokens
DEFAULT_TAIL = 32  # weighted_tail: last K tokens


def _vote(answers: Sequence[str | None], weights: Sequence[float]) -> str | None:
    totals: dict[str, float] = {}
    for answer, weight in zip(answers, weights, strict=True):
        if answer is not None:
            totals[answer] = totals.get(answer, 0.0) + weight
    if not totals:
        return None
    # dicts keep insertion order, so max() returns the earliest answer among equal totals.
    return max(totals, key=totals.__getitem__)


def mean_logprob(logprobs: Sequence[float]) -> float:
    return sum(logprobs) / len(logprobs) if logprobs else -math.inf


def min_window_logprob(logprobs: Sequence[float], window: int = DEFAULT_WINDOW) -> float:
    """Lowest mean log-probability over any `window` consecutive tokens (whole text if shorter)."""
    if len(logprobs) <= window:
        return mean_logprob(logprobs)
    running = sum(logprobs[:window])
    lowest = running
    for i in range(window, len(logprobs)):
        running += logprobs[i] - logprobs[i - window]
        lowest = min(lowest, running)
    return lowest / window


def tail_logprob(logprobs: Sequence[float], tail: int = DEFAULT_TAIL) -> float:
    return mean_logprob(logprobs[-tail:])


def bottom10_logprob(logprobs: Sequence[float]) -> float:
    """Mean of the lowest 10% of token log-probabilities (at least one token)."""
    if not logprobs:
        return -math.inf
    count = max(1, math.ceil(len(logprobs) * 0.1))
    return mean_logprob(sorted(logprobs)[:count])


def majority(branches: Sequence[Branch]) -> str | None:
    return _vote([b.answer for b in branches], [1.0] * len(branches))


def _confidence_vote(confidence: Callable[[Sequence[float]], float]) -> Callable[[Sequence[Branch]], str | None]:
    def aggregate(branches: Sequence[Branch]) -> str | None:
        return _vote([b.answer for b in branches], [math.exp(confidence(b.token_logprobs)) for b in branches])

    return aggregate


def best_of_n(branches: Sequence[Branch]) -> str | None:
    """The answer of the branch the verifier scores highest (earliest branch on ties)."""
    scored = [b for b in branches if b.answer is not None]
    if not scored:
        return None
    return max(scored, key=lambda b: _verifier_score(b)).answer


def weighted_best_of_n(branches: Sequence[Branch]) -> str | None:
    return _vote([b.answer for b in branches], [_verifier_score(b) for b in branches])


def _verifier_score(branch: Branch) -> float:
    if branch.verifier_score is None:
        raise ValueError("this aggregator needs verifier scores; pair it with a verifier")
    return branch.verifier_score


def aggregator(name: str, window: int = DEFAULT_WINDOW, tail: int = DEFAULT_TAIL) -> Callable[[Sequence[Branch]], str | None]:
    rules: dict[str, Callable[[Sequence[Branch]], str | None]] = {
        "majority": majority,
        "weighted_mean_logprob": _confidence_vote(mean_logprob),
        "weighted_min_window": _confidence_vote(lambda lp: min_window_logprob(lp, window)),
        "weighted_tail": _confidence_vote(lambda lp: tail_logprob(lp, tail)),
        "weighted_bottom10": _confidence_vote(bottom10_logprob),
        "best_of_n": best_of_n,
        "weighted_best_of_n": weighted_best_of_n,
    }
    return rules[name]
