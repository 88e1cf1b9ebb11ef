"""Accuracy of B branches estimated from a larger sample pool, without generating again.

For one problem with M >= B pooled samples (independent draws from the same model and sampling),
the chance that B fresh branches aggregate to a correct answer is estimated by the mean over
B-subsets of the pool: over all of them when there are few enough (exact), else over random ones.
Every B-subset of i.i.d. samples is itself a draw of B branches, so both are unbiased. A subset
keeps pool order, so ties break as they would among branches in engine output order.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence

import numpy as np

from latts.aggregation.rules import RULES, Branch, weights
from latts.core.statistics import random_subsets

# Up to this many B-subsets per problem are enumerated; beyond, as many are drawn at random.
SUBSETS = 2000


def subsets(pool_size: int, branches: int, rng: np.random.Generator) -> np.ndarray:
    """B-subsets of range(pool_size) as rows of sorted indices: all of them, or SUBSETS random ones."""
    if branches > pool_size:
        raise ValueError(f"the pool holds {pool_size} samples, fewer than {branches} branches; fill it first")
    if math.comb(pool_size, branches) <= SUBSETS:
        return np.array(list(itertools.combinations(range(pool_size), branches)), dtype=np.int64)
    return random_subsets(pool_size, branches, SUBSETS, rng)


def problem_accuracy(
    samples: Sequence[Branch],
    correct: Mapping[str, bool],
    branches: int,
    rule: str,
    parameters: Mapping[str, int] | None = None,
    rng: np.random.Generator | None = None,
) -> float:
    """Estimated chance that `branches` branches aggregated by `rule` answer one problem correctly.

    `samples` is the problem's pool in pool order; `correct` grades each distinct answer.
    """
    answers = [s.answer for s in samples]
    labels = {a: k for k, a in enumerate(dict.fromkeys(a for a in answers if a is not None))}
    if not labels:
        return 0.0
    category = np.array([labels.get(a, -1) for a in answers])  # -1: no answer, never counts
    weight = np.array(weights(rule, samples, parameters), dtype=float)
    rows = subsets(len(samples), branches, rng or np.random.default_rng(0))
    cats, w = category[rows], weight[rows]  # (subsets, B)
    answered = cats >= 0
    if RULES[rule].vote:
        # Totals per answer, summed in branch order like the rule itself (so float ties agree).
        totals = np.zeros((len(rows), len(labels)))
        for j in range(branches):
            np.add.at(totals, (np.arange(len(rows))[answered[:, j]], cats[answered[:, j], j]), w[answered[:, j], j])
        present = np.zeros_like(totals, dtype=bool)
        present[np.nonzero(answered)[0], cats[answered]] = True
        # Earliest position of each answer in the subset: ties go to the answer seen first.
        first = np.full(totals.shape, branches)
        for j in reversed(range(branches)):
            first[np.arange(len(rows))[answered[:, j]], cats[answered[:, j], j]] = j
        totals[~present] = -np.inf
        top = totals == totals.max(axis=1, keepdims=True)
        winner = np.where(top, first, branches + 1).argmin(axis=1)
    else:
        # The earliest of the heaviest answered branches decides.
        heaviest = np.where(answered, w, -np.inf).argmax(axis=1)
        winner = cats[np.arange(len(rows)), heaviest]
    has_answer = answered.any(axis=1)
    right = np.array([correct[a] for a in labels])
    return float(np.mean(has_answer & right[np.where(has_answer, winner, 0)]))
