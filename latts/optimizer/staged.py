"""A staged search of the lattice (`sampler: staged`): branches, then one speculation profile, then each budget's best.

latts' space has structure a black-box sampler does not see: a lossless speculative choice changes
only latency (the sample pool scores it on the target's own samples), and the speed-up a draft
gives at one branch count is a fair guess of what it gives at the next. `staged` measures points of
the greedy lattice (branches, speculative choice; latts.optimizer.greedy) in stages, each chosen
from what the previous ones measured:

1. **Branches**: every branch count without speculation, fewest first (the reference and the
   baseline are among them). Every aggregator is scored at each, so this gives each branch count's
   accuracy and its latency without speculation.
2. **Speculation profile** at one branch count: the fewest branches that the smallest budget cannot
   afford without speculation, where speculation decides most (the most branches if every count
   fits). Each draft option at its shortest and longest draft, then the neighbours of its fastest
   draft until that one is a local minimum (a draft's latency falls, then rises, with its length).
3. **Each budget's best**: a point's latency is predicted as its branch count's latency without
   speculation times the profile's ratio for its choice (speculative / none), times how far the
   measured drafts of the same option at that branch count are from their own prediction (a
   geometric mean; 1 where none is measured). The point with the most accurate config predicted
   within the budget (the faster of equals) is measured, and again until that point is a measured
   one.
4. **The rest**: every other point, first those at the branch counts of the budgets' best points
   (predicted fastest first: which draft is fastest there decides the exact best), then the rest
   in lattice order; so a long search still covers the grid.

Pure functions on plain data, like `greedy`: the controller runs `plan` in the `latts tune` process
on what is stored; benchmarks replay it on stored landscapes.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence

from latts.core.spec import NONE
from latts.optimizer.greedy import Lattice, Outcome, Point, point_value


def latency(outcomes: Sequence[Outcome]) -> float | None:
    """A point's latency: its fastest config's (aggregators differ by their own time only); None if it failed."""
    return min((o[1] for o in outcomes), default=None)


def profile_branches(lattice: Lattice, budgets: Sequence[float], without: Mapping[int, float | None]) -> int:
    """Where to profile speculation: the fewest branches the smallest budget cannot afford without it."""
    smallest = min(budgets, default=math.inf)
    return next((b for b in lattice.branches if (without[b] or 0.0) > smallest), lattice.branches[-1])


def predict(lattice: Lattice, at: int, measured: Mapping[Point, Sequence[Outcome]]) -> dict[Point, float]:
    """Latency at every point the profile covers: measured where it was, else predicted (stage 3)."""
    without = {b: latency(measured[(b, NONE)]) for b in lattice.branches}
    if not without[at]:
        return {}
    ratio = {s: t / without[at] for lengths in lattice.drafts for s in lengths if (t := _timed(measured, (at, s))) is not None}
    found: dict[Point, float] = {}
    for b in lattice.branches:
        if without[b] is None:
            continue
        found[(b, NONE)] = without[b]
        for lengths in lattice.drafts:
            off = [math.log(t / (without[b] * ratio[s])) for s in lengths if s in ratio and (t := _timed(measured, (b, s))) is not None]
            correction = math.exp(sum(off) / len(off)) if off else 1.0
            for s in lengths:
                if (b, s) in measured:
                    if (t := latency(measured[(b, s)])) is not None:
                        found[(b, s)] = t
                elif s in ratio:
                    found[(b, s)] = without[b] * ratio[s] * correction
    return found


def predicted_best(
    budget: float, predicted: Mapping[Point, float], measured: Mapping[Point, Sequence[Outcome]], accuracy: Mapping[int, float]
) -> Point | None:
    """The point whose best config within the budget is most accurate (the faster of equals), as
    measured where it was, else as predicted with its branch count's accuracy."""
    values: dict[Point, Outcome] = {}
    for point, t in predicted.items():
        if point in measured:
            value = point_value(measured[point], budget)
        else:
            value = (accuracy[point[0]], t) if t <= budget else None
        if value is not None:
            values[point] = value
    return max(values, key=lambda p: (values[p][0], -values[p][1]), default=None)


def plan(lattice: Lattice, budgets: Sequence[float], measured: Mapping[Point, Sequence[Outcome]]) -> list[Point]:
    """The points to measure next, most useful first: the current stage's; empty once every point is measured.

    `measured` holds the outcomes of every config at each measured point (failed ones left out).
    """
    wanted = _unmeasured(((b, NONE) for b in lattice.branches), measured)
    if wanted:
        return wanted
    at = profile_branches(lattice, budgets, {b: latency(measured[(b, NONE)]) for b in lattice.branches})
    wanted = _profile(lattice, at, measured)
    if wanted:
        return wanted
    predicted = predict(lattice, at, measured)
    accuracy = {b: max((o[0] for o in measured[(b, NONE)]), default=0.0) for b in lattice.branches}
    best = [p for budget in budgets if (p := predicted_best(budget, predicted, measured, accuracy)) is not None]
    wanted = _unmeasured(best, measured)
    if wanted:
        return wanted
    # The rest: at the budgets' best branch counts first, predicted fastest first, then in lattice order.
    unknown = math.inf
    there = sorted(
        ((b, s) for b in dict.fromkeys(b for b, _ in best) for lengths in lattice.drafts for s in lengths),
        key=lambda p: predicted.get(p, unknown),
    )
    everywhere = ((b, s) for b in lattice.branches for lengths in lattice.drafts for s in lengths)
    return _unmeasured([*there, *everywhere], measured)


def _profile(lattice: Lattice, at: int, measured: Mapping[Point, Sequence[Outcome]]) -> list[Point]:
    """Stage 2's next points: each draft option's shortest and longest draft at `at`, then the
    unmeasured neighbours of its fastest draft."""
    wanted = []
    for lengths in lattice.drafts:
        coarse = _unmeasured(((at, s) for s in (lengths[0], lengths[-1])), measured)
        if coarse:
            wanted += coarse
            continue
        timed = {i: t for i, s in enumerate(lengths) if (t := _timed(measured, (at, s))) is not None}
        if timed:
            fastest = min(timed, key=timed.__getitem__)
            wanted += _unmeasured(((at, lengths[i]) for i in (fastest - 1, fastest + 1) if 0 <= i < len(lengths)), measured)
    return wanted


def _timed(measured: Mapping[Point, Sequence[Outcome]], point: Point) -> float | None:
    return latency(measured[point]) if point in measured else None


def _unmeasured(points: Iterable[Point], measured: Mapping[Point, Sequence[Outcome]]) -> list[Point]:
    return [p for p in dict.fromkeys(points) if p not in measured]
