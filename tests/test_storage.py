"""Repository against real databases: SQLite files and, when reachable, PostgreSQL.

PostgreSQL tests run in a fresh database per test session (dropped at the end)
and a fresh schema per test, so reruns and parallel CI jobs never collide.
"""

import multiprocessing
import os
import sqlite3
import threading

import numpy as np
import psycopg
import pytest

from latts.core.records import Branch, GenerationResult, PoolDraw, TimedProblem, TrialState, TrialSummary
from latts.core.statistics import wilson_interval
from latts.optimizer.evaluation import evaluate, problem_accuracies
from latts.problems import Problem
from latts.storage import Repository, StorageError, Taken
from tests.conftest import PG_SERVER, pg_schema_url
from tests.handmade import config

CONFIG = config(4, speculative_method="ngram", num_speculative_tokens=4)
SPEC = {"study": "s1", "budgets_s": [0.5, 1.0], "search_space": {"branches": [1, 2, 4]}}


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def url(request, tmp_path):
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'latts.db'}"
    return pg_schema_url(request.getfixturevalue("pg_database"))


@pytest.fixture
def repo(url):
    repository = Repository(url)
    yield repository
    repository.close()


def make_result(latencies, correct, worker="w0", **counters) -> GenerationResult:
    timed = [
        TimedProblem(
            index=i,
            branches=(
                Branch(f"so the answer is {i}", str(i) if ok else "x", 3, (-0.1, -2.5, -1e-9), 0.75),
                Branch("no idea", None, 2, (-1 / 3, float("-inf"))),  # JSON has no -inf; storage keeps it anyway
            ),
            latency_s=latency,
            aggregation_s={"majority": 0.001},
        )
        for i, (latency, ok) in enumerate(zip(latencies, correct))
    ]
    return GenerationResult(timed=timed, worker=worker, engine_start_s=15.5, warmup_s=1.25, generated_tokens=99, **counters)


PROBLEMS = [Problem(f"arith-{i}", f"Q: {i}", str(i)) for i in range(10)]


def store(repo, number, config_, result, study="s1") -> TrialSummary:
    """A generation and its config stored as the controller stores them (accuracy measured on the timed problems)."""
    generation_id, trial_id = repo.claim(study, number, config_, None)
    repo.finish_generation(generation_id, result)
    return repo.complete_trial(trial_id, evaluate(config_, result.timed, problem_accuracies(config_, result.timed, PROBLEMS, {}), from_pool=False))


def setup_study(repo, study="s1", hardware="cpu-2core", model="demo:target", benchmark="arith"):
    repo.ensure_hardware(hardware, {"cpu_count": 2, "memory_gb": 8.0, "gpus": [], "vllm": "0.32.0"})
    repo.ensure_study(study, hardware, model, benchmark, SPEC)


def test_round_trip(repo):
    setup_study(repo)
    setup_study(repo)  # resuming: both calls are no-ops the second time
    assert repo.study_spec("s1") == SPEC
    assert repo.study_spec("nope") is None

    generation_id, trial_id = repo.claim("s1", 0, CONFIG, None)
    [running] = repo.running_trials("s1")
    assert (running.id, running.state, running.config, running.accuracy) == (trial_id, "RUNNING", CONFIG, None)

    latencies = [0.5, 0.1, 0.3, 0.9, 0.2]
    result = make_result(latencies, [True, True, False, True, False], drafted_tokens=100, accepted_tokens=60, num_drafts=25)
    repo.finish_generation(generation_id, result)
    summary = repo.complete_trial(trial_id, evaluate(CONFIG, result.timed, problem_accuracies(CONFIG, result.timed, PROBLEMS, {}), from_pool=False))

    assert summary.state == "COMPLETE" and summary.hardware == "cpu-2core" and summary.study == "s1"
    assert summary.accuracy == 0.6 and summary.n_problems == 5 and summary.accuracy_source == "measured"
    assert summary.accuracy_ci == pytest.approx(wilson_interval(3, 5))
    assert summary.accuracy_ci == pytest.approx((0.2307, 0.8824), abs=5e-5)  # Wilson 3/5, textbook value
    with_aggregation = [x + 0.001 for x in latencies]  # a config's latency adds its aggregator's own time
    assert summary.latency_s.mean == pytest.approx(np.mean(with_aggregation)) and summary.n_latency_problems == 5
    percentiles = np.percentile(with_aggregation, [50, 90, 99])
    assert (summary.latency_s.p50, summary.latency_s.p90, summary.latency_s.p99) == pytest.approx(tuple(percentiles))
    assert (summary.engine_start_s, summary.warmup_s, summary.worker, summary.generated_tokens) == (15.5, 1.25, "w0", 99)
    assert (summary.drafted_tokens, summary.accepted_tokens, summary.extra["num_drafts"]) == (100, 60, 25)
    assert summary.mean_acceptance_length == pytest.approx(3.4)
    assert summary.extra["finished_at"] >= summary.extra["started_at"]

    assert repo.trials("s1") == [summary]
    assert repo.running_trials("s1") == []
    assert repo.timed_problems(generation_id) == result.timed  # branches, logprobs and floats bit-exact


def test_fail_trial_records_reason_and_no_numbers(repo):
    setup_study(repo)
    generation_id, trial_id = repo.claim("s1", 3, CONFIG, None)
    repo.fail_generation(generation_id, "engine out of memory")
    repo.fail_trial(trial_id, "engine out of memory")
    [failed] = repo.trials("s1")
    assert (failed.state, failed.fail_reason) == ("FAILED", "engine out of memory")
    assert failed.accuracy is None and failed.accuracy_ci is None and failed.latency_s is None
    assert failed.extra["finished_at"] is not None
    with pytest.raises(StorageError, match="already FAILED"):
        repo.finish_generation(generation_id, make_result([0.1], [True]))
    with pytest.raises(StorageError, match="already FAILED"):
        repo.fail_trial(trial_id, "again")
    with pytest.raises(StorageError, match="does not exist"):
        repo.fail_trial(trial_id + 1000, "no such trial")
    with pytest.raises(StorageError, match="does not exist"):
        repo.trial(trial_id + 1000)
    # A failed generation may run again; a running or measured one may not start twice.
    again, _ = repo.claim("s1", 4, CONFIG, None)
    with pytest.raises(StorageError, match="already running or measured"):
        repo.claim("s1", 5, CONFIG, None)
    repo.finish_generation(again, make_result([0.1], [True]))
    with pytest.raises(StorageError, match="already running or measured"):
        repo.claim("s1", 5, CONFIG, None)


def test_finish_generation_is_all_or_nothing(repo):
    setup_study(repo)
    generation_id, _ = repo.claim("s1", 0, CONFIG, None)
    result = make_result([0.1, 0.2, 0.3], [True, False, True])
    result.timed[2] = result.timed[0]  # duplicate problem index: the third row insert fails
    with pytest.raises(StorageError, match="each problem index must appear once"):
        repo.finish_generation(generation_id, result)
    assert repo.timed_problems(generation_id) == []
    assert [g.state for g in repo.generations("s1")] == ["RUNNING"]
    with pytest.raises(StorageError, match="fail_generation"):
        repo.finish_generation(generation_id, make_result([], []))


def test_start_trial_errors(repo):
    setup_study(repo)
    repo.start_trial("s1", 0, CONFIG)
    with pytest.raises(StorageError, match="already stored"):
        repo.start_trial("s1", 0, CONFIG)
    with pytest.raises(StorageError, match="call ensure_study first"):
        repo.start_trial("nope", 0, CONFIG)


def test_a_config_runs_once_per_study_whoever_starts_it(repo):
    """The database, not only the controller, refuses a second measurement of a config (two controllers
    sharing a study); a failed one may run again."""
    setup_study(repo)
    first = repo.start_trial("s1", 0, CONFIG)
    with pytest.raises(Taken, match="already running or measured"):
        repo.start_trial("s1", 1, CONFIG)
    repo.fail_trial(first, "engine out of memory")
    again = repo.start_trial("s1", 1, CONFIG)
    assert [(t.number, t.state) for t in repo.trials("s1")] == [(0, TrialState.FAILED), (1, TrialState.RUNNING)]
    assert repo.trial(again).config == CONFIG


def test_interrupt_running_spares_live_controllers_and_claims_each_row_once(repo):
    setup_study(repo)
    live, dead = (repo.register_controller("s1", name, "host", 1) for name in ("live", "dead"))
    _, kept = repo.claim("s1", 0, config(1), live)
    _, lost = repo.claim("s1", 1, config(2), dead)
    _, old = repo.claim("s1", 2, config(4), None)  # before leases
    # Killed between storing its generation and its trial: the trial is still the dead one's to give back.
    stored, half = repo.claim("s1", 3, config(8), dead)
    repo.finish_generation(stored, make_result([0.1], [True]))
    assert {t.id for t in repo.interrupt_running("s1", "interrupted", keep={live})} == {lost, old, half}
    assert repo.interrupt_running("s1", "interrupted", keep={live}) == []  # claimed already: queued once
    assert [t.id for t in repo.running_trials("s1")] == [kept]
    assert repo.stop_controllers([dead, live]) == [dead, live] and repo.stop_controllers([dead]) == []
    assert repo.active_controllers("s1") == []


def test_filters_and_order(repo):
    setup_study(repo, "b-study", "cpu-2core", "demo:target", "arith")
    setup_study(repo, "a-study", "h100x1", "Qwen/Qwen2.5-3B", "math500")
    for number in (2, 0, 1):
        repo.start_trial("b-study", number, config(8 + number))
    a0 = store(repo, 0, CONFIG, make_result([0.2], [True]), study="a-study").id
    a1 = repo.start_trial("a-study", 1, config(2))
    repo.fail_trial(a1, "timeout")

    assert [(t.study, t.number) for t in repo.trials()] == [("a-study", 0), ("a-study", 1), ("b-study", 0), ("b-study", 1), ("b-study", 2)]
    assert [t.number for t in repo.trials("b-study")] == [0, 1, 2]
    assert [t.id for t in repo.trials(states=["COMPLETE"])] == [a0]
    assert [t.id for t in repo.trials(states=["COMPLETE", "FAILED"], hardware="h100x1")] == [a0, a1]
    assert [t.id for t in repo.trials(hardware="h100x1", model="Qwen/Qwen2.5-3B", benchmark="math500", states=["FAILED"])] == [a1]
    assert repo.trials(hardware="cpu-2core", model="Qwen/Qwen2.5-3B") == []
    assert {t.hardware for t in repo.trials("b-study", benchmark="arith")} == {"cpu-2core"}
    assert len(repo.running_trials("b-study")) == 3


def test_studies_counts_by_state(repo):
    assert repo.studies() == []
    setup_study(repo, "b-study")
    setup_study(repo, "a-study", "h100x1")
    store(repo, 0, CONFIG, make_result([0.1, 0.2], [True, True]), study="a-study")
    repo.fail_trial(repo.start_trial("a-study", 1, config(1)), "crash")
    repo.fail_trial(repo.start_trial("a-study", 2, config(1)), "crash")
    repo.start_trial("a-study", 3, config(1))

    a, b = repo.studies()
    assert (a.name, a.hardware, a.model, a.benchmark) == ("a-study", "h100x1", "demo:target", "arith")
    assert a.counts == {"RUNNING": 1, "COMPLETE": 1, "FAILED": 2}
    assert (b.name, b.counts) == ("b-study", {"RUNNING": 0, "COMPLETE": 0, "FAILED": 0})
    assert a.created_at.tzinfo is not None
    assert repo.study("a-study") == a
    assert repo.study("nope") is None


def test_ensure_study_conflicts(repo):
    setup_study(repo)
    with pytest.raises(StorageError, match="pick another `study:` name") as err:
        repo.ensure_study("s1", "cpu-2core", "other-model", "arith", SPEC)
    assert "\n" not in str(err.value)
    with pytest.raises(StorageError, match="pick another `study:` name"):
        setup_study(repo, hardware="h100x1")
    with pytest.raises(StorageError, match="ensure_hardware"):
        repo.ensure_study("s2", "unregistered", "demo:target", "arith", SPEC)


def test_losslessness_verdicts(repo):
    from latts.core.records import Losslessness

    setup_study(repo)
    baseline = store(repo, 0, config(4), make_result([0.1], [True]))
    generation_id, speculative = repo.claim("s1", 1, CONFIG, None)
    assert repo.trial(speculative).lossless == Losslessness("untested")  # speculative, running
    repo.finish_generation(generation_id, make_result([0.1], [True], vllm_cpu_fix="applied"))
    assert baseline.lossless is None  # nothing to check without speculation
    repo.record_losslessness(generation_id, Losslessness("lossy", 0.0002, 0))
    summary = repo.trial(speculative)
    assert summary.lossless == Losslessness("lossy", 0.0002, 0) and summary.lossy
    assert summary.vllm_cpu_fix == "applied"
    with pytest.raises(StorageError, match="completed speculative"):
        repo.record_losslessness(baseline.generation_id, Losslessness("lossless", 0.5, 0))


def test_the_pool_keeps_each_draw_once_with_its_scores(repo):
    a = Branch("\\boxed{1}", "1", 2, (-0.5, float("-inf")), 0.9)
    b = Branch("\\boxed{2}", "2", 1, (-0.1,))
    repo.add_pool_samples("pool-x", [PoolDraw("sha1", 7, 0, a), PoolDraw("sha1", 7, 1, b)], verifier="v")
    versions = [repo.pool_version("pool-x", "v")]
    repo.add_pool_samples("pool-x", [PoolDraw("sha1", 7, 0, a)], verifier="v")  # a again: nothing new
    versions.append(repo.pool_version("pool-x", "v"))
    repo.add_pool_samples("pool-x", [PoolDraw("sha1", 7, 0, a), PoolDraw("sha2", 8, 0, b)], verifier="v")
    versions.append(repo.pool_version("pool-x", "v"))
    repo.add_pool_samples("pool-y", [PoolDraw("sha1", 7, 0, b)])  # another model or sampling: another pool
    versions.append(repo.pool_version("pool-x", "v"))
    assert versions[0] == versions[1] != versions[2] == versions[3]  # a reader may keep what it read until it changes
    found = repo.pool_samples("pool-x", ["sha1", "sha2", "sha3"], verifier="v")
    assert [s.branch for s in found["sha1"]] == [a, b] and found["sha3"] == []
    assert [s.branch.answer for s in found["sha2"]] == ["2"] and found["sha2"][0].branch.verifier_score is None
    repo.add_pool_scores("v", {found["sha2"][0].id: 0.25})
    assert repo.pool_version("pool-x", "v") != versions[3] and repo.pool_version("pool-x") == versions[3][:2]
    assert repo.pool_samples("pool-x", ["sha2"], verifier="v")["sha2"][0].branch.verifier_score == 0.25
    assert repo.pool_samples("pool-x", ["sha1"])["sha1"][0].branch.verifier_score is None  # no verifier asked for
    assert [s.branch for s in repo.pool_samples("pool-y", ["sha1"])["sha1"]] == [Branch(b.text, b.answer, b.n_tokens, b.token_logprobs)]


def test_a_resumed_study_keeps_its_newest_spec(repo):
    """plot and export read the stored spec: a resume with new budgets must not leave the old ones there."""
    setup_study(repo)
    resumed = {**SPEC, "budgets_s": [0.25, 3.0], "latency_statistic": "p90"}
    repo.ensure_study("s1", "cpu-2core", "demo:target", "arith", resumed)
    assert repo.study_spec("s1") == resumed


def _write_trials(url: str, first_number: int, count: int, barrier) -> None:
    """One writer process: registers the same hardware and study as its peer, then writes trials."""
    barrier.wait()  # open the storage together: both race to create the tables and rows
    repo = Repository(url)
    setup_study(repo, "shared")
    for number in range(first_number, first_number + count):
        worker = f"pid-{os.getpid()}"
        result = make_result([0.01 * (i + 1) for i in range(8)], [i % 2 == 0 for i in range(8)], worker=worker)
        store(repo, number, config(number + 1), result, study="shared")
    repo.close()


def test_opens_a_fresh_sqlite_file_another_writer_holds(tmp_path):
    """A second process opening the database while the first creates it waits instead of failing."""
    path = tmp_path / "latts.db"
    holder = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    holder.execute("BEGIN IMMEDIATE")  # the write lock, as another Repository creating its tables holds it
    holder.execute("CREATE TABLE other_writer (x INTEGER)")
    release = threading.Timer(0.5, holder.execute, ["COMMIT"])
    release.start()
    repo = Repository(f"sqlite:///{path}")
    release.join()
    assert repo.studies() == []
    repo.close()
    holder.close()
    with sqlite3.connect(path) as check:
        assert check.execute("PRAGMA journal_mode").fetchone() == ("wal",)


def test_concurrent_writers(url):
    context = multiprocessing.get_context("spawn")
    barrier = context.Barrier(2)
    writers = [context.Process(target=_write_trials, args=(url, first, 30, barrier)) for first in (0, 30)]
    for writer in writers:
        writer.start()
    for writer in writers:
        writer.join(timeout=120)
    assert [w.exitcode for w in writers] == [0, 0], "a writer failed; its traceback is in the captured stderr"

    repo = Repository(url)
    trials = repo.trials("shared")
    assert [t.number for t in trials] == list(range(60))
    assert {t.state for t in trials} == {"COMPLETE"} and len({t.worker for t in trials}) == 2
    assert all(len(repo.timed_problems(t.generation_id)) == 8 for t in trials)
    assert repo.study("shared").counts["COMPLETE"] == 60
    repo.close()


@pytest.mark.parametrize(
    ("url", "words"),
    [
        ("postgresql+psycopg://postgres@127.0.0.1:1/test", ["127.0.0.1:1", "start the database"]),
        ("sqlite:///{tmp}/missing-dir/latts.db", ["unable to open database file", "--storage"]),
        ("nosuchdb://host/db", ["nosuchdb", "sqlite:///FILE"]),
        ("not a url", ["cannot parse storage URL"]),
    ],
)
def test_unusable_storage_is_one_line_error(url, words, tmp_path):
    with pytest.raises(StorageError) as err:
        Repository(url.format(tmp=tmp_path))
    message = str(err.value)
    assert "\n" not in message
    for word in words:
        assert word in message


@pytest.mark.postgres
def test_database_gone_after_open_is_one_line_error(pg_database):
    name = f"{pg_database}_gone"
    with psycopg.connect(f"{PG_SERVER}/postgres", autocommit=True) as admin:
        admin.execute(f"CREATE DATABASE {name}")
        try:
            repo = Repository(f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}")
            setup_study(repo)
        finally:
            admin.execute(f"DROP DATABASE {name} WITH (FORCE)")
    with pytest.raises(StorageError, match="check that the database is up") as err:
        repo.trials("s1")
    assert "\n" not in str(err.value)
    repo.close()
