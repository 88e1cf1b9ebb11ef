"""The pool estimator against exact enumeration with latts' own rules, on small hand-built pools."""

from __future__ import annotations

import itertools
import math
import random

import numpy as np
import pytest

from latts.aggregation import aggregate
from latts.aggregation.estimators import SUBSETS, problem_accuracy, subsets
from latts.core.records import Branch


def pool(seed: int, size: int, scores: bool = True) -> list[Branch]:
    rng = random.Random(seed)
    return [
        Branch(
            text="",
            answer=rng.choice(["12", "12", "13", "7", None]),
            n_tokens=3,
            token_logprobs=tuple(-rng.random() * 2 for _ in range(3)),
            # Coarse scores make ties common, so the tie rule is exercised too.
            verifier_score=rng.choice([0.2, 0.5, 0.9]) if scores else None,
        )
        for _ in range(size)
    ]


CORRECT = {"12": True, "13": False, "7": False}


def enumerate_exactly(samples, branches, rule) -> float:
    subsets_ = list(itertools.combinations(samples, branches))
    return sum(CORRECT.get(aggregate(rule, list(s)), False) for s in subsets_) / len(subsets_)


@pytest.mark.parametrize("rule", ["majority", "weighted_mean_logprob", "best_of_n", "weighted_best_of_n"])
@pytest.mark.parametrize("seed, size, branches", [(0, 6, 1), (1, 6, 3), (2, 8, 4), (3, 9, 5), (4, 5, 5)])
def test_matches_exact_enumeration(rule, seed, size, branches):
    samples = pool(seed, size)
    assert problem_accuracy(samples, CORRECT, branches, rule) == pytest.approx(enumerate_exactly(samples, branches, rule), abs=1e-12)


@pytest.mark.parametrize("rule", ["majority", "weighted_mean_logprob", "best_of_n"])
def test_random_subsets_when_enumeration_is_dear(rule):
    samples = pool(7, 16)
    assert math.comb(16, 8) > SUBSETS  # so the estimate draws subsets
    exact = enumerate_exactly(samples, 8, rule)
    estimates = [problem_accuracy(samples, CORRECT, 8, rule, rng=np.random.default_rng(s)) for s in range(5)]
    assert np.mean(estimates) == pytest.approx(exact, abs=0.02)


def test_pool_without_answers_and_too_small_a_pool():
    empty = [Branch("", None, 1, (-1.0,)) for _ in range(4)]
    assert problem_accuracy(empty, CORRECT, 2, "majority") == 0.0
    with pytest.raises(ValueError, match="fill it first"):
        subsets(3, 4, np.random.default_rng(0))


def test_a_lossless_speculative_config_is_estimated_as_its_target_alone_twin():
    """The same pooled samples decide both configs' answers: equal estimates, so the faster one wins
    a budget, not whichever drew luckier random subsets."""
    from latts.optimizer.evaluation import problem_accuracies
    from latts.problems import Problem
    from tests.handmade import config

    problems = [Problem(f"p{i}", f"Q{i}", "12") for i in range(5)]
    pooled = {i: pool(i, 30) for i in range(5)}  # C(30, 8) subsets: estimated from random ones
    alone = config(8, "weighted_mean_logprob")
    drafted = config(8, "weighted_mean_logprob", speculative_method="draft_model", draft_model="demo:draft", num_speculative_tokens=4)
    args = ([], problems, {"window": 16, "tail": 32}, pooled)
    assert problem_accuracies(drafted, *args) == problem_accuracies(alone, *args)
    assert problem_accuracies(config(4, "weighted_mean_logprob"), *args) != problem_accuracies(alone, *args)
