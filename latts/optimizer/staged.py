"""A staged search of the lattice (`sampler: staged`): branches, then one speculation profile, then each budget's best.

latts' space has structure a black-box sampler does not see: a lossless speculative choice changes
only latency (the sample pool scores it on the target's own samples), more branches are more
accurate and slower, and the speed-up a draft gives at one branch count is a fair first guess at
another. `staged` measures points of the greedy lattice (branches, speculative choice;
latts.optimizer.greedy) in stages, each chosen from what the earlier ones measured:

1. **Branches**: without speculation, from the most branches down, until a count fits the smallest
   budget (fewer branches fit every budget and are less accurate). Every aggregator is scored at
   each point, so this gives each count's accuracy and its latency without speculation.
2. **Speculation profile** at the fewest of those branch counts that the smallest budget cannot
   afford without speculation (the most branches if all fit), where speculation decides most:
   each draft option at its shortest, middle and longest draft; then, for an option whose fastest
   draft beats no speculation there, the neighbours of its fastest draft until that one is a local
   minimum.
3. **Each budget's best**: a point's latency is predicted as its branch count's latency without
   speculation times the profile's ratio for its choice (speculative / none), times how far the
   same option's drafts measured at that branch count are from their own prediction (a geometric
   mean; 1 where none is measured). The point with the most accurate config predicted within the
   budget (the faster of equals) is measured, and again until that point is a measured one.
4. **The rest**, so that a long search still covers the grid: the drafts at the budgets' best
   branch counts (which draft is fastest there decides the exact best), each count's in the
   profile's order, fastest first, the count with the fewest drafts measured first; then every
   other point in lattice order.

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


def profile_branches(lattice: Lattice, budgets: Sequence[float], without: Mapping[int, float]) -> int:
    """Where to profile speculation: the fewest measured branches the smallest budget cannot afford without it."""
    smallest = min(budgets, default=math.inf)
    return next((b for b in lattice.branches if (without.get(b) or 0.0) > smallest), lattice.branches[-1])


def predict(lattice: Lattice, at: int, measured: Mapping[Point, Sequence[Outcome]]) -> dict[Point, float]:
    """Latency at every point the profile covers, at branch counts measured without speculation:
    measured where it was, else predicted (stage 3)."""
    without = _without(lattice, measured)
    if not without.get(at):
        return {}
    ratio = {s: t / without[at] for s in lattice.speculative if (t := _timed(measured, (at, s))) is not None}
    found: dict[Point, float] = {}
    for b, base in without.items():
        found[(b, NONE)] = base
        for lengths in lattice.drafts:
            off = [math.log(t / (base * ratio[s])) for s in lengths if s in ratio and (t := _timed(measured, (b, s))) is not None]
            correction = math.exp(sum(off) / len(off)) if off else 1.0
            for s in lengths:
                if (t := _timed(measured, (b, s))) is not None:
                    found[(b, s)] = t
                elif (b, s) not in measured and s in ratio:  # a failed point gets no prediction
                    found[(b, s)] = base * ratio[s] * correction
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
    wanted = _branches(lattice, budgets, measured)
    if wanted:
        return wanted
    without = _without(lattice, measured)
    at = profile_branches(lattice, budgets, without)
    wanted = _profile(lattice, at, measured)
    if wanted:
        return wanted
    predicted = predict(lattice, at, measured)
    accuracy = {b: max((o[0] for o in measured[(b, NONE)]), default=0.0) for b in without}
    best = [p for budget in budgets if (p := predicted_best(budget, predicted, measured, accuracy)) is not None]
    wanted = _unmeasured(best, measured)
    if wanted:
        return wanted
    everywhere = ((b, s) for b in lattice.branches for s in (NONE, *lattice.speculative))
    return _unmeasured([*_in_turns(lattice, [b for b, _ in best], at, measured), *everywhere], measured)


def _in_turns(lattice: Lattice, rows: Sequence[int], at: int, measured: Mapping[Point, Sequence[Outcome]]) -> list[Point]:
    """Stage 4's first points: the unmeasured drafts at these branch counts, each count's fastest in the
    profile first (unprofiled last), the count with the fewest drafts measured first: an order that
    one more measurement does not shuffle."""
    drafts = lattice.speculative
    profiled = lambda s: t if (t := _timed(measured, (at, s))) is not None else math.inf  # noqa: E731
    queues = {b: sorted(_unmeasured(((b, s) for s in drafts), measured), key=lambda p: profiled(p[1])) for b in dict.fromkeys(rows)}
    done = {b: len(drafts) - len(queue) for b, queue in queues.items()}
    order = []
    while any(queues.values()):
        b = min((b for b in queues if queues[b]), key=done.__getitem__)
        order.append(queues[b].pop(0))
        done[b] += 1
    return order


def _branches(lattice: Lattice, budgets: Sequence[float], measured: Mapping[Point, Sequence[Outcome]]) -> list[Point]:
    """Stage 1's next point: without speculation, from the most branches down, until one fits the smallest budget."""
    smallest = min(budgets, default=None)
    for b in reversed(lattice.branches):
        if (b, NONE) not in measured:
            return [(b, NONE)]
        t = latency(measured[(b, NONE)])
        if smallest is not None and t is not None and t <= smallest:
            break
    return []


def _profile(lattice: Lattice, at: int, measured: Mapping[Point, Sequence[Outcome]]) -> list[Point]:
    """Stage 2's next points: each draft option's shortest, middle and longest draft at `at`; then, where
    its fastest draft beats no speculation there, that draft's unmeasured neighbours."""
    wanted = []
    without = _timed(measured, (at, NONE))
    for lengths in lattice.drafts:
        coarse = _unmeasured(((at, s) for s in (lengths[0], lengths[len(lengths) // 2], lengths[-1])), measured)
        if coarse:
            wanted += coarse
            continue
        timed = {i: t for i, s in enumerate(lengths) if (t := _timed(measured, (at, s))) is not None}
        fastest = min(timed, key=timed.__getitem__, default=None)
        if fastest is not None and without is not None and timed[fastest] < without:
            wanted += _unmeasured(((at, lengths[i]) for i in (fastest - 1, fastest + 1) if 0 <= i < len(lengths)), measured)
    return wanted


def _without(lattice: Lattice, measured: Mapping[Point, Sequence[Outcome]]) -> dict[int, float]:
    """Each branch count's latency without speculation, where it was measured (and did not fail)."""
    return {b: t for b in lattice.branches if (t := _timed(measured, (b, NONE))) is not None}


def _timed(measured: Mapping[Point, Sequence[Outcome]], point: Point) -> float | None:
    return latency(measured[point]) if point in measured else None


def _unmeasured(points: Iterable[Point], measured: Mapping[Point, Sequence[Outcome]]) -> list[Point]:
    return [p for p in dict.fromkeys(points) if p not in measured]
