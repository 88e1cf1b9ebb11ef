"""The controller's ask/tell loop against fake workers that answer at once: no engine, no Ray.

latts' tables and Optuna's study live in one SQLite file per test, as `latts tune` keeps them.
"""

from __future__ import annotations

import math
import sqlite3
import threading

import optuna
import pytest

from latts.core.failures import OUT_OF_MEMORY
from latts.core.records import TrialState
from latts.core.spec import AGGREGATOR_VERIFIER, parse_spec
from latts.optimizer import controller as controller_module
from latts.optimizer import greedy, staged
from latts.optimizer.controller import INTERRUPTED, REPEAT_OF, Controller
from latts.storage import Repository
from tests.handmade import ControllerDied, FakeWorkers

BASE = {
    "study": "loop",
    "hardware": "cpu-2core",
    "model": "demo:target",
    "benchmark": {"name": "arith", "n_problems": 6, "seed": 0},
    "search_space": {"branches": [1, 2], "speculative": ["none"], "aggregator": ["majority"]},
    "budgets_s": [0.05, 1.0],
    "sampler": "grid",
    "n_trials": 2,
    "race": {"finalists": 0},
}


@pytest.fixture(autouse=True)
def no_ray(monkeypatch):
    def refuse(*_):
        raise AssertionError("init_ray was called although workers were given")

    monkeypatch.setattr(controller_module, "init_ray", refuse)


def tune(tmp_path, n_trials=None, options=None, **workers):
    """Run the controller (with `options`) on the fake workers; the controller, the workers and latts' repository."""
    spec = parse_spec({**BASE, **workers.pop("spec", {})})
    url = f"sqlite:///{tmp_path / 'latts.db'}"
    repo = Repository(url)
    made = []

    def start(spec_, problems):
        made.append(FakeWorkers(problems, **workers))
        return made[-1]

    controller = Controller(spec, repo, url, n_trials, workers=start, **(options or {}))
    controller.run(None)
    return controller, made[0], repo


def optuna_trials(tmp_path, name="loop"):
    return optuna.load_study(study_name=name, storage=f"sqlite:///{tmp_path / 'latts.db'}").trials


VERIFIED = {"branches": [4], "aggregator": ["majority", "best_of_n"], "verifier": ["none", "demo:verifier"]}


def test_only_valid_aggregator_verifier_pairs_are_offered():
    space = parse_spec({**BASE, "search_space": VERIFIED}).search_space
    assert space.choices()[AGGREGATOR_VERIFIER] == ["majority", "best_of_n+demo:verifier"]
    assert len(space.points()) == 2


def test_a_space_smaller_than_n_trials_is_measured_once_and_the_loop_ends(tmp_path):
    controller, workers, repo = tune(tmp_path, n_trials=7, spec={"search_space": VERIFIED, "race": {"finalists": 2}})
    assert controller.state.target == 2 and "n_trials 7 is more than the 2 distinct configs" in controller.state.capped
    assert len(workers.submitted) == 2 and len(workers.raced) == 2 * 3 and workers.shut
    trials = repo.trials("loop")
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 2
    assert {(t.config.aggregator, t.config.verifier) for t in trials} == {("majority", None), ("best_of_n", "demo:verifier")}
    study = optuna_trials(tmp_path)
    assert [t.state for t in study] == [optuna.trial.TrialState.COMPLETE] * 2
    assert {t.params[AGGREGATOR_VERIFIER] for t in study} == {"majority", "best_of_n+demo:verifier"}


def test_relative_budgets_are_settled_on_the_machine_the_finalists_race_on(tmp_path):
    # One branch is the reference (0.01 s in the search); two branches are more accurate (0.02 s).
    # The machine is twice as slow when the race comes: budgets from the search-time reference would
    # leave the raced two-branch config (0.035 s pooled) outside 2.5x = 0.025 s.
    landscape = lambda g: (0.4 if g.branches == 1 else 0.8, 0.01 * g.branches)  # noqa: E731
    spec = {"budgets_s": ["2.5x"], "race": {"finalists": 3, "rounds": 3}, "sample_pool": False}  # accuracy as landscaped
    controller, workers, repo = tune(tmp_path, landscape=landscape, slower_in_race=2.0, spec=spec)
    raced = [g.branches for g in workers.raced]
    assert raced[:3] == [1, 1, 1] and raced[3:].count(2) == 3  # the reference first, then the finalists
    trials = {t.config.branches: t for t in repo.trials("loop")}
    reference_s = (0.01 + 3 * 0.02) / 4  # its search timing and its three timings before the finalists
    study = repo.study("loop")
    assert study.reference_s == pytest.approx(reference_s) and study.budgets_s == [pytest.approx(2.5 * reference_s, rel=1e-3)]
    (answer,) = repo.budget_answers("loop")
    assert answer.trial == trials[2].number and trials[2].latency_s.mean == pytest.approx((0.02 + 3 * 0.04) / 4)
    # The reference's rounds spanned 0.01-0.02 s: the budget may lie at 0.025-0.05 s, and at the
    # bottom only one branch fits, so the answer is tied with it at the edge.
    assert answer.budget_range_s == (pytest.approx(0.025), pytest.approx(0.05))
    assert (answer.runner_up, answer.verdict, answer.fits_confidently) == (trials[1].number, "tied", False)


def test_latency_rounds_time_the_probes_again_and_pool_their_branches_once(tmp_path):
    spec = {"search_space": {"branches": [1, 2]}, "latency_rounds": 3, "latency_probes": 2, "race": {"finalists": 1, "rounds": 2}}
    controller, workers, repo = tune(tmp_path, spec=spec)
    (answer,) = [a for a in repo.budget_answers("loop") if a.trial is not None][:1]
    raced = next(t for t in repo.trials("loop") if t.number == answer.trial).generation_id
    for generation in repo.generations("loop"):
        rounds = sorted({p.round for p in repo.timed_problems(generation.id)})
        # Three rounds of its own, then three more per race round for a finalist, numbered on.
        assert rounds == list(range(3 + 3 * 2 if generation.id == raced else 3))
        assert len(repo.timed_problems(generation.id)) == 2 * len(rounds)
    # The pool holds each timed branch once (later rounds repeat the same seeds): two branches of
    # every problem from the two-branch baseline, and the one-branch config's on its two probes.
    with sqlite3.connect(tmp_path / "latts.db") as db:
        counts = db.execute("SELECT count(*) FROM latts_pool_samples GROUP BY prompt_sha").fetchall()
    assert sorted(c for (c,) in counts) == [2, 2, 2, 2, 3, 3]


def test_a_race_where_no_budget_has_a_fitting_config_answers_nothing_fits(tmp_path):
    controller, workers, repo = tune(tmp_path, spec={"budgets_s": [0.001], "race": {"finalists": 3}})
    assert workers.raced == [] and [a.verdict for a in repo.budget_answers("loop")] == ["nothing-fits"]


@pytest.mark.parametrize("sampler", ["random", "tpe", "nsga2", "gp", "greedy", "staged"])
def test_repeats_are_answered_from_storage_and_stay_few(tmp_path, sampler):
    space = {"branches": [1, 2, 4, 8], "speculative": ["none"], "aggregator": ["majority", "weighted_mean_logprob"]}
    # Accuracy grows with the branches (each config scored on its own samples): greedy's walks then cover the space.
    more_is_better = lambda g: (g.branches / 8, 0.01 * g.branches)  # noqa: E731
    spec = {"search_space": space, "sampler": sampler, "population_size": 2, "sample_pool": False}
    controller, workers, repo = tune(tmp_path, n_trials=100, landscape=more_is_better, spec=spec)
    configs = 8
    assert len(repo.trials("loop")) == configs and len(workers.submitted) == 4  # one generation per branch count
    study = optuna_trials(tmp_path)
    repeats = [t for t in study if REPEAT_OF in t.user_attrs]
    assert len(study) == configs + len(repeats) and len(repeats) <= math.log2(configs + 1) + 1
    numbers = {t.number: t for t in study}
    for t in repeats:  # the same answer as the trial that measured it
        assert numbers[t.user_attrs[REPEAT_OF]].params == t.params and numbers[t.user_attrs[REPEAT_OF]].values == t.values


def test_a_config_in_flight_asked_twice_generates_once(tmp_path):
    url = f"sqlite:///{tmp_path / 'latts.db'}"
    study = optuna.create_study(study_name="loop", storage=url, directions=["maximize", "minimize"])
    twice = {"branches": 1, "speculative": "none", AGGREGATOR_VERIFIER: "majority"}
    study.enqueue_trial(twice)
    study.enqueue_trial(twice)
    controller, workers, repo = tune(tmp_path, count=2, spec={"sampler": "random"})
    assert sorted(g.branches for g in workers.submitted) == [1, 2]  # both workers busy, each config once
    assert sorted(t.config.branches for t in repo.trials("loop")) == [1, 2]
    first, again = optuna_trials(tmp_path)[:2]
    assert again.user_attrs[REPEAT_OF] == first.number and again.values == first.values


def test_one_config_and_two_idle_workers_make_one_generation(tmp_path):
    controller, workers, repo = tune(tmp_path, n_trials=3, count=2, spec={"search_space": {"branches": [4]}})
    assert len(workers.submitted) == 1 and len(repo.trials("loop")) == 1 and len(optuna_trials(tmp_path)) == 1


def test_a_failed_generation_fails_its_trial_and_the_study_goes_on(tmp_path):
    fail = lambda g: "RuntimeError: engine out of memory" if g.branches == 2 else None  # noqa: E731
    controller, workers, repo = tune(tmp_path, n_trials=3, fail=fail, spec={"search_space": {"branches": [1, 2, 4]}})
    trials = {t.config.branches: t for t in repo.trials("loop")}
    assert trials[2].state == TrialState.FAILED and trials[2].fail_reason == "RuntimeError: engine out of memory"
    assert trials[2].accuracy is None and trials[2].latency_s is None
    assert trials[1].state == trials[4].state == TrialState.COMPLETE
    assert controller.state.failed == 1 and controller.state.done == 3
    states = {t.params["branches"]: t.state for t in optuna_trials(tmp_path)}
    assert states == {1: optuna.trial.TrialState.COMPLETE, 2: optuna.trial.TrialState.FAIL, 4: optuna.trial.TrialState.COMPLETE}


def test_a_dead_controller_resumes_without_loss_or_duplicates(tmp_path):
    with pytest.raises(ControllerDied):
        tune(tmp_path, die_at_wait=2)  # one config done, the other running when it dies
    repo = Repository(f"sqlite:///{tmp_path / 'latts.db'}")
    before = repo.trials("loop")
    assert sorted(t.state for t in before) == [TrialState.COMPLETE, TrialState.RUNNING]

    controller, workers, repo = tune(tmp_path)
    (running,) = [t for t in before if t.state == TrialState.RUNNING]
    assert [g.branches for g in workers.submitted] == [running.config.branches]  # re-run once, nothing else
    after = repo.trials("loop")
    assert [(t.id, t.fail_reason) for t in after if t.state == TrialState.FAILED] == [(running.id, INTERRUPTED)]
    assert sorted(t.config.branches for t in after if t.state == TrialState.COMPLETE) == [1, 2]
    states = [t.state for t in optuna_trials(tmp_path)]
    assert optuna.trial.TrialState.RUNNING not in states and states.count(optuna.trial.TrialState.COMPLETE) == 2
    assert controller.state.initial_done == 1 and controller.state.done == 2


def test_greedy_measures_what_its_walks_ask_for(tmp_path):
    """The controller's greedy measures the points the pure walk wants, on the same landscape, and stops."""
    space = {"branches": [1, 2, 4, 8], "speculative": ["none", {"method": "ngram", "num_speculative_tokens": [2, 4]}]}
    speedup = {None: 1.0, 2: 0.7, 4: 0.6}
    accuracy = {1: 0.2, 2: 0.5, 4: 0.7, 8: 0.8}

    def landscape(g):
        return accuracy[g.branches], 0.01 * g.branches * speedup[g.num_speculative_tokens]

    budgets = [0.015, 0.03]
    controller, workers, repo = tune(
        tmp_path, n_trials=100, landscape=landscape,
        spec={"search_space": space, "sampler": "greedy", "sample_pool": False, "budgets_s": budgets},
    )
    label = {None: "none", 2: "ngram:k=2", 4: "ngram:k=4"}
    measured = {(g.branches, label[g.num_speculative_tokens]) for g in workers.submitted}
    lattice = greedy.Lattice((1, 2, 4, 8), (("ngram:k=2", "ngram:k=4"),))

    def measure(point):
        b, s = point
        k = {"none": None, "ngram:k=2": 2, "ngram:k=4": 4}[s]
        return [(accuracy[b], 0.01 * b * speedup[k])]

    walks, order = greedy.search(lattice, budgets, measure)
    assert measured - set(order) == {(8, "none")}  # the baseline that fills the pool speculation is tested against
    assert set(order) <= measured
    assert controller.state.greedy_stopped and controller.state.done == len(measured) < controller.state.target
    assert len(optuna_trials(tmp_path)) == len(measured)


def test_staged_measures_what_its_plan_asks_for_in_its_order(tmp_path):
    """The controller's staged search measures the points the pure plan wants, in its order, after the
    baseline it queues first; with n_trials short of the grid it stops there."""
    space = {"branches": [1, 2, 4, 8], "speculative": ["none", {"method": "ngram", "num_speculative_tokens": [1, 2, 3, 4]}]}
    speedup = {None: 1.0, 1: 0.9, 2: 0.7, 3: 0.6, 4: 0.65}
    accuracy = {1: 0.2, 2: 0.5, 4: 0.7, 8: 0.8}
    budgets = [0.015, 0.03]
    label = {None: "none", **{k: f"ngram:k={k}" for k in range(1, 5)}}

    def outcome(branches, k):
        return accuracy[branches], 0.01 * branches * speedup[k] * (1.2 if branches == 8 and k else 1.0)

    n_trials = 14
    controller, workers, repo = tune(
        tmp_path, n_trials=n_trials, landscape=lambda g: outcome(g.branches, g.num_speculative_tokens),
        spec={"search_space": space, "sampler": "staged", "sample_pool": False, "budgets_s": budgets},
    )
    lattice = greedy.Lattice((1, 2, 4, 8), (tuple(label[k] for k in range(1, 5)),))
    order, measured = [], {}
    while wanted := staged.plan(lattice, budgets, measured):
        b, s = wanted[0]
        measured[wanted[0]] = [outcome(b, {v: k for k, v in label.items()}[s])]
        order.append(wanted[0])
    submitted = [(g.branches, label[g.num_speculative_tokens]) for g in workers.submitted]
    assert submitted == [(8, "none"), *[p for p in order if p != (8, "none")]][:n_trials]
    assert len(repo.trials("loop")) == n_trials == len(optuna_trials(tmp_path)) and not controller.state.greedy_stopped


@pytest.mark.parametrize("sampler", ["tpe", "nsga2"])
def test_an_optuna_study_with_the_old_parameters_resumes(tmp_path, sampler):
    """Releases before the aggregator_verifier dimension asked for aggregator and verifier apart."""
    url = f"sqlite:///{tmp_path / 'latts.db'}"
    study = optuna.create_study(study_name="loop", storage=url, directions=["maximize", "minimize"])
    old = {
        "branches": optuna.distributions.CategoricalDistribution([1, 2]),
        "speculative": optuna.distributions.CategoricalDistribution(["none"]),
        "aggregator": optuna.distributions.CategoricalDistribution(["majority"]),
        "verifier": optuna.distributions.CategoricalDistribution(["none"]),
    }
    params = {"branches": 1, "speculative": "none", "aggregator": "majority", "verifier": "none"}
    study.add_trial(optuna.trial.create_trial(params=params, distributions=old, values=[0.5, 0.01]))
    study.enqueue_trial(params)  # queued by the old release, never asked
    controller, workers, repo = tune(tmp_path, spec={"sampler": sampler})
    assert sorted(t.config.branches for t in repo.trials("loop")) == [1, 2] and len(workers.submitted) == 2


def test_two_controllers_share_a_study_and_measure_each_config_once(tmp_path):
    """Two controllers on one study and database (as two `latts tune` processes): the n_trials they
    share are measured, no config twice, and both did some of the work."""
    spec = parse_spec({**BASE, "search_space": {"branches": [1, 2, 4, 8, 16, 32]}, "sampler": "random", "n_trials": 4})
    url = f"sqlite:///{tmp_path / 'latts.db'}"
    made, errors = [], []

    def run():
        try:
            Controller(spec, Repository(url), url, workers=lambda s, p: made.append(FakeWorkers(p, takes_s=0.3)) or made[-1]).run(None)
        except Exception as exc:  # noqa: BLE001 - surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    trials = Repository(url).trials("loop")
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 4
    assert len({t.config.key() for t in trials}) == 4
    submitted = [g.key() for w in made for g in w.submitted]
    assert len(submitted) == len(set(submitted)) == 4 and all(w.submitted for w in made)
    asked = optuna_trials(tmp_path)
    assert optuna.trial.TrialState.RUNNING not in [t.state for t in asked]
    assert sum(t.state == optuna.trial.TrialState.COMPLETE and REPEAT_OF not in t.user_attrs for t in asked) == 4
    assert Repository(url).active_controllers("loop") == []


def test_a_failed_generation_keeps_its_full_reason_in_a_file_its_trials_name(tmp_path):
    detail = "Traceback (most recent call last):\n  ...\nRuntimeError: boom\n\n--- last lines of engine demo:target ---\nvLLM's own words"
    fail = lambda g: ("RuntimeError: boom", detail) if g.branches == 2 else None  # noqa: E731
    controller, workers, repo = tune(tmp_path, fail=fail, options={"failure_logs": tmp_path / "logs" / "loop"})
    (failed,) = [t for t in repo.trials("loop") if t.state == TrialState.FAILED]
    path = tmp_path / "logs" / "loop" / f"generation-{failed.generation_id}.log"
    assert failed.fail_reason == f"RuntimeError: boom (full log: {path})"
    assert repo.generation(failed.generation_id).fail_reason == failed.fail_reason
    text = path.read_text()
    assert text.startswith(f"study loop, generation {failed.generation_id} (trials #{failed.number} B=2 ")
    assert "reason: RuntimeError: boom\n" in text and text.endswith(detail + "\n")


def test_max_failures_stops_the_search_keeps_what_was_measured_and_queues_what_ran_again(tmp_path):
    # Two workers, the grid in branch order: two branches still run when one branch fails at once.
    spec = {"search_space": {"branches": [1, 2, 4]}, "n_trials": 3, "race": {"finalists": 2}}
    fail = lambda g: "RuntimeError: boom" if g.branches == 1 else None  # noqa: E731
    slow = lambda g: g.branches == 2  # noqa: E731
    controller, workers, repo = tune(tmp_path, count=2, fail=fail, slow=slow, spec=spec, options={"max_failures": 1})
    assert controller.state.stopped and controller.state.failed_now == 1 and workers.raced == [] and workers.shut
    trials = {t.config.branches: t for t in repo.trials("loop")}
    assert set(trials) == {1, 2}  # nothing new was asked once the failure came
    assert trials[1].state == TrialState.FAILED and trials[1].fail_reason == "RuntimeError: boom"
    assert trials[2].state == TrialState.FAILED and trials[2].fail_reason == INTERRUPTED
    assert not repo.running_trials("loop") and not repo.generations("loop", states=[TrialState.RUNNING])
    assert optuna.trial.TrialState.RUNNING not in [t.state for t in optuna_trials(tmp_path)]

    # The next run (no limit) measures what was abandoned and the rest; the failed config is not run again.
    controller, workers, repo = tune(tmp_path, fail=fail, slow=slow, spec=spec)
    assert sorted(g.branches for g in workers.submitted) == [2, 4] and not controller.state.stopped
    assert sorted((t.config.branches, t.state) for t in repo.trials("loop") if t.fail_reason != INTERRUPTED) == [
        (1, TrialState.FAILED), (2, TrialState.COMPLETE), (4, TrialState.COMPLETE)
    ]


def test_max_failures_counts_this_runs_failures_only(tmp_path):
    # A resumed study's earlier failures do not stop it again.
    fail = lambda g: "RuntimeError: boom" if g.branches == 1 else None  # noqa: E731
    tune(tmp_path, n_trials=1, fail=fail, spec={"search_space": {"branches": [1, 2]}, "sampler": "grid"})
    controller, workers, repo = tune(tmp_path, fail=fail, options={"max_failures": 1})
    assert not controller.state.stopped and controller.state.failed_now == 0
    assert {t.config.branches: t.state for t in repo.trials("loop")} == {1: TrialState.FAILED, 2: TrialState.COMPLETE}


KV_REFUSAL = (
    "EngineStartError: vLLM server exited with 1: ValueError: Available memory on node 0 (17.1/23.4 GiB) on kv "
    "cache allocation is less than requested memory for kv (4096.0 GiB)."
)
TWO_AGGREGATORS = {"branches": [1, 2], "aggregator": ["majority", "weighted_mean_logprob"]}


def test_a_generation_that_ran_out_of_memory_is_not_run_again_on_that_hardware(tmp_path):
    fail = lambda g: KV_REFUSAL if g.branches == 2 else None  # noqa: E731
    spec = {"search_space": TWO_AGGREGATORS, "n_trials": 4}
    controller, workers, repo = tune(tmp_path, fail=fail, spec=spec)
    assert sorted(g.branches for g in workers.submitted) == [1, 2]  # the other aggregator of 2 branches ran nothing
    failed = [t for t in repo.trials("loop") if t.state == TrialState.FAILED]
    assert [t.config.branches for t in failed] == [2, 2] and all(t.fail_reason.startswith(f"{OUT_OF_MEMORY}: ") for t in failed)
    first, sibling = sorted(failed, key=lambda t: t.generation_id is None)
    assert first.fail_reason == f"{OUT_OF_MEMORY}: {KV_REFUSAL}" and sibling.generation_id is None
    assert sibling.fail_reason == f"{OUT_OF_MEMORY}: not run again, as loop#{first.number} on cpu-2core: {KV_REFUSAL}"
    assert controller.state.failed == 2 and controller.state.failed_now == 1

    # Resumed, the study runs nothing; a new study on the same hardware, model and engine settings runs
    # only what fits, and says why the rest failed.
    controller, workers, repo = tune(tmp_path, fail=fail, spec=spec)
    assert workers.submitted == [] and len(repo.trials("loop")) == 4
    controller, workers, repo = tune(tmp_path, fail=fail, spec={**spec, "study": "again"})
    assert [g.branches for g in workers.submitted] == [1]
    reasons = {t.config.aggregator: t.fail_reason for t in repo.trials("again") if t.state == TrialState.FAILED}
    assert set(reasons) == {"majority", "weighted_mean_logprob"}
    assert all(r == f"{OUT_OF_MEMORY}: not run again, as loop#{first.number} on cpu-2core: {KV_REFUSAL}" for r in reasons.values())
    study = optuna.load_study(study_name="again", storage=f"sqlite:///{tmp_path / 'latts.db'}")
    assert [t.state for t in study.trials].count(optuna.trial.TrialState.FAIL) == 2  # Optuna learns they fail

    # More KV cache, another hardware target or a failure that was not memory: run again.
    for changes in ({"engine": {"kv_cache_gib": 2}}, {"hardware": "cpu-bigger"}):
        controller, workers, repo = tune(tmp_path, spec={**spec, "study": f"other-{len(changes)}-{list(changes)[0]}", **changes})
        assert sorted(g.branches for g in workers.submitted) == [1, 2]


def test_a_failure_that_was_not_memory_is_run_again_by_another_study(tmp_path):
    fail = lambda g: "worker died: ActorDiedError: The actor died unexpectedly" if g.branches == 2 else None  # noqa: E731
    tune(tmp_path, fail=fail)
    controller, workers, repo = tune(tmp_path, spec={"study": "again"})
    assert sorted(g.branches for g in workers.submitted) == [1, 2]


def test_every_trial_is_scored_on_the_pool_as_the_search_left_it(tmp_path):
    """Without a race too: a config scored early saw fewer pooled samples than its lossless twin
    scored later, and the two must compare equal on accuracy (the faster one is the answer)."""
    space = {"branches": [1, 2], "speculative": ["none", {"method": "ngram", "num_speculative_tokens": [2]}], "aggregator": ["majority"]}
    _, _, repo = tune(
        tmp_path, spec={"search_space": space, "n_trials": 4}, landscape=lambda g: (1.0 if g.branches == 2 else 0.0, 0.01 * g.branches)
    )
    trials = {(t.config.branches, t.config.speculative_method): t for t in repo.trials("loop")}
    assert trials[(1, "ngram")].lossless.verdict == "lossless"
    assert 0 < trials[(1, None)].accuracy == trials[(1, "ngram")].accuracy < 1, {k: t.accuracy for k, t in trials.items()}
    # The baseline was scored first, on its own right answers only: scored again on the pool as it
    # ended, with the one-branch configs' wrong answers in it (an estimate kept from the pool as it
    # was would say 1.0 here).
    assert trials[(2, None)].accuracy == trials[(2, "ngram")].accuracy == pytest.approx(2 / 3)
