"""Which cores each worker's engine may use, how it keeps pauses of its own and of idle engines out of timed requests, and that the shipped example specs stay valid."""

import gc
import inspect
import time
from types import SimpleNamespace

import pytest

from latts.core.spec import load_spec, parse_spec
from latts.workers.engine import BUSY_POLL_S, wait_until_quiet
from latts.workers.pool import CONTROL_CORE, without_gc_pauses, worker_env
from tests.conftest import REPO_ROOT, SMALL_STUDY

EXAMPLES = sorted((REPO_ROOT / "examples").glob("*.yaml"))


def _binds(monkeypatch, cores, count, gpus_per_worker=0):
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: set(cores))
    spec = parse_spec({**SMALL_STUDY, "workers": {"count": count, "gpus_per_worker": gpus_per_worker}})
    return [worker_env(spec, i).get("VLLM_CPU_OMP_THREADS_BIND") for i in range(count)]


def test_one_worker_leaves_a_core_to_the_engine_scheduler(monkeypatch):
    assert _binds(monkeypatch, [0, 1], 1) == ["1"]
    assert _binds(monkeypatch, range(8), 1) == ["1,2,3,4,5,6,7"]


def test_workers_get_disjoint_slices(monkeypatch):
    assert _binds(monkeypatch, [0, 1], 2) == ["0", "1"]
    assert _binds(monkeypatch, range(8), 2) == ["1,2,3", "5,6,7"]


def test_the_actor_and_engine_server_keep_off_the_compute_cores(monkeypatch):
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: {0, 1, 2, 3})
    envs = [worker_env(parse_spec({**SMALL_STUDY, "workers": {"count": 2}}), i) for i in range(2)]
    assert [(e[CONTROL_CORE], e["VLLM_CPU_OMP_THREADS_BIND"]) for e in envs] == [("0", "1"), ("2", "3")]
    # A one-core slice has no core to spare: nothing is pinned.
    assert all(CONTROL_CORE not in worker_env(parse_spec({**SMALL_STUDY, "workers": {"count": 4}}), i) for i in range(4))


def test_engines_run_at_normal_priority():
    # Ray would start them at niceness 15, below its own daemons, which then preempt every step.
    assert worker_env(parse_spec(SMALL_STUDY), 0)["RAY_worker_niceness"] == "0"


def test_no_binding_when_cores_are_short_or_on_gpus(monkeypatch):
    assert _binds(monkeypatch, [0, 1], 3) == [None, None, None]
    assert _binds(monkeypatch, range(8), 2, gpus_per_worker=1) == [None, None]


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_example_specs_hold_the_trials_they_ask_for(path):
    """An example whose n_trials exceeds its distinct configs would be capped with a warning."""
    spec = load_spec(path)
    assert spec.n_trials <= len(spec.search_space.points())


def test_examples_exist():
    assert {p.name for p in EXAMPLES} >= {"quickstart.yaml", "speculative.yaml"}


def test_timed_requests_run_without_garbage_collection_which_returns_even_after_a_failure():
    assert gc.isenabled()
    with pytest.raises(RuntimeError):
        with without_gc_pauses():
            assert not gc.isenabled()
            raise RuntimeError("the engine's server went away mid-request")
    assert gc.isenabled()


def test_a_timing_starts_once_the_other_engines_stopped_polling():
    now = time.monotonic()
    assert wait_until_quiet([SimpleNamespace(polling_until=now - 5)]) == 0.0
    assert wait_until_quiet([]) == 0.0
    started = time.monotonic()
    waited = wait_until_quiet([SimpleNamespace(polling_until=now + 0.1), SimpleNamespace(polling_until=now + 0.3)])
    assert time.monotonic() - started >= 0.29  # the last one to stop, not the first
    assert 0.2 < waited <= 0.3


def test_the_polling_second_waited_out_is_the_installed_vllms():
    # Readers of vLLM's shared-memory queue (its workers and engine core) spin for busy_loop_s
    # after their last read; a vLLM that changes it makes the wait too short or needlessly long.
    from vllm.distributed.device_communicators.shm_broadcast import SpinCondition  # here: importing vLLM takes seconds

    default = inspect.signature(SpinCondition).parameters["busy_loop_s"].default
    assert default == BUSY_POLL_S
