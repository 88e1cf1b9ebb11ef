"""Aggregation rules on hand-built records with known answers, ties included."""

from __future__ import annotations

import math

import pytest

from latts import tts
from latts.records import Branch


def branch(answer, logprobs=(-0.1,), score=None):
    return Branch(text=f"\\boxed{{{answer}}}", answer=answer, n_tokens=len(logprobs), token_logprobs=tuple(logprobs), verifier_score=score)


def test_majority_picks_most_common_answer():
    assert tts.majority([branch("3"), branch("5"), branch("5")]) == "5"


def test_majority_tie_goes_to_the_answer_seen_first():
    assert tts.majority([branch("7"), branch("3"), branch("3"), branch("7")]) == "7"
    assert tts.majority([branch("3"), branch("7"), branch("7"), branch("3")]) == "3"


def test_branches_without_answer_do_not_vote():
    assert tts.majority([branch(None), branch(None), branch("4")]) == "4"
    assert tts.majority([branch(None)]) is None
    assert tts.majority([]) is None


def test_weighted_mean_logprob_lets_confident_minority_win():
    confident = branch("9", [-0.01] * 10)
    unsure = [branch("2", [-3.0] * 10), branch("2", [-3.0] * 10)]
    assert tts.majority([confident, *unsure]) == "2"
    assert tts.aggregator("weighted_mean_logprob")([confident, *unsure]) == "9"


def test_confidence_measures_on_known_sequences():
    lp = [-1.0, -1.0, -4.0, -4.0, -1.0, -1.0]
    assert tts.mean_logprob(lp) == pytest.approx(-2.0)
    assert tts.min_window_logprob(lp, window=2) == pytest.approx(-4.0)
    assert tts.min_window_logprob(lp, window=3) == pytest.approx(-3.0)
    assert tts.min_window_logprob(lp, window=16) == pytest.approx(-2.0)  # shorter than the window
    assert tts.tail_logprob(lp, tail=2) == pytest.approx(-1.0)
    assert tts.bottom10_logprob(lp) == pytest.approx(-4.0)  # ceil(0.6) = 1 token
    assert tts.bottom10_logprob([-float(i) for i in range(20)]) == pytest.approx(-18.5)  # 2 lowest
    assert tts.mean_logprob([]) == -math.inf


def test_window_and_tail_rules_see_different_parts_of_the_text():
    # A branch that wobbles in the middle but ends sure, against one that is mildly unsure throughout.
    wobbly = branch("1", [-0.01] * 20 + [-6.0] * 4 + [-0.01] * 40)
    steady = branch("2", [-0.5] * 64)
    assert tts.aggregator("weighted_tail", tail=32)([wobbly, steady]) == "1"
    assert tts.aggregator("weighted_min_window", window=4)([wobbly, steady]) == "2"
    assert tts.aggregator("weighted_bottom10")([wobbly, steady]) == "2"


def test_best_of_n_and_weighted_best_of_n():
    branches = [branch("5", score=0.9), branch("6", score=0.6), branch("6", score=0.5)]
    assert tts.best_of_n(branches) == "5"
    assert tts.weighted_best_of_n(branches) == "6"  # 1.1 beats 0.9
    tie = [branch("1", score=0.5), branch("2", score=0.5)]
    assert tts.best_of_n(tie) == "1"
    assert tts.weighted_best_of_n(tie) == "1"


def test_verifier_rules_refuse_records_without_scores():
    with pytest.raises(ValueError, match="verifier"):
        tts.best_of_n([branch("1")])
