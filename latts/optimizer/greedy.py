"""The seed paper's greedy allocation between its two levers, as latts reads it (`sampler: greedy`).

Wang et al. grow, under a target latency, whichever of branch-wise parallelism (more branches) and
sequence-wise parallelism (speculative decoding, longer drafts) buys more accuracy for the latency it
adds. The paper gives no code; latts reads it as a walk on a lattice of points (branches, speculative
choice), one walk per budget:

- start at the fewest branches without speculation;
- at each step measure the neighbours: the next branch count of the space (double, in a space of
  powers of two), and, without speculation, each draft option at its shortest draft, or, with one,
  the same option's next longer draft;
- move to the neighbour with the most accuracy gained per second of latency added among those
  within the budget that improve on the current point: more accurate, or as accurate and faster
  (faster and no less accurate first); keep the path;
- stop when no neighbour within the budget improves on it.

A move must improve: a lossless draft never changes accuracy (the pool scores it on the target's
own samples), so a walk that also took steps gaining nothing climbed every slower draft length
once more branches stopped fitting.

A point's value for a budget is its most accurate config within the budget: the aggregators,
verifiers and sampling settings at a point are scored on the same stored branches at each step, not
walked. Walks share every measurement.

Pure functions on plain data: the controller runs `walk` in the `latts tune` process on what is
stored; benchmarks run `search` on landscapes replayed from storage.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from latts.core.spec import NONE

Point = tuple[int, str]  # (branches, speculative choice: "none" or a draft option at one draft length)
Outcome = tuple[float, float]  # (accuracy, latency in seconds) of one config at a point


@dataclass(frozen=True)
class Lattice:
    branches: tuple[int, ...]  # ascending
    drafts: tuple[tuple[str, ...], ...]  # each draft option's speculative choices, by increasing draft length

    @property
    def start(self) -> Point:
        return (self.branches[0], NONE)

    @property
    def speculative(self) -> tuple[str, ...]:
        """Every speculative choice, all draft options' in turn."""
        return tuple(s for lengths in self.drafts for s in lengths)

    def neighbours(self, point: Point) -> list[Point]:
        branches, speculative = point
        found = []
        more = self.branches.index(branches) + 1
        if more < len(self.branches):
            found.append((self.branches[more], speculative))
        if speculative == NONE:
            found += [(branches, lengths[0]) for lengths in self.drafts]
        else:
            lengths = next(lengths for lengths in self.drafts if speculative in lengths)
            longer = lengths.index(speculative) + 1
            if longer < len(lengths):
                found.append((branches, lengths[longer]))
        return found


@dataclass(frozen=True)
class Walk:
    paths: dict[float, list[Point]]  # per budget, the points walked through; empty when not even the start fits
    wanted: list[Point]  # to measure before any walk can go on; empty: every walk has stopped


def point_value(outcomes: Sequence[Outcome], budget: float) -> Outcome | None:
    """A point's value for a budget: its most accurate config within it (the faster of equals)."""
    return max((o for o in outcomes if o[1] <= budget), key=lambda o: (o[0], -o[1]), default=None)


def gain_per_second(current: Outcome, neighbour: Outcome) -> float:
    """Accuracy gained per second of latency added; infinite for a neighbour no slower and no worse."""
    accuracy, latency = neighbour[0] - current[0], neighbour[1] - current[1]
    if latency <= 0:
        return math.inf if accuracy >= 0 else -math.inf
    return accuracy / latency


def improves(current: Outcome, neighbour: Outcome) -> bool:
    """More accurate, or as accurate and faster: a step worth taking."""
    return neighbour[0] > current[0] or (neighbour[0] == current[0] and neighbour[1] < current[1])


def walk(lattice: Lattice, budgets: Sequence[float], measured: Mapping[Point, Sequence[Outcome]]) -> Walk:
    """Each budget's walk as far as the measured points allow, and the points needed to go on.

    `measured` holds the outcomes of every config at each measured point (failed ones left out).
    """
    paths: dict[float, list[Point]] = {}
    wanted: list[Point] = []
    for budget in budgets:
        point, path = lattice.start, []
        if point not in measured:
            wanted.append(point)
        elif (current := point_value(measured[point], budget)) is not None:
            path.append(point)
            while True:
                neighbours = lattice.neighbours(point)
                missing = [n for n in neighbours if n not in measured]
                if missing:
                    wanted += missing
                    break
                better = [
                    (n, o) for n in neighbours if (o := point_value(measured[n], budget)) is not None and improves(current, o)
                ]
                if not better:
                    break
                point, current = max(better, key=lambda pair: (gain_per_second(current, pair[1]), pair[1][0], -pair[1][1]))
                path.append(point)
        paths[budget] = path
    return Walk(paths, list(dict.fromkeys(wanted)))


def search(
    lattice: Lattice, budgets: Sequence[float], measure: Callable[[Point], Sequence[Outcome]]
) -> tuple[Walk, list[Point]]:
    """Walk every budget to its end, measuring points as the walks ask; the walks and the measuring order."""
    measured: dict[Point, Sequence[Outcome]] = {}
    order: list[Point] = []
    while (state := walk(lattice, budgets, measured)).wanted:
        for point in state.wanted:
            measured[point] = measure(point)
            order.append(point)
    return state, order
