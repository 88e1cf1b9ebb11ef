"""Replay landscapes and the search-efficiency benchmark on a study the controller measured with fake workers."""

from __future__ import annotations

import math

import pytest

from benchmarks.search_efficiency import best_configs, compare, missing_generations, quartiles, replay, trials_needed
from latts.core.records import TrialState
from latts.core.spec import parse_spec
from latts.optimizer.controller import Controller
from latts.optimizer.replay import LABEL, ReplayWorkers
from latts.storage import Repository
from tests.handmade import FakeWorkers

SPACE = {"branches": [1, 2, 4], "speculative": ["none", {"method": "ngram", "num_speculative_tokens": [2]}], "aggregator": ["majority"]}
SOURCE = {
    "study": "src",
    "hardware": "cpu-2core",
    "model": "demo:target",
    "benchmark": {"name": "arith", "n_problems": 6, "seed": 0},
    "search_space": SPACE,
    "budgets_s": [0.012, 0.025, 1.0],
    "sampler": "grid",
    "n_trials": 6,
    "latency_probes": 3,
    "race": {"finalists": 0},
}
ACCURACY = {1: 0.2, 2: 0.5, 4: 0.8}


def landscape(generation):
    speedup = 0.7 if generation.speculative_method else 1.0
    return ACCURACY[generation.branches], 0.01 * generation.branches * speedup


def measure_source(tmp_path, fail=None, landscape=landscape, **changes):
    url = f"sqlite:///{tmp_path / 'latts.db'}"
    repo = Repository(url)
    spec = parse_spec({**SOURCE, **changes})
    Controller(spec, repo, url, workers=lambda s, problems: FakeWorkers(problems, landscape=landscape, fail=fail)).run(None)
    return repo, url


def test_a_replayed_study_has_the_source_numbers(tmp_path):
    repo, url = measure_source(tmp_path)
    source = {t.config.key(): t for t in repo.trials("src")}
    grid = replay(repo, url, "src", "grid", seed=0)
    randomly = {t.config.key(): t for t in replay(repo, url, "src", "random", seed=3)}
    assert sorted(randomly) == sorted(source)  # the whole grid, each config once
    for t in grid:
        assert t.worker == LABEL and t.state == TrialState.COMPLETE and t.accuracy_source == "pool"
        assert t.latency_s == source[t.config.key()].latency_s
        # Accuracy is estimated again on the pool as the source left it: the same for every strategy.
        assert t.accuracy == randomly[t.config.key()].accuracy

def test_what_failed_in_the_source_fails_in_the_replay(tmp_path):
    fail = lambda g: "RuntimeError: engine out of memory" if g.branches == 4 and g.speculative_method else None  # noqa: E731
    repo, url = measure_source(tmp_path, fail=fail)
    assert missing_generations(repo, "src") == []  # failed counts as measured: there is nothing more to learn
    (failed,) = [t for t in replay(repo, url, "src", "random", seed=0) if t.state == TrialState.FAILED]
    assert failed.fail_reason == f"{LABEL}: RuntimeError: engine out of memory"


def test_what_the_source_never_measured_fails_in_the_replay(tmp_path):
    repo, url = measure_source(tmp_path, n_trials=5)
    (never,) = missing_generations(repo, "src")
    (failed,) = [t for t in replay(repo, url, "src", "random", seed=0) if t.state == TrialState.FAILED]
    assert failed.config.label() == never and "never measured" in failed.fail_reason


def test_replay_workers_refuse_an_unknown_study(tmp_path):
    repo, _ = measure_source(tmp_path)
    with pytest.raises(ValueError, match="does not exist"):
        ReplayWorkers(repo, "nope")


def test_trials_needed_counts_until_the_last_best():
    assert trials_needed(["a", "b", "c", "d"], [frozenset("b"), frozenset("c")]) == 3
    assert trials_needed(["a", "b"], [frozenset("b"), frozenset("z")]) is None
    # A budget answered by any of its keys (the best or a tied twin) is found at the first of them.
    assert trials_needed(["a", "b", "c", "d"], [frozenset("db"), frozenset("a")]) == 2
    assert quartiles([0.5, 0.25, 1.0, math.inf]) == (0.25, 0.5, 1.0)


def test_strategies_are_compared_on_the_replayed_study(tmp_path):
    repo, url = measure_source(tmp_path, sample_pool=False)  # accuracy as the landscape says, on every problem
    targets = best_configs(replay(repo, url, "src", "grid", seed=0), repo.study("src").budgets_s, "mean")
    assert len(set().union(*targets)) == 3  # each budget has its own best
    needed = compare(repo, url, "src", ["random", "greedy"], seeds=[0, 1])
    assert all(exact is not None and len(targets) <= exact <= 6 and tied <= exact for exact, tied in needed["random"])
    assert needed["greedy"][0] == needed["greedy"][1]  # deterministic


def test_a_replay_told_what_to_find_stops_once_it_is_measured(tmp_path):
    (tmp_path / "whole").mkdir(), (tmp_path / "cut").mkdir()
    whole = replay(*measure_source(tmp_path / "whole"), "src", "random", seed=5)
    target = whole[2].config.key()
    found = replay(*measure_source(tmp_path / "cut"), "src", "random", seed=5, until=[frozenset({target})])
    assert [t.config.key() for t in found] == [t.config.key() for t in whole[:3]]  # the same search, cut there


def test_a_best_is_tied_with_a_twin_whose_latency_it_cannot_tell_apart(tmp_path):
    (tmp_path / "even").mkdir(), (tmp_path / "faster").mkdir()
    budgets = [1.0]
    # Speculation that changes nothing: the twins' latency intervals overlap, either answers the budget.
    repo, url = measure_source(tmp_path / "even", landscape=lambda g: (ACCURACY[g.branches], 0.01 * g.branches))
    landscape = replay(repo, url, "src", "grid", seed=0)
    (exact,), (tied,) = best_configs(landscape, budgets, "mean"), best_configs(landscape, budgets, "mean", tied=True)
    assert len(exact) == 1 and exact < tied
    assert {t.config.label() for t in landscape if t.config.key() in tied} == {"B=4 no-spec majority", "B=4 ngram(k=2) majority"}
    # Speculation 30% faster at every probe: beyond noise, so the slower twin does not answer.
    repo, url = measure_source(tmp_path / "faster")
    landscape = replay(repo, url, "src", "grid", seed=0)
    assert best_configs(landscape, budgets, "mean", tied=True) == best_configs(landscape, budgets, "mean")
