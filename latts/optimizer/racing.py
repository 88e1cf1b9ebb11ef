"""Racing the finalists: which configs could be a budget's answer, and how sure the answer is.

Pure functions over trial summaries and per-problem accuracies; the controller times the finalists
again in interleaved rounds (so drift over time hits them all alike) and then asks these.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np

from latts.core.records import BudgetAnswer, LatencyStatistic, TrialSummary
from latts.optimizer.frontier import best_within, completed


def _latency(trial: TrialSummary, statistic: LatencyStatistic) -> float:
    return trial.latency_s.get(statistic)


def _interval(trial: TrialSummary, statistic: LatencyStatistic) -> tuple[float | None, float | None]:
    return (trial.latency_ci or {}).get(statistic, (None, None))


def latency_interval(trial: TrialSummary, statistic: LatencyStatistic) -> tuple[float, float]:
    """A trial's 95% latency interval; its point latency at an end it has none for."""
    low, high = _interval(trial, statistic)
    value = _latency(trial, statistic)
    return (value if low is None else low, value if high is None else high)


def finalists(
    trials: Sequence[TrialSummary], budget_s: float, statistic: LatencyStatistic, limit: int
) -> list[TrialSummary]:
    """The configs that could be the budget's answer, most accurate first, at most `limit`.

    Those whose latency interval reaches under the budget and whose accuracy lies within the
    interval of the best config that fits; the best config always races. Configs whose accuracy
    comes from the same pooled samples (the same branches, aggregator and sampling, with and
    without lossless speculation) count once towards `limit` and race together: their accuracy is
    the same, which of them is faster is what the race tells.
    """
    best = best_within(trials, budget_s, statistic)
    if best is None or limit < 1:
        return []
    could = [
        t
        for t in completed(trials)
        if latency_interval(t, statistic)[0] <= budget_s and t.accuracy >= best.accuracy_ci[0]
    ]
    order = lambda t: (-t.accuracy, _latency(t, statistic), t.number)  # noqa: E731
    fastest: dict[str, TrialSummary] = {}
    for t in sorted(could, key=order):
        fastest.setdefault(accuracy_identity(t), t)
    ranked = [accuracy_identity(t) for t in sorted(fastest.values(), key=order)][:limit]
    if accuracy_identity(best) not in ranked:
        ranked = [*ranked[: limit - 1], accuracy_identity(best)]
    return sorted((t for t in could if accuracy_identity(t) in ranked), key=order)


def accuracy_identity(trial: TrialSummary) -> str:
    """What a trial's accuracy comes from: twins (the same branches, aggregator and sampling from the
    sample pool, with and without lossless speculation) share one, so their accuracy is the same."""
    if trial.accuracy_source != "pool":
        return f"trial {trial.number}"
    return trial.config.without_speculation().key()


def paired_margin(a: Mapping[int, float], b: Mapping[int, float], seed: int = 0) -> tuple[float, tuple[float, float]]:
    """Mean of a - b over the problems both were scored on, with a 95% bootstrap interval over problems."""
    shared = sorted(a.keys() & b.keys())
    differences = np.array([a[i] - b[i] for i in shared])
    rng = np.random.default_rng(seed)
    means = differences[rng.integers(0, len(shared), (2000, len(shared)))].mean(axis=1)
    lo, hi = np.percentile(means, [2.5, 97.5])
    return float(differences.mean()), (float(lo), float(hi))


def budget_answer(
    budget_s: float,
    raced: Sequence[TrialSummary],
    accuracies: Mapping[int, Mapping[int, float]],
    statistic: LatencyStatistic,
    rounds: int,
    seed: int = 0,
) -> BudgetAnswer:
    """The budget's choice among its finalists, timed again, and its margin over the runner-up.

    `accuracies` holds each finalist's per-problem accuracy, by trial number. The choice fits
    confidently when its latency interval lies within the budget; it beats the runner-up (the next
    most accurate finalist that fits) when their paired accuracy difference excludes zero. A more
    accurate finalist whose latency interval reaches under the budget may fit as well: then it is
    the runner-up and the answer is tied with it, at the budget's edge.
    """
    numbers = [t.number for t in raced]
    fitting = sorted(
        (t for t in raced if _latency(t, statistic) <= budget_s), key=lambda t: (-t.accuracy, _latency(t, statistic), t.number)
    )
    if not fitting:
        return BudgetAnswer(budget_s, None, None, False, None, None, "nothing-fits", rounds, numbers)
    chosen = fitting[0]
    upper = _interval(chosen, statistic)[1]
    fits_confidently = upper is not None and upper <= budget_s
    edge = sorted(
        (t for t in raced if t not in fitting and t.accuracy > chosen.accuracy and (_interval(t, statistic)[0] or math.inf) <= budget_s),
        key=lambda t: (-t.accuracy, _latency(t, statistic), t.number),
    )
    if not edge and len(fitting) == 1:
        return BudgetAnswer(budget_s, chosen.number, None, fits_confidently, None, None, "alone", rounds, numbers)
    runner_up = edge[0] if edge else fitting[1]
    margin, interval = paired_margin(accuracies[chosen.number], accuracies[runner_up.number], seed)
    verdict = "beats" if interval[0] > 0 and not edge else "tied"
    return BudgetAnswer(budget_s, chosen.number, runner_up.number, fits_confidently, margin, interval, verdict, rounds, numbers)
