"""Racing the finalists: which configs could be a budget's answer, and how sure the answer is.

Pure functions over trial summaries and per-problem accuracies; the controller times the finalists
again in interleaved rounds (so drift over time hits them all alike) and then asks these.
"""

from __future__ import annotations

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


def answers_across(
    raced: Sequence[TrialSummary], budget_range: tuple[float, float], statistic: LatencyStatistic
) -> list[TrialSummary]:
    """The finalists that answer a budget somewhere in its range, in budget order: the most accurate
    that fits its bottom, then each that becomes the answer as the budget rises through the range,
    and at its top the most accurate whose latency interval reaches under it (it may fit)."""
    low, high = budget_range
    order = lambda t: (-t.accuracy, _latency(t, statistic), t.number)  # noqa: E731
    points = sorted({low, *(_latency(t, statistic) for t in raced if low < _latency(t, statistic) <= high)})
    found = [min((t for t in raced if _latency(t, statistic) <= b), key=order, default=None) for b in points]
    found.append(min((t for t in raced if latency_interval(t, statistic)[0] <= high), key=order, default=None))
    return list({t.number: t for t in found if t is not None}.values())


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
    their paired accuracy difference excludes zero. Where other finalists answer the budget
    elsewhere in its range (answers_across), the answer is tied with them at the edge, and the
    runner-up is the nearest of them: the next more accurate one, else the next faster one.
    """
    low, high = budget_range or (budget_s, budget_s)
    low, high = min(low, budget_s), max(high, budget_s)
    numbers = [t.number for t in raced]
    order = lambda t: (-t.accuracy, _latency(t, statistic), t.number)  # noqa: E731
    fitting = sorted((t for t in raced if _latency(t, statistic) <= budget_s), key=order)
    if not fitting:
        return BudgetAnswer(budget_s, None, None, False, None, None, "nothing-fits", rounds, numbers, (low, high))
    chosen = fitting[0]
    upper = _interval(chosen, statistic)[1]
    fits_confidently = upper is not None and upper <= low
    across = [t.number for t in answers_across(raced, (low, high), statistic)]
    at = across.index(chosen.number)
    edge = [n for n in across if n != chosen.number]
    if not edge and len(fitting) == 1:
        return BudgetAnswer(budget_s, chosen.number, None, fits_confidently, None, None, "alone", rounds, numbers, (low, high))
    runner_up = (across[at + 1 :] or across[:at][-1:] or [fitting[1].number])[0] if edge else fitting[1].number
    margin, interval = paired_margin(accuracies[chosen.number], accuracies[runner_up], seed)
    verdict = "beats" if interval[0] > 0 and not edge else "tied"
    return BudgetAnswer(budget_s, chosen.number, runner_up, fits_confidently, margin, interval, verdict, rounds, numbers, (low, high), edge)
