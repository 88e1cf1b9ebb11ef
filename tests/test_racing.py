"""Which configs race for a budget, and how its answer states its margin: pure functions on plain data."""

from __future__ import annotations

from dataclasses import replace

import pytest

from latts.core.records import LatencyStats, TrialSummary
from latts.optimizer.racing import answers_across, budget_answer, finalists, paired_margin, tie_reason
from tests.handmade import config


def trial(number, accuracy, ci, latency, latency_ci, **changes) -> TrialSummary:
    return TrialSummary(
        id=number,
        study="s",
        number=number,
        config=config(number + 1, **changes),
        state="COMPLETE",
        hardware="cpu-2core",
        accuracy=accuracy,
        accuracy_ci=ci,
        accuracy_source="pool",
        latency_s=LatencyStats(latency, latency, latency, latency),
        latency_ci={"mean": latency_ci},
    )


TRIALS = [
    trial(0, 0.80, (0.70, 0.90), 0.50, (0.45, 0.55)),  # the best that fits 0.6
    trial(1, 0.75, (0.65, 0.85), 0.40, (0.35, 0.45)),  # within its interval: races
    trial(2, 0.60, (0.50, 0.70), 0.20, (0.15, 0.25)),  # below its interval: does not
    trial(3, 0.85, (0.75, 0.95), 0.65, (0.58, 0.72)),  # over the budget, but could fit: races
    trial(4, 0.90, (0.80, 0.99), 0.90, (0.80, 1.00)),  # cannot fit
]


def test_finalists_could_be_the_answer():
    assert [t.number for t in finalists(TRIALS, 0.6, "mean", 3)] == [3, 0, 1]
    assert [t.number for t in finalists(TRIALS, 0.6, "mean", 1)] == [0]  # the best always races
    assert finalists(TRIALS, 0.1, "mean", 3) == []  # nothing fits
    assert finalists(TRIALS, 0.6, "mean", 0) == []


def test_configs_sharing_pooled_accuracy_race_together_and_count_once():
    # The same branches and aggregator with lossless speculation: the same accuracy; which is faster
    # is the race's question, so both race, as one of the three.
    faster_twin = replace(TRIALS[1], number=5, id=5, latency_s=LatencyStats(*[0.3] * 4), latency_ci={"mean": (0.28, 0.32)},
                          config=replace(TRIALS[1].config, speculative_method="ngram", num_speculative_tokens=4))
    assert [t.number for t in finalists([*TRIALS, faster_twin], 0.6, "mean", 3)] == [3, 0, 5, 1]
    assert [t.number for t in finalists([*TRIALS, faster_twin], 0.6, "mean", 2)] == [3, 0]


def test_margin_beats_ties_and_alone():
    accuracies = {0: {i: 0.9 for i in range(20)}, 1: {i: 0.5 for i in range(20)}, 3: {i: 0.88 + 0.01 * (i % 3) for i in range(20)}}
    raced = [TRIALS[0], TRIALS[1]]
    answer = budget_answer(0.6, raced, accuracies, "mean", rounds=3)
    assert (answer.trial, answer.runner_up, answer.verdict, answer.fits_confidently) == (0, 1, "beats", True)
    assert answer.margin == pytest.approx(0.4) and answer.margin_ci[0] > 0
    close = replace(TRIALS[3], latency_s=LatencyStats(*[0.55] * 4), latency_ci={"mean": (0.5, 0.61)})
    tied = budget_answer(0.6, [close, TRIALS[0]], accuracies, "mean", rounds=3)
    assert (tied.trial, tied.verdict, tied.fits_confidently) == (3, "tied", False)  # its interval reaches past 0.6
    assert budget_answer(0.6, [TRIALS[0]], accuracies, "mean", 3).verdict == "alone"
    assert budget_answer(0.3, [TRIALS[0]], accuracies, "mean", 3).verdict == "nothing-fits"


def test_a_more_accurate_finalist_that_may_fit_ties_the_answer_at_the_edge():
    # TRIALS[3] (85%) timed 0.65 s against a budget of 0.6 s, but its interval reaches 0.58 s: the
    # answer, TRIALS[0] (80%), cannot claim the budget alone, nor beat what may fit too.
    accuracies = {0: {i: 0.8 for i in range(20)}, 1: {i: 0.5 for i in range(20)}, 3: {i: 0.85 for i in range(20)}}
    answer = budget_answer(0.6, [TRIALS[3], TRIALS[0], TRIALS[1]], accuracies, "mean", rounds=3)
    assert (answer.trial, answer.runner_up, answer.verdict) == (0, 3, "tied")
    assert answer.margin == pytest.approx(-0.05)
    # Without it, TRIALS[0] beats the next fitting finalist as before.
    assert budget_answer(0.6, [TRIALS[0], TRIALS[1]], accuracies, "mean", rounds=3).verdict == "beats"
    # A finalist whose interval stays over the budget does not tie anything.
    over = replace(TRIALS[3], latency_ci={"mean": (0.62, 0.68)})
    assert budget_answer(0.6, [over, TRIALS[0]], accuracies, "mean", rounds=3).verdict == "alone"


def test_paired_margin_uses_shared_problems():
    margin, (lo, hi) = paired_margin({0: 1.0, 1: 0.0, 2: 1.0}, {0: 0.0, 1: 0.0, 5: 1.0})
    assert margin == pytest.approx(0.5) and lo <= margin <= hi


# One branch (60%) and two branches (70%, clearly better on every problem), as in the quickstart on
# a 2-core EPYC: two branches sat at 1.41x one branch in one run and 1.53-1.58x in the next two.
ONE = trial(10, 0.60, (0.46, 0.73), 0.420, (0.41, 0.43))
TWO = trial(11, 0.70, (0.56, 0.81), 0.651, (0.64, 0.66))
BOTH = {10: {i: float(i % 10 < 6) for i in range(40)}, 11: {i: float(i % 10 < 7) for i in range(40)}}
# Two branches right one problem in 40 more often than one branch: a margin within noise.
CLOSE = {10: BOTH[10], 11: {i: float(i % 40 < 25) for i in range(40)}}


def test_a_relative_budget_ties_the_configs_its_range_may_choose():
    # 1.5x a reference whose rounds spanned 0.392-0.464 s: the budget is 0.63 s, but may lie at
    # 0.588-0.696 s, where two branches fit: one branch is the answer, tied at the edge.
    low = budget_answer(0.63, [TWO, ONE], BOTH, "mean", 3, budget_range=(0.588, 0.696))
    assert (low.trial, low.runner_up, low.verdict, low.fits_confidently, low.edge) == (10, 11, "tied", True, [11])
    assert low.budget_range_s == (0.588, 0.696)
    # Taken as exact, the budget leaves two branches out: one branch alone.
    assert budget_answer(0.63, [TWO, ONE], BOTH, "mean", 3).verdict == "alone"
    # A reference timed 10% slower (rounds 0.420-0.488 s): two branches fit the budget, but not its
    # bottom, where one branch is the answer: tied with it, and not surely within the budget.
    high = budget_answer(0.692, [TWO, ONE], BOTH, "mean", 3, budget_range=(0.630, 0.732))
    assert (high.trial, high.runner_up, high.verdict, high.fits_confidently, high.edge) == (11, 10, "tied", False, [10])
    exact = budget_answer(0.692, [TWO, ONE], BOTH, "mean", 3)
    assert (exact.trial, exact.runner_up, exact.verdict, exact.fits_confidently, exact.edge) == (11, 10, "beats", True, [])
    # A range that keeps the choice's latency inside the budget changes nothing.
    assert budget_answer(0.692, [TWO, ONE], BOTH, "mean", 3, budget_range=(0.67, 0.71)).verdict == "beats"


def test_the_config_that_fits_the_bottom_of_the_range_races():
    two = replace(TWO, accuracy_ci=(0.62, 0.78))  # one branch lies outside its accuracy interval
    assert [t.number for t in finalists([two, ONE], 0.692, "mean", 3)] == [11]
    assert [t.number for t in finalists([two, ONE], 0.692, "mean", 3, (0.630, 0.732))] == [11, 10]
    assert [t.number for t in finalists([two, ONE], 0.692, "mean", 1, (0.630, 0.732))] == [11, 10]  # both always race
    assert [t.number for t in finalists([two, ONE], 0.63, "mean", 3, (0.588, 0.696))] == [11, 10]  # two may fit
    assert [t.number for t in finalists([two, ONE], 0.63, "mean", 3)] == [10]


def test_the_answers_table_shows_the_budget_range_and_which_edge_ties():
    from rich.console import Console

    from latts.cli.tables import answers_table

    def printed(answers):
        console = Console(width=250, record=True)
        console.print(answers_table(answers, {10: ONE, 11: TWO}, "mean"))
        return [line for line in console.export_text().splitlines() if "s#1" in line]

    rows = printed([
        budget_answer(0.63, [TWO, ONE], BOTH, "mean", 3, budget_range=(0.588, 0.696)),
        budget_answer(0.692, [TWO, ONE], BOTH, "mean", 3, budget_range=(0.630, 0.732)),
        budget_answer(0.692, [TWO, ONE], BOTH, "mean", 3),
    ])
    assert "0.63 (0.588 to 0.696)" in rows[0] and "tied with #11 by the budget's range, not by accuracy: -10.0% (-20.0% to -2.5%); at the edge: #11 where the budget is higher" in rows[0]
    assert "0.692 (0.63 to 0.732)" in rows[1] and "tied with #10 by the budget's range, not by accuracy: +10.0% (+2.5% to +20.0%); at the edge: #10 where the budget is lower" in rows[1]
    assert "not surely" in rows[1]
    assert "│ 0.692 " in rows[2] and "beats #10:" in rows[2] and "edge" not in rows[2]

    # Two branches right one problem in 40 more often: within noise, the tie is plain.
    [row] = printed([budget_answer(0.63, [TWO, ONE], CLOSE, "mean", 3, budget_range=(0.588, 0.696))])
    assert "tied with #11: -2.5% (" in row and "not by accuracy" not in row and "#11 where the budget is higher" in row


def test_a_tie_says_why_it_ties():
    # The answers of the table above, as `best --json` and /v1/best carry the reason (`tie`).
    numbered = {10: ONE, 11: TWO}
    by_range = budget_answer(0.63, [TWO, ONE], BOTH, "mean", 3, budget_range=(0.588, 0.696))
    assert tie_reason(by_range, numbered) == "budget-range"
    assert tie_reason(budget_answer(0.692, [TWO, ONE], BOTH, "mean", 3), numbered) is None  # it beats #10
    assert tie_reason(budget_answer(0.63, [TWO, ONE], CLOSE, "mean", 3, budget_range=(0.588, 0.696)), numbered) == "noise"
    twin = replace(ONE, id=11, number=11, config=replace(ONE.config, speculative_method="ngram", num_speculative_tokens=4))
    assert tie_reason(by_range, {10: ONE, 11: twin}) == "lossless-twin"


def test_of_the_configs_that_could_beat_the_best_the_fastest_race_first():
    # The quickstart at 1.5x on a 2-core EPYC (Zen 4): before the race 4 branches are the best that
    # fits 0.165 s; 8 and 16 branches are more accurate and may fit the top of its range. With one
    # place beside the best, 8 branches race (the likelier to fit), not 16; two branches fit the
    # bottom of the range and race as well.
    four = trial(20, 0.484, (0.38, 0.58), 0.105, (0.101, 0.109))
    eight = trial(21, 0.507, (0.39, 0.61), 0.172, (0.166, 0.180))
    sixteen = trial(22, 0.510, (0.37, 0.64), 0.209, (0.197, 0.215))
    two = trial(23, 0.452, (0.36, 0.54), 0.085, (0.079, 0.090))
    landscape = [four, eight, sixteen, two]
    assert [t.number for t in finalists(landscape, 0.1651, "mean", 2, (0.1437, 0.199))] == [21, 20, 23]
    assert [t.number for t in finalists(landscape, 0.1651, "mean", 3, (0.1437, 0.199))] == [22, 21, 20, 23]
    assert [t.number for t in finalists(landscape, 0.1651, "mean", 2)] == [20, 23]  # exact: two branches could tie


def test_a_range_names_every_answer_across_it():
    # The quickstart at 1.5x on a 2-core EPYC (Zen 4), run 1: the budget is 0.187 s but may lie at
    # 0.160-0.228 s. Four branches answer its bottom, eight its middle, and sixteen may fit its top.
    four = trial(30, 0.484, (0.38, 0.58), 0.108, (0.104, 0.111))
    eight = trial(31, 0.507, (0.39, 0.61), 0.163, (0.159, 0.167))
    sixteen = trial(32, 0.510, (0.37, 0.64), 0.2301, (0.2237, 0.2368))  # over the top, its interval under it
    raced = [sixteen, eight, four]
    assert [t.number for t in answers_across(raced, (0.160, 0.228), "mean")] == [30, 31, 32]
    accuracies = {n: {i: 0.5 for i in range(10)} for n in (30, 31, 32)}
    answer = budget_answer(0.187, raced, accuracies, "mean", 3, budget_range=(0.160, 0.228))
    assert (answer.trial, answer.runner_up, answer.verdict, answer.edge) == (31, 32, "tied", [30, 32])
    # Which lossless twin is faster changes from run to run: where one answers, the others tie too,
    # if they may fit under the top of the range.
    ngram = dict(speculative_method="ngram", num_speculative_tokens=4)
    eight_ngram = replace(eight, id=33, number=33, config=replace(eight.config, **ngram),
                          latency_s=LatencyStats(*[0.2] * 4), latency_ci={"mean": (0.19, 0.21)})
    sixteen_ngram = replace(sixteen, id=34, number=34, config=replace(sixteen.config, **ngram),  # over the top
                            latency_s=LatencyStats(*[0.3] * 4), latency_ci={"mean": (0.29, 0.31)})
    accuracies.update({33: accuracies[31], 34: accuracies[32]})
    twinned = budget_answer(0.187, [*raced, eight_ngram, sixteen_ngram], accuracies, "mean", 3, budget_range=(0.160, 0.228))
    assert (twinned.trial, twinned.runner_up, twinned.edge) == (31, 32, [30, 32, 33])
    # An absolute budget: only the one that may fit at the top, as before.
    assert [t.number for t in answers_across(raced, (0.187, 0.187), "mean")] == [31]
    assert budget_answer(0.23, raced, accuracies, "mean", 3).edge == [32]


def test_aggregators_of_the_same_branches_count_once():
    # The quickstart at 1.5x on a 2-core EPYC (Zen 4), final run 1: two aggregators of 16 branches
    # took both places beside the best (4 branches) and 8 branches, which fit the budget once timed
    # again, never raced. The race times branches, which every aggregator reuses: they count once.
    four = replace(trial(40, 0.484, (0.38, 0.58), 0.107, (0.098, 0.122)), config=config(4, "weighted_mean_logprob"))
    eight = [replace(trial(n, acc, (0.39, 0.61), 0.2145, (0.19, 0.24)), config=config(8, agg)) for n, acc, agg in
             ((41, 0.507, "weighted_mean_logprob"), (42, 0.501, "majority"))]
    sixteen = [replace(trial(n, acc, (0.37, 0.64), 0.2046, (0.199, 0.21)), config=config(16, agg)) for n, acc, agg in
               ((43, 0.510, "weighted_mean_logprob"), (44, 0.491, "majority"))]
    raced = finalists([four, *eight, *sixteen], 0.1885, "mean", 3, (0.138, 0.282))
    assert [t.number for t in raced] == [43, 41, 42, 44, 40]
    assert [t.number for t in finalists([four, *eight, *sixteen], 0.1885, "mean", 2, (0.138, 0.282))] == [43, 44, 40]


def test_the_answers_table_names_a_lossless_twin_instead_of_a_zero_margin():
    from rich.console import Console

    from latts.cli.tables import answers_table

    twin = replace(ONE, id=12, number=12, config=replace(ONE.config, speculative_method="ngram", num_speculative_tokens=4), latency_s=LatencyStats(0.41, 0.41, 0.41, 0.41))
    answer = budget_answer(0.5, [ONE, twin], {10: BOTH[10], 12: BOTH[10]}, "mean", 3)
    assert (answer.trial, answer.runner_up, answer.verdict, answer.margin) == (12, 10, "tied", 0.0)
    console = Console(width=250, record=True)
    console.print(answers_table([answer], {10: ONE, 12: twin}, "mean"))
    row = next(line for line in console.export_text().splitlines() if "s#12" in line)
    assert "tied with #10, its lossless twin (the same answers)" in row and "+0.0%" not in row
