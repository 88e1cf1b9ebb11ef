"""Aggregation rules on hand-built records with known answers, ties included; the rule registry."""

from __future__ import annotations

import math

import pytest

from latts.aggregation import PARAMETER_DEFAULTS, RULES, aggregate, rules
from latts.core.records import Branch


def branch(answer, logprobs=(-0.1,), score=None):
    return Branch(text=f"\\boxed{{{answer}}}", answer=answer, n_tokens=len(logprobs), token_logprobs=tuple(logprobs), verifier_score=score)


def test_majority_picks_most_common_answer():
    assert rules.majority([branch("3"), branch("5"), branch("5")]) == "5"


def test_majority_tie_goes_to_the_answer_seen_first():
    assert rules.majority([branch("7"), branch("3"), branch("3"), branch("7")]) == "7"
    assert rules.majority([branch("3"), branch("7"), branch("7"), branch("3")]) == "3"


def test_branches_without_answer_do_not_vote():
    assert rules.majority([branch(None), branch(None), branch("4")]) == "4"
    assert rules.majority([branch(None)]) is None
    assert rules.majority([]) is None


def test_weighted_mean_logprob_lets_confident_minority_win():
    confident = branch("9", [-0.01] * 10)
    unsure = [branch("2", [-3.0] * 10), branch("2", [-3.0] * 10)]
    assert rules.majority([confident, *unsure]) == "2"
    assert aggregate("weighted_mean_logprob", [confident, *unsure]) == "9"


def test_confidence_measures_on_known_sequences():
    lp = [-1.0, -1.0, -4.0, -4.0, -1.0, -1.0]
    assert rules.mean_logprob(lp) == pytest.approx(-2.0)
    assert rules.min_window_logprob(lp, window=2) == pytest.approx(-4.0)
    assert rules.min_window_logprob(lp, window=3) == pytest.approx(-3.0)
    assert rules.min_window_logprob(lp, window=16) == pytest.approx(-2.0)  # shorter than the window
    assert rules.tail_logprob(lp, tail=2) == pytest.approx(-1.0)
    assert rules.bottom10_logprob(lp) == pytest.approx(-4.0)  # ceil(0.6) = 1 token
    assert rules.bottom10_logprob([-float(i) for i in range(20)]) == pytest.approx(-18.5)  # 2 lowest
    assert rules.mean_logprob([]) == -math.inf


def test_window_and_tail_rules_see_different_parts_of_the_text():
    # A branch that wobbles in the middle but ends sure, against one that is mildly unsure throughout.
    wobbly = branch("1", [-0.01] * 20 + [-6.0] * 4 + [-0.01] * 40)
    steady = branch("2", [-0.5] * 64)
    assert aggregate("weighted_tail", [wobbly, steady], {"tail": 32}) == "1"
    assert aggregate("weighted_min_window", [wobbly, steady], {"window": 4}) == "2"
    assert aggregate("weighted_bottom10", [wobbly, steady]) == "2"


def test_best_of_n_and_weighted_best_of_n():
    branches = [branch("5", score=0.9), branch("6", score=0.6), branch("6", score=0.5)]
    assert rules.best_of_n(branches) == "5"
    assert rules.weighted_best_of_n(branches) == "6"  # 1.1 beats 0.9
    tie = [branch("1", score=0.5), branch("2", score=0.5)]
    assert rules.best_of_n(tie) == "1"
    assert rules.weighted_best_of_n(tie) == "1"


def test_verifier_rules_refuse_records_without_scores():
    with pytest.raises(ValueError, match="verifier"):
        rules.best_of_n([branch("1")])


def test_registry_knows_what_each_rule_needs():
    assert set(RULES) == {
        "majority", "weighted_mean_logprob", "weighted_min_window", "weighted_tail", "weighted_bottom10",
        "best_of_n", "weighted_best_of_n",
    }
    assert {name for name, rule in RULES.items() if rule.needs_verifier} == {"best_of_n", "weighted_best_of_n"}
    assert {name for name, rule in RULES.items() if rule.needs_logprobs} == {
        "weighted_mean_logprob", "weighted_min_window", "weighted_tail", "weighted_bottom10",
    }
    assert PARAMETER_DEFAULTS == {"window": 16, "tail": 32}


def test_spec_defaults_come_from_the_registry():
    from latts.core.spec import AggregationSpec

    assert AggregationSpec().model_dump() == PARAMETER_DEFAULTS


def test_parameters_default_when_not_given():
    # 20 sure tokens, then 20 unsure ones: the default tail (32 tokens) sees both, a tail of 8 only the unsure ones.
    ending_unsure = branch("1", [-0.01] * 20 + [-2.0] * 20)
    steady = branch("2", [-1.5] * 40)
    assert aggregate("weighted_tail", [ending_unsure, steady]) == "1"
    assert aggregate("weighted_tail", [ending_unsure, steady], {"tail": 8}) == "2"


def test_best_of_n_ties_go_to_the_earliest_top_branch():
    # "5" reaches the top score only after "6" did: the earliest top-scored branch decides.
    assert rules.best_of_n([branch("5", score=0.5), branch("6", score=0.9), branch("5", score=0.9)]) == "6"
