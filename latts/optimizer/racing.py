"""Racing the finalists: which configs could be a budget's answer, and how sure the answer is.

Pure functions over trial summaries and per-problem accuracies; the controller times the finalists
again in interleaved rounds (so drift over time hits them all alike) and then asks these.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import numpy as np

from latts.core.records import BudgetAnswer, LatencyStatistic, TieReason, TrialSummary, TTSConfig
from latts.optimizer.frontier import best_within, completed


def _latency(trial: TrialSummary, statistic: LatencyStatistic) -> float:
    return trial.latency_s.get(statistic)


def _interval(trial: TrialSummary, statistic: LatencyStatistic) -> tuple[float | None, float | None]:
    return (trial.latency_ci or {}).get(statistic, (None, None))


def _most_accurate_first(statistic: LatencyStatistic) -> Callable[[TrialSummary], tuple[float, float, int]]:
    """Sort key: most accurate first, the faster of equally accurate ones first."""
    return lambda t: (-t.accuracy, _latency(t, statistic), t.number)


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
    """The configs that could be the budget's answer, most accurate first: of at most `limit` sample
    sets (below), and for a relative budget the best config of another that fits the bottom of its range.

    Those whose latency interval reaches under the budget (under the top of `budget_range`, where a
    relative budget moves with its reference) and whose accuracy lies within the interval of the
    best config that fits. Configs that share their samples (the same branches and sampling, any
    aggregator, with and without lossless speculation) count once towards `limit` and race
    together: the race times their generations, which every aggregator of them reuses, and tells
    which speculative twin is faster. The best config's set always races; of the others, first
    those that could beat it (more accurate), fastest first, since the race decides whether they
    fit; then those that could tie with it, most accurate first. Where the budget may lie lower,
    the best config of other samples that fits there races too: were the best slower when timed
    again, it is the answer at the bottom of the range.
    """
    low, high = budget_range or (budget_s, budget_s)
    best = best_within(trials, budget_s, statistic)
    if best is None or limit < 1:
        return []
    could = [
        t for t in completed(trials) if latency_interval(t, statistic)[0] <= high and t.accuracy >= best.accuracy_ci[0]
    ]
    best_samples = shared_samples(best)
    # Each other sample set ranked by its fastest config that could beat the best, else its most accurate.
    rank: dict[str, tuple[bool, float]] = {}
    for t in could:
        key = (False, _latency(t, statistic)) if t.accuracy > best.accuracy else (True, -t.accuracy)
        rank[shared_samples(t)] = min(rank.get(shared_samples(t), key), key)
    rank.pop(best_samples, None)
    racing_samples = {*sorted(rank, key=lambda s: (rank[s], s))[: limit - 1], best_samples}
    racing = [t for t in could if shared_samples(t) in racing_samples]
    others = [t for t in trials if shared_samples(t) != best_samples]
    surely = best_within(others, low, statistic) if low < budget_s else None
    if surely is not None and surely not in racing:
        racing.append(surely)
    return sorted(racing, key=_most_accurate_first(statistic))


def shared_samples(trial: TrialSummary) -> str:
    """What a trial's branches are generated as: the same branches and sampling, whatever the
    aggregator and whether lossless speculation drafts them (pooled, their answers are the same)."""
    return trial.config.generation().without_speculation().key()


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
    order = _most_accurate_first(statistic)
    points = sorted({low, *(_latency(t, statistic) for t in raced if low < _latency(t, statistic) <= high)})
    found = [min((t for t in raced if _latency(t, statistic) <= b), key=order, default=None) for b in points]
    found.append(min((t for t in raced if latency_interval(t, statistic)[0] <= high), key=order, default=None))
    return list({t.number: t for t in found if t is not None}.values())


def twin_key(trial: TrialSummary) -> tuple[TTSConfig, float]:
    """What lossless twins share: the same branches, aggregator and sampling, with or without
    lossless speculation, and the same accuracy (the same pooled answers)."""
    return trial.config.without_speculation(), trial.accuracy


def tie_reason(answer: BudgetAnswer, trials: Mapping[int, TrialSummary]) -> TieReason | None:
    """Why a tied answer ties with its runner-up (None where it does not tie): its lossless twin
    (the same answers), the budget's range (the accuracy interval excludes 0, but the runner-up
    answers the budget elsewhere in its range), or accuracies within noise (the interval holds 0).
    `trials`: the study's, by number."""
    if answer.verdict != "tied":
        return None
    if twin_key(trials[answer.runner_up]) == twin_key(trials[answer.trial]):
        return "lossless-twin"
    lo, hi = answer.margin_ci
    return "budget-range" if lo > 0 or hi < 0 else "noise"


def lossless_twins(of: Sequence[TrialSummary], raced: Sequence[TrialSummary], high: float, statistic: LatencyStatistic) -> list[TrialSummary]:
    """The finalists that are lossless twins of one of `of` and may fit under `high`: which twin is
    faster changes from run to run, so where one answers, the others tie with it."""
    named = {t.number for t in of}
    twins = {twin_key(t) for t in of}
    return [
        t
        for t in sorted(raced, key=lambda t: (_latency(t, statistic), t.number))
        if t.number not in named and twin_key(t) in twins and latency_interval(t, statistic)[0] <= high
    ]


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
    elsewhere in its range (answers_across), the answer is tied with them and their lossless twins
    at the edge, and the runner-up is the nearest of them: the next more accurate one, else the
    next faster one.
    """
    low, high = budget_range or (budget_s, budget_s)
    low, high = min(low, budget_s), max(high, budget_s)
    numbers = [t.number for t in raced]
    fitting = sorted((t for t in raced if _latency(t, statistic) <= budget_s), key=_most_accurate_first(statistic))
    if not fitting:
        return BudgetAnswer(budget_s, None, None, False, None, None, "nothing-fits", rounds, numbers, (low, high))
    chosen = fitting[0]
    upper = _interval(chosen, statistic)[1]
    fits_confidently = upper is not None and upper <= low
    answers = answers_across(raced, (low, high), statistic)
    across = [t.number for t in answers]
    at = across.index(chosen.number)
    edge = [n for n in across if n != chosen.number]
    if edge:  # the range has other answers: each one's twins (and the choice's) are answers too
        edge += [t.number for t in lossless_twins(answers, raced, high, statistic)]
    if not edge and len(fitting) == 1:
        return BudgetAnswer(budget_s, chosen.number, None, fits_confidently, None, None, "alone", rounds, numbers, (low, high))
    runner_up = (across[at + 1 :] or across[:at][-1:])[0] if edge else fitting[1].number
    margin, interval = paired_margin(accuracies[chosen.number], accuracies[runner_up], seed)
    verdict = "beats" if interval[0] > 0 and not edge else "tied"
    return BudgetAnswer(budget_s, chosen.number, runner_up, fits_confidently, margin, interval, verdict, rounds, numbers, (low, high), edge)
