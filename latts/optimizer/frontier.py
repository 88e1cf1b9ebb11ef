"""Pareto frontier and best-within-budget: pure functions over stored trial summaries."""

from __future__ import annotations

from collections.abc import Sequence

from latts.core.records import LatencyStatistic, TrialState, TrialSummary


def completed(trials: Sequence[TrialSummary], include_lossy: bool = False) -> list[TrialSummary]:
    """The trials with both numbers (completed ones), without lossy speculation unless asked for."""
    return [
        t
        for t in trials
        if t.state == TrialState.COMPLETE and t.accuracy is not None and t.latency_s is not None
        and (include_lossy or not t.lossy)
    ]


def _order(statistic: LatencyStatistic):
    # Faster first, then more accurate, then older: a total order, so answers are reproducible.
    return lambda t: (t.latency_s.get(statistic), -t.accuracy, t.study, t.number)


def pareto_front(
    trials: Sequence[TrialSummary], statistic: LatencyStatistic = "mean", include_lossy: bool = False
) -> list[TrialSummary]:
    """Completed trials that no other trial beats on both accuracy and latency, fastest first.

    Of trials with identical accuracy and latency only the first in the order above is kept.
    """
    front: list[TrialSummary] = []
    for trial in sorted(completed(trials, include_lossy), key=_order(statistic)):
        # Sorted by latency, a trial is on the front iff it is strictly more accurate than all before it.
        if not front or trial.accuracy > front[-1].accuracy:
            front.append(trial)
    return front


def best_within(
    trials: Sequence[TrialSummary], budget_s: float, statistic: LatencyStatistic = "mean", include_lossy: bool = False
) -> TrialSummary | None:
    """The most accurate completed trial whose latency statistic is within the budget (faster wins ties)."""
    fitting = [t for t in completed(trials, include_lossy) if t.latency_s.get(statistic) <= budget_s]
    return min(fitting, key=lambda t: (-t.accuracy, *_order(statistic)(t)), default=None)
