"""The aggregation rules and their registry.

Every rule ignores branches without an extracted answer. Ties are broken deterministically in
favour of the answer that appears first among the branches (branch order is the engine's
output order), so the same record always aggregates to the same answer.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal, Protocol, get_args

AggregatorName = Literal[
    "majority",
    "weighted_mean_logprob",
    "weighted_min_window",
    "weighted_tail",
    "weighted_bottom10",
    "best_of_n",
    "weighted_best_of_n",
]


class Branch(Protocol):
    """What the rules read of a branch (latts.core.records.Branch has it)."""

    @property
    def answer(self) -> str | None: ...
    @property
    def token_logprobs(self) -> Sequence[float]: ...
    @property
    def verifier_score(self) -> float | None: ...


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


def min_window_logprob(logprobs: Sequence[float], window: int) -> float:
    """Lowest mean log-probability over any `window` consecutive tokens (whole text if shorter)."""
    if len(logprobs) <= window:
        return mean_logprob(logprobs)
    running = sum(logprobs[:window])
    lowest = running
    for i in range(window, len(logprobs)):
        running += logprobs[i] - logprobs[i - window]
        lowest = min(lowest, running)
    return lowest / window


def tail_logprob(logprobs: Sequence[float], tail: int) -> float:
    return mean_logprob(logprobs[-tail:])


def bottom10_logprob(logprobs: Sequence[float]) -> float:
    """Mean of the lowest 10% of token log-probabilities (at least one token)."""
    if not logprobs:
        return -math.inf
    count = max(1, math.ceil(len(logprobs) * 0.1))
    return mean_logprob(sorted(logprobs)[:count])


def majority(branches: Sequence[Branch]) -> str | None:
    return _vote([b.answer for b in branches], [1.0] * len(branches))


def best_of_n(branches: Sequence[Branch]) -> str | None:
    """The answer of the branch the verifier scores highest (earliest branch on ties)."""
    scored = [b for b in branches if b.answer is not None]
    if not scored:
        return None
    return max(scored, key=_verifier_score).answer


def weighted_best_of_n(branches: Sequence[Branch]) -> str | None:
    return _vote([b.answer for b in branches], [_verifier_score(b) for b in branches])


def _verifier_score(branch: Branch) -> float:
    if branch.verifier_score is None:
        raise ValueError("this aggregator needs verifier scores; pair it with a verifier")
    return branch.verifier_score


Confidence = Callable[[Sequence[float], Mapping[str, int]], float]


def _confidence_vote(confidence: Confidence) -> Callable[[Sequence[Branch], Mapping[str, int]], str | None]:
    """Vote with weight exp(confidence of the branch's token log-probabilities)."""

    def aggregate(branches: Sequence[Branch], parameters: Mapping[str, int]) -> str | None:
        weights = [math.exp(confidence(b.token_logprobs, parameters)) for b in branches]
        return _vote([b.answer for b in branches], weights)

    return aggregate


@dataclass(frozen=True)
class Rule:
    """An aggregator and what it needs from the branches and the spec."""

    name: AggregatorName
    aggregate: Callable[[Sequence[Branch], Mapping[str, int]], str | None]
    needs_verifier: bool = False
    needs_logprobs: bool = False
    parameters: Mapping[str, int] = field(default_factory=dict)  # name -> default (spec: `aggregation:`)


RULES: dict[str, Rule] = {
    rule.name: rule
    for rule in (
        Rule("majority", lambda branches, _: majority(branches)),
        Rule("weighted_mean_logprob", _confidence_vote(lambda lp, _: mean_logprob(lp)), needs_logprobs=True),
        Rule(
            "weighted_min_window",
            _confidence_vote(lambda lp, p: min_window_logprob(lp, p["window"])),
            needs_logprobs=True,
            parameters={"window": 16},  # sliding window, in tokens
        ),
        Rule(
            "weighted_tail",
            _confidence_vote(lambda lp, p: tail_logprob(lp, p["tail"])),
            needs_logprobs=True,
            parameters={"tail": 32},  # last K tokens
        ),
        Rule("weighted_bottom10", _confidence_vote(lambda lp, _: bottom10_logprob(lp)), needs_logprobs=True),
        Rule("best_of_n", lambda branches, _: best_of_n(branches), needs_verifier=True),
        Rule("weighted_best_of_n", lambda branches, _: weighted_best_of_n(branches), needs_verifier=True),
    )
}
assert tuple(RULES) == get_args(AggregatorName), "every aggregator name has exactly one rule"

PARAMETER_DEFAULTS: dict[str, int] = {name: default for rule in RULES.values() for name, default in rule.parameters.items()}


def aggregate(name: str, branches: Sequence[Branch], parameters: Mapping[str, int] | None = None) -> str | None:
    """The answer rule `name` picks from `branches`; parameters missing from `parameters` take their defaults."""
    rule = RULES[name]
    return rule.aggregate(branches, {**rule.parameters, **(parameters or {})})
