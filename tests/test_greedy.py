"""The paper's greedy allocation (`sampler: greedy`) on handmade landscapes: pure functions, no storage."""

from __future__ import annotations

from collections import Counter

import pytest

from latts.optimizer.greedy import Lattice, Walk, gain_per_second, improves, point_value, search, walk

LATTICE = Lattice((1, 2, 4, 8), (("draft:k=2", "draft:k=4"), ("ngram:k=4",)))
ACCURACY = {1: 0.3, 2: 0.5, 4: 0.6, 8: 0.65}  # lossless speculation: accuracy follows the branches
SPEEDUP = {"none": 1.0, "draft:k=2": 0.6, "draft:k=4": 0.5, "ngram:k=4": 1.1}


def fast_drafts(point):
    """Speculation pays: drafts cut latency at the same accuracy (ngram does not)."""
    branches, speculative = point
    return [(ACCURACY[branches], 0.1 * branches * SPEEDUP[speculative])]


def slow_drafts(point):
    """Speculation costs a fixed 20 ms per problem and buys nothing: only branches are worth their time."""
    branches, speculative = point
    return [(ACCURACY[branches], 0.1 * branches + (0.02 if speculative != "none" else 0.0))]


def test_neighbours_double_the_branches_and_switch_on_or_lengthen_each_draft():
    assert LATTICE.start == (1, "none")
    assert LATTICE.neighbours((1, "none")) == [(2, "none"), (1, "draft:k=2"), (1, "ngram:k=4")]
    assert LATTICE.neighbours((2, "draft:k=2")) == [(4, "draft:k=2"), (2, "draft:k=4")]
    assert LATTICE.neighbours((8, "draft:k=4")) == []


def test_the_path_takes_the_most_accuracy_per_second_within_the_budget():
    walks, _ = search(LATTICE, [0.15, 0.5], fast_drafts)
    # Free speed first (longer drafts at the same accuracy), then branches while they fit.
    assert walks.paths[0.15] == [(1, "none"), (1, "draft:k=2"), (1, "draft:k=4"), (2, "draft:k=4")]
    assert walks.paths[0.5] == [(1, "none"), (1, "draft:k=2"), (1, "draft:k=4"), (2, "draft:k=4"), (4, "draft:k=4"), (8, "draft:k=4")]
    walks, order = search(LATTICE, [0.5], slow_drafts)
    # Branches while they fit; a draft that fits but only costs time is no step.
    assert walks.paths[0.5] == [(1, "none"), (2, "none"), (4, "none")]
    assert (4, "draft:k=4") not in order  # nor is a longer draft behind it measured


def test_a_walk_stops_when_no_neighbour_within_the_budget_improves():
    walks, order = search(LATTICE, [0.25], slow_drafts)
    assert walks.paths[0.25] == [(1, "none"), (2, "none")]
    assert walks.wanted == []
    more, draft, ngram = LATTICE.neighbours((2, "none"))
    assert {more, draft, ngram} <= set(order)
    assert slow_drafts(more)[0][1] > 0.25  # 4 branches: 0.4 s, past the budget
    assert slow_drafts(draft)[0][1] <= 0.25 and slow_drafts(draft)[0][0] == slow_drafts((2, "none"))[0][0]  # fits, gains nothing


def test_a_step_must_improve():
    assert improves((0.5, 0.2), (0.6, 0.3)) and improves((0.5, 0.2), (0.5, 0.1))
    assert not improves((0.5, 0.2), (0.5, 0.3)) and not improves((0.5, 0.2), (0.5, 0.2)) and not improves((0.5, 0.2), (0.4, 0.1))


def test_budgets_share_every_measurement():
    calls = Counter()

    def counted(point):
        calls[point] += 1
        return fast_drafts(point)

    _, both = search(LATTICE, [0.15, 0.5], counted)
    assert max(calls.values()) == 1 and len(both) == len(set(both))
    _, large_alone = search(LATTICE, [0.5], fast_drafts)
    assert set(both) == set(large_alone)  # the smaller budget's walk cost nothing extra


def test_a_budget_nothing_fits_has_an_empty_path():
    walks, order = search(LATTICE, [0.05], fast_drafts)
    assert walks.paths[0.05] == [] and order == [(1, "none")]  # the start is measured, and it does not fit


def test_a_point_is_worth_its_best_config_within_the_budget():
    # Aggregators (or verifiers) at one point are scored, not walked: the budget picks among them.
    assert point_value([(0.7, 0.3), (0.6, 0.1), (0.6, 0.2)], 0.25) == (0.6, 0.1)
    assert point_value([(0.7, 0.3)], 0.25) is None
    assert point_value([], 1.0) is None  # every config at the point failed


def test_gain_per_second_prefers_free_improvements():
    assert gain_per_second((0.5, 1.0), (0.6, 1.5)) == pytest.approx(0.2)
    assert gain_per_second((0.5, 1.0), (0.5, 0.8)) == float("inf")
    assert gain_per_second((0.5, 1.0), (0.4, 0.8)) == float("-inf")


def test_a_walk_waits_for_the_points_it_needs():
    measured = {(1, "none"): fast_drafts((1, "none"))}
    state = walk(LATTICE, [0.5], measured)
    assert state.paths[0.5] == [(1, "none")] and state.wanted == LATTICE.neighbours((1, "none"))
    assert walk(LATTICE, [0.5], {}).wanted == [(1, "none")]
    failed = {**measured, **{n: [] for n in LATTICE.neighbours((1, "none"))}}  # every neighbour failed
    assert walk(LATTICE, [0.5], failed) == Walk({0.5: [(1, "none")]}, [])
