"""Frontier and best-within-budget on plain trial summaries."""

from __future__ import annotations

from latts.core.records import LatencyStats, TrialSummary
from latts.optimizer.frontier import best_within, pareto_front
from tests.handmade import config


def trial(number, accuracy, mean, p90=None, state="COMPLETE"):
    return TrialSummary(
        id=number,
        study="s",
        number=number,
        config=config(number + 1),
        state=state,
        hardware="cpu-2core",
        accuracy=accuracy if state == "COMPLETE" else None,
        latency_s=LatencyStats(mean, mean, p90 if p90 is not None else mean, mean) if state == "COMPLETE" else None,
    )


TRIALS = [
    trial(0, 0.40, 0.2),
    trial(1, 0.55, 0.5),
    trial(2, 0.50, 0.6),  # dominated by 1
    trial(3, 0.70, 1.5, p90=3.0),
    trial(4, 0.70, 1.8),  # same accuracy, slower: dominated
    trial(5, 0.90, 4.0),
    trial(6, None, None, state="FAILED"),
]


def test_front_is_non_dominated_and_fastest_first():
    assert [t.number for t in pareto_front(TRIALS)] == [0, 1, 3, 5]


def test_front_by_another_statistic():
    # By p90, trial 3 (p90 3.0) is slower than trial 4 (1.8) at equal accuracy.
    assert [t.number for t in pareto_front(TRIALS, "p90")] == [0, 1, 4, 5]


def test_best_within_budget():
    assert best_within(TRIALS, 0.1) is None
    assert best_within(TRIALS, 0.2).number == 0
    assert best_within(TRIALS, 1.0).number == 1
    assert best_within(TRIALS, 2.0).number == 3  # equal accuracy: the faster one
    assert best_within(TRIALS, 100).number == 5


def test_failed_and_running_trials_never_count():
    assert best_within([trial(6, None, None, state="FAILED")], 100) is None
    assert pareto_front([trial(6, None, None, state="RUNNING")]) == []


def test_lossy_speculation_stays_out_unless_asked_for():
    from dataclasses import replace

    from latts.core.records import Losslessness

    fast_and_wrong = replace(trial(7, 0.95, 0.1), lossless=Losslessness("lossy", 1e-4, 0))
    honest = replace(trial(8, 0.60, 0.3), lossless=Losslessness("lossless", 0.4, 0))
    trials = [*TRIALS, fast_and_wrong, honest]
    assert [t.number for t in pareto_front(trials)] == [0, 8, 3, 5]
    assert best_within(trials, 0.2).number == 0
    assert [t.number for t in pareto_front(trials, include_lossy=True)] == [7]
    assert best_within(trials, 0.2, include_lossy=True).number == 7
