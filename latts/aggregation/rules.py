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


Weight = Callable[[Branch, Mapping[str, int]], float]


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


def _verifier_score(branch: Branch, _parameters: Mapping[str, int]) -> float:
    if branch.verifier_score is None:
        raise ValueError("this aggregator needs verifier scores; pair it with a verifier")
    return branch.verifier_score


def _confidence(measure: Callable[[Sequence[float], Mapping[str, int]], float]) -> Weight:
    """Weight exp(confidence of the branch's token log-probabilities)."""
    return lambda branch, parameters: math.exp(measure(branch.token_logprobs, parameters))


def pick(answers: Sequence[str | None], weights: Sequence[float], vote: bool) -> str | None:
    """The answer with the largest total weight (vote), or the answer of the heaviest branch.

    Branches without an answer never count. Ties go to the answer seen first, or to the earliest of
    the heaviest branches (max() returns the first of equal keys; dicts keep insertion order).
    """
    scored = [(answer, weight) for answer, weight in zip(answers, weights, strict=True) if answer is not None]
    if not scored:
        return None
    if not vote:
        return max(scored, key=lambda pair: pair[1])[0]
    totals: dict[str, float] = {}
    for answer, weight in scored:
        totals[answer] = totals.get(answer, 0.0) + weight
    return max(totals, key=totals.__getitem__)


@dataclass(frozen=True)
class Rule:
    """An aggregator: a weight per branch, and whether answers add up their weights (a vote) or the
    single heaviest branch decides. Also what it needs from the branches and the spec."""

    name: AggregatorName
    weight: Weight
    vote: bool = True
    needs_verifier: bool = False
    needs_logprobs: bool = False
    parameters: Mapping[str, int] = field(default_factory=dict)  # name -> default (spec: `aggregation:`)


RULES: dict[str, Rule] = {
    rule.name: rule
    for rule in (
        Rule("majority", lambda _branch, _parameters: 1.0),
        Rule("weighted_mean_logprob", _confidence(lambda lp, _: mean_logprob(lp)), needs_logprobs=True),
        Rule(
            "weighted_min_window",
            _confidence(lambda lp, p: min_window_logprob(lp, p["window"])),
            needs_logprobs=True,
            parameters={"window": 16},  # sliding window, in tokens
        ),
        Rule(
            "weighted_tail",
            _confidence(lambda lp, p: tail_logprob(lp, p["tail"])),
            needs_logprobs=True,
            parameters={"tail": 32},  # last K tokens
        ),
        Rule("weighted_bottom10", _confidence(lambda lp, _: bottom10_logprob(lp)), needs_logprobs=True),
        Rule("best_of_n", _verifier_score, vote=False, needs_verifier=True),
        Rule("weighted_best_of_n", _verifier_score, needs_verifier=True),
    )
}
assert tuple(RULES) == get_args(AggregatorName), "every aggregator name has exactly one rule"

PARAMETER_DEFAULTS: dict[str, int] = {name: default for rule in RULES.values() for name, default in rule.parameters.items()}


def weights(name: str, branches: Sequence[Branch], parameters: Mapping[str, int] | None = None) -> list[float]:
    """Each branch's weight under rule `name`; parameters missing from `parameters` take their defaults."""
    rule = RULES[name]
    merged = {**rule.parameters, **(parameters or {})}
    return [rule.weight(b, merged) for b in branches]


def aggregate(name: str, branches: Sequence[Branch], parameters: Mapping[str, int] | None = None) -> str | None:
    """The answer rule `name` picks from `branches`."""
    return pick([b.answer for b in branches], weights(name, branches, parameters), RULES[name].vote)


def majority(branches: Sequence[Branch]) -> str | None:
    return aggregate("majority", branches)


def best_of_n(branches: Sequence[Branch]) -> str | None:
    """The answer of the branch the verifier scores highest (earliest branch on ties)."""
    return aggregate("best_of_n", branches)


def weighted_best_of_n(branches: Sequence[Branch]) -> str | None:
    return aggregate("weighted_best_of_n", branches)
