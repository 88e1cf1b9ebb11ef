"""The staged search (`sampler: staged`) on handmade landscapes: pure functions, no storage."""

from __future__ import annotations

import pytest

from latts.optimizer.greedy import Lattice, point_value
from latts.optimizer.staged import plan, predict, predicted_best, profile_branches

DRAFTS = tuple(f"draft:k={k}" for k in range(1, 9))
NGRAM = tuple(f"ngram:k={k}" for k in range(1, 5))
LATTICE = Lattice((1, 2, 4, 8, 16), (DRAFTS, NGRAM))
ACCURACY = {1: 0.3, 2: 0.45, 4: 0.55, 8: 0.62, 16: 0.66}  # lossless speculation: accuracy follows the branches
# The draft model pays from k=2 and most at k=6; ngram never pays. Its speed-up shrinks with more branches.
DRAFT_RATIO = {k: r for k, r in zip(range(1, 9), (1.1, 0.95, 0.8, 0.7, 0.64, 0.6, 0.62, 0.66))}


def latency(point):
    branches, speculative = point
    without = 0.01 * branches**0.8
    if speculative == "none":
        return without
    method, k = speculative.split(":k=")
    ratio = DRAFT_RATIO[int(k)] if method == "draft" else 1.05 + 0.01 * int(k)
    return without * (1 - (1 - ratio) * (1 - branches / 32))


def landscape(point):
    """Two aggregators per point; the second is a little slower and less accurate."""
    return [(ACCURACY[point[0]], latency(point)), (ACCURACY[point[0]] - 0.05, latency(point) + 1e-4)]


def everything():
    return [(b, s) for b in LATTICE.branches for s in ("none", *DRAFTS, *NGRAM)]


def best(budget):
    values = {p: v for p in everything() if (v := point_value(landscape(p), budget)) is not None}
    return max(values, key=lambda p: (values[p][0], -values[p][1]))


def search(budgets, measure=landscape):
    """Measure the first point `plan` wants, one at a time, until it wants none: the measuring order."""
    measured, order = {}, []
    while wanted := plan(LATTICE, budgets, measured):
        measured[wanted[0]] = measure(wanted[0])
        order.append(wanted[0])
    return order


def test_branches_from_the_most_down_until_one_fits_the_smallest_budget_then_the_profile_there():
    without = {b: latency((b, "none")) for b in LATTICE.branches}
    assert without[2] < 0.02 < without[4]
    order = search([0.02])
    assert order[:4] == [(16, "none"), (8, "none"), (4, "none"), (2, "none")]  # 2 branches fit 0.02 s: 1 is never better
    assert profile_branches(LATTICE, [0.05, 0.02], without) == 4  # the fewest that miss the smallest budget
    assert profile_branches(LATTICE, [1.0], without) == 16  # every count fits: the most branches
    measured = {p: landscape(p) for p in order[:4]}
    # Each option's shortest, middle and longest draft at 4 branches.
    assert plan(LATTICE, [0.02], measured) == [(4, "draft:k=1"), (4, "draft:k=5"), (4, "draft:k=8"), (4, "ngram:k=1"), (4, "ngram:k=3"), (4, "ngram:k=4")]
    assert plan(LATTICE, [], {}) == [(16, "none")] and len(search([])) == len(everything())  # no budget yet: every count


def test_the_profile_walks_to_the_fastest_draft_of_an_option_that_pays():
    order = search([0.02])[4:]  # after the branches
    profile = [s for b, s in order[:9]]
    assert {b for b, _ in order[:9]} == {4}
    # k=5 is the fastest coarse draft: then its neighbours k=4 and k=6, then k=6's neighbour k=7 shows
    # k=6 a local minimum. Ngram never beats no speculation: no walk after its coarse drafts.
    assert profile == ["draft:k=1", "draft:k=5", "draft:k=8", "draft:k=4", "draft:k=6", "draft:k=7", "ngram:k=1", "ngram:k=3", "ngram:k=4"]
    # The budget's best (4 branches at k=6) was measured in the profile; then the drafts left at its
    # branch count, by their speed in the profile (unprofiled last), before anything else.
    assert order[9:12] == [(4, "draft:k=2"), (4, "draft:k=3"), (4, "ngram:k=2")]


def test_after_the_bests_the_drafts_at_their_branch_counts_in_turns_in_the_profiles_order():
    order = search([0.02, 0.05, 0.2])
    bests = [(4, "draft:k=6"), (8, "draft:k=6"), (16, "draft:k=6")]
    assert order[13:15] == bests[1:] and bests[0] in order[:13]
    # 8 and 16 branches (one draft measured each) take turns before 4 (profiled): k=7, k=5, k=8,
    # k=4 were the fastest drafts after k=6 in the profile.
    assert order[15:23] == [(b, f"draft:k={k}") for k in (7, 5, 8, 4) for b in (8, 16)]


@pytest.mark.parametrize("budgets", [[0.02], [0.02, 0.05, 0.2], [0.015, 0.03, 0.08]])
def test_every_budgets_best_is_measured_early_and_the_grid_in_the_end(budgets):
    order = search(budgets)
    assert sorted(order) == sorted(everything())  # the last stage covers the grid
    found = 1 + max(order.index(best(budget)) for budget in budgets)
    # Branches (4-5), the profile (9), then one or two points per budget: under a third of the 65 points.
    assert found <= 20, (found, [best(b) for b in budgets])


def test_a_draft_measured_slow_at_a_branch_count_corrects_the_others_there():
    """The profile (at 4 branches) predicts drafts pay at 16 too; once one is measured slower than no
    speculation there, the same option's other drafts are predicted as far off, and none is best."""
    measured = {p: landscape(p) for p in everything() if p[1] == "none" or p[0] == 4}
    accuracy = {b: ACCURACY[b] for b in LATTICE.branches}
    budget = 0.1  # 16 branches fit without speculation
    assert predicted_best(budget, predict(LATTICE, 4, measured), measured, accuracy) == (16, "draft:k=6")
    measured[(16, "draft:k=6")] = [(a, latency((16, "none")) * 1.1) for a, _ in landscape((16, "draft:k=6"))]
    predicted = predict(LATTICE, 4, measured)
    ratio = {k: latency((4, f"draft:k={k}")) / latency((4, "none")) for k in (5, 6)}
    assert predicted[(16, "draft:k=5")] == pytest.approx(measured[(16, "draft:k=6")][0][1] * ratio[5] / ratio[6])
    assert predicted[(16, "draft:k=5")] > latency((16, "none"))
    assert predicted_best(budget, predicted, measured, accuracy) == (16, "none")


def test_a_failed_point_is_not_a_candidate():
    failed = {(4, "draft:k=6")}
    order = search([0.02], measure=lambda p: [] if p in failed else landscape(p))
    assert sorted(order) == sorted(everything()) and order.count((4, "draft:k=6")) == 1
