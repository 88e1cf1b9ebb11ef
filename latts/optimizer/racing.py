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
    trials: Sequence[TrialSummary],
    budget_s: float,
    statistic: LatencyStatistic,
    limit: int,
    budget_range: tuple[float, float] | None = None,
) -> list[TrialSummary]:
    """The configs that could be the budget's answer, most accurate first: at most `limit`, and for a
    relative budget the best other config that fits the bottom of its range.

    Those whose latency interval reaches under the budget (under the top of `budget_range`, where a
    relative budget moves with its reference) and whose accuracy lies within the interval of the
    best config that fits. The best config always races; of the others, first those that could beat
    it (more accurate), fastest first, since the race decides whether they fit; then those that
    could tie with it, most accurate first. Configs whose accuracy comes from the same pooled samples
    (the same branches, aggregator and sampling, with and without lossless speculation) count once
    towards `limit` and race together: their accuracy is the same, which of them is faster is what
    the race tells. Where the budget may lie lower, the best other config that fits there races too:
    were the best slower when timed again, it is the answer at the bottom of the range.
    """
    low, high = budget_range or (budget_s, budget_s)
    best = best_within(trials, budget_s, statistic)
    if best is None or limit < 1:
        return []
    could = [
        t for t in completed(trials) if latency_interval(t, statistic)[0] <= high and t.accuracy >= best.accuracy_ci[0]
    ]
    order = lambda t: (-t.accuracy, _latency(t, statistic), t.number)  # noqa: E731
    fastest: dict[str, TrialSummary] = {}
    for t in sorted(could, key=order):
        fastest.setdefault(accuracy_identity(t), t)

    def rank(t: TrialSummary) -> tuple[bool, float, int]:
        beats = t.accuracy > best.accuracy
        return (not beats, _latency(t, statistic) if beats else -t.accuracy, t.number)

    others = [accuracy_identity(t) for t in sorted(fastest.values(), key=rank) if accuracy_identity(t) != accuracy_identity(best)]
    ranked = {*others[: limit - 1], accuracy_identity(best)}
    racing = [t for t in could if accuracy_identity(t) in ranked]
    surely = best_within([t for t in trials if accuracy_identity(t) != accuracy_identity(best)], low, statistic) if low < budget_s else None
    if surely is not None and surely not in racing:
        racing.append(surely)
    return sorted(racing, key=order)


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
    budget_range: tuple[float, float] | None = None,
) -> BudgetAnswer:
    """The budget's choice among its finalists, timed again, and its margin over the runner-up.

    `accuracies` holds each finalist's per-problem accuracy, by trial number. `budget_range` is
    where the budget may lie (a relative budget moves with its reference's latency); an absolute
    budget lies at `budget_s`. The choice fits confidently when its latency interval lies under the
    bottom of the range; it beats the runner-up (the next most accurate finalist that fits) when
    their paired accuracy difference excludes zero. The answer is tied at the budget's edge when a
    more accurate finalist's latency interval reaches under the top of the range (it may fit as
    well), or when the choice itself is slower than the bottom of the range (where the budget lies
    there, the most accurate finalist that fits then is the answer).
    """
    low, high = budget_range or (budget_s, budget_s)
    numbers = [t.number for t in raced]
    order = lambda t: (-t.accuracy, _latency(t, statistic), t.number)  # noqa: E731
    fitting = sorted((t for t in raced if _latency(t, statistic) <= budget_s), key=order)
    if not fitting:
        return BudgetAnswer(budget_s, None, None, False, None, None, "nothing-fits", rounds, numbers, (low, high))
    chosen = fitting[0]
    upper = _interval(chosen, statistic)[1]
    fits_confidently = upper is not None and upper <= low
    may_fit = [t for t in raced if t not in fitting and t.accuracy > chosen.accuracy and (_interval(t, statistic)[0] or math.inf) <= high]
    fits_below = [t for t in fitting[1:] if _latency(t, statistic) <= low] if _latency(chosen, statistic) > low else []
    edge = sorted(may_fit, key=order)[:1] or fits_below[:1]
    if not edge and len(fitting) == 1:
        return BudgetAnswer(budget_s, chosen.number, None, fits_confidently, None, None, "alone", rounds, numbers, (low, high))
    runner_up = edge[0] if edge else fitting[1]
    margin, interval = paired_margin(accuracies[chosen.number], accuracies[runner_up.number], seed)
    verdict = "beats" if interval[0] > 0 and not edge else "tied"
    return BudgetAnswer(budget_s, chosen.number, runner_up.number, fits_confidently, margin, interval, verdict, rounds, numbers, (low, high))
