"""`latts tune` end to end on the demo models: real vLLM engines, real Ray, real databases."""

from __future__ import annotations

import json
import sqlite3

import pytest

from latts.aggregation import aggregate
from latts.optimizer.evaluation import latencies
from latts.optimizer.frontier import best_within, pareto_front
from latts.storage import Repository
from tests.conftest import SMALL_STUDY, pg_schema_url, run_latts, tune

pytestmark = pytest.mark.engine
SMALL_STUDY_RACE_ROUNDS = 3  # the spec's default race

def check_study(url: str, n_trials: int, n_problems: int) -> list:
    repo = Repository(url)
    trials = repo.trials("e2e")
    assert [t.state for t in trials] == ["COMPLETE"] * n_trials, [t.fail_reason for t in trials]
    configs = {(t.config.branches, t.config.speculative_method) for t in trials}
    assert len(configs) == n_trials  # the grid, each config once
    generation_of = {t.number: t.generation_id for t in trials}
    raced = {generation_of[n] for answer in repo.budget_answers("e2e") for n in answer.finalists}
    assert raced, "the race at the end of tune timed no finalist"
    for t in trials:
        rows = repo.timed_problems(t.generation_id)
        first = [r for r in rows if r.round == 0]
        assert [r.index for r in first] == list(range(n_problems))  # fewer problems than latency probes: all timed
        # Each generation timed its problems latency_rounds times; a finalist as often again in each
        # round of the race, on the same problems.
        per_timing = SMALL_STUDY["latency_rounds"]
        rounds = per_timing * (1 + SMALL_STUDY_RACE_ROUNDS if t.generation_id in raced else 1)
        assert sorted({r.round for r in rows}) == list(range(rounds))
        assert len(rows) == n_problems * rounds
        assert all(len(r.branches) == t.config.branches for r in rows)
        # What the worker's rule answered in the loop is what latts' rule answers on the stored branches.
        assert [r.answers[t.config.aggregator] for r in rows] == [aggregate(t.config.aggregator, r.branches) for r in rows]
        assert (t.accuracy_source, t.n_problems, t.n_latency_problems) == ("pool", n_problems, n_problems)
        assert t.latency_s.mean == pytest.approx(sum(latencies(t.config, rows)) / len(rows))  # every timing counts
        assert t.latency_s.mean > 0 and t.accuracy_ci[0] <= t.accuracy <= t.accuracy_ci[1]
        if t.config.speculative_method == "ngram":
            assert t.drafted_tokens is not None and t.accepted_tokens is not None
        else:
            assert t.drafted_tokens is None
    return trials


def test_sqlite_study_completes_and_rows_are_stored(sqlite_study):
    url, proc = sqlite_study
    check_study(url, n_trials=4, n_problems=6)
    assert "Frontier of e2e" in proc.stdout and "Best config per budget" in proc.stdout


def test_frontier_and_best_agree_with_stored_rows(sqlite_study, tmp_path):
    url, _ = sqlite_study
    trials = Repository(url).trials("e2e")
    raced = {a.budget_s: a.trial for a in Repository(url).budget_answers("e2e")}  # the study's budgets 0.05, 0.5, 5
    front = json.loads(run_latts("frontier", "--study", "e2e", "--json", "--storage", url).stdout)
    assert [t["number"] for t in front["frontier"]] == [t.number for t in pareto_front(trials)]
    for t in front["frontier"]:
        assert set(t["config"]) >= {"branches", "speculative_method", "draft_model", "num_speculative_tokens", "aggregator"}
        assert set(t["latency_s"]) == {"mean", "p50", "p90", "p99"}
        assert {"accuracy", "accuracy_ci", "hardware", "state"} <= set(t)
    for budget in (0.5, 5.0, 1000.0):
        proc = run_latts("best", "--study", "e2e", "--budget", str(budget), "--json", "--storage", url)
        expected = best_within(trials, budget)
        if budget in raced:  # one of the study's budgets: its raced answer
            expected = next((t for t in trials if t.number == raced[budget]), None)
        if expected is None:
            assert proc.returncode == 3
            continue
        assert proc.returncode == 0, proc.stderr
        assert json.loads(proc.stdout)["best"]["number"] == expected.number
    fastest = min(t.latency_s.mean for t in trials)
    proc = run_latts("best", "--study", "e2e", "--budget", str(fastest / 2), "--json", "--storage", url)
    assert proc.returncode == 3 and json.loads(proc.stdout)["best"] is None


def test_status_counts(sqlite_study):
    url, _ = sqlite_study
    doc = json.loads(run_latts("status", "--json", "--storage", url).stdout)
    (study,) = doc["studies"]
    assert study["name"] == "e2e" and study["counts"]["COMPLETE"] == 4 and study["counts"]["RUNNING"] == 0


def pool_rows(url: str) -> int:
    with sqlite3.connect(url.removeprefix("sqlite:///")) as db:
        return db.execute("SELECT count(*) FROM latts_pool_samples").fetchone()[0]


def test_rerun_of_a_finished_study_measures_nothing_new(sqlite_study, tmp_path):
    url, _ = sqlite_study
    repo = Repository(url)
    before = ([(t.id, t.accuracy) for t in repo.trials("e2e")], len(repo.generations("e2e")), pool_rows(url))
    tune(tmp_path, url)
    assert ([(t.id, t.accuracy) for t in repo.trials("e2e")], len(repo.generations("e2e")), pool_rows(url)) == before


def test_a_second_study_on_the_same_problems_reuses_the_pool(sqlite_study, tmp_path):
    """Same model, sampling and problems: its accuracy comes from the pool the first study filled."""
    url, _ = sqlite_study
    before = pool_rows(url)
    space = {"branches": [1, 4], "speculative": ["none"], "aggregator": ["weighted_mean_logprob"]}
    tune(tmp_path, url, study="e2e-again", search_space=space, n_trials=2)
    trials = Repository(url).trials("e2e-again")
    assert [t.state for t in trials] == ["COMPLETE", "COMPLETE"] and {t.accuracy_source for t in trials} == {"pool"}
    # Latency is timed again, with the same seeds: the same draws, which the pool already holds.
    assert pool_rows(url) == before


@pytest.mark.postgres
def test_postgresql_study(pg_database, tmp_path, demo_model_paths):
    url = pg_schema_url(pg_database)
    tune(tmp_path, url, n_trials=2, search_space={**SMALL_STUDY["search_space"], "branches": [2]})
    check_study(url, n_trials=2, n_problems=6)
    # Optuna's tables live in the same database.
    import optuna

    assert len(optuna.load_study(study_name="e2e", storage=url).trials) == 2
