"""A controller stopped at any point (SIGKILL, SIGTERM) resumes: no lost and no duplicated trials,
nothing left running; a killed worker fails its trial only."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import optuna
import psutil
import pytest
import yaml

from latts.optimizer.controller import INTERRUPTED
from latts.storage import Repository
from tests.conftest import run_latts

pytestmark = pytest.mark.engine

SPEC = {
    "study": "resume",
    "hardware": "cpu-2core",
    "model": "demo:target",
    "benchmark": {"name": "arith", "n_problems": 24, "seed": 5},
    "search_space": {"branches": [1, 2, 4, 8, 16, 32], "speculative": ["none"], "aggregator": ["majority"]},
    "budgets_s": [1.0],
    "sampler": "grid",
    "n_trials": 6,
    "workers": {"count": 1},
    "race": {"finalists": 0},  # about resuming: a race at the end would time the kept trials again
}


def wait_for(predicate, timeout_s: float, what: str, every_s: float = 0.5):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(every_s)
    raise AssertionError(f"timed out waiting for {what}")


def start_tune(spec, url, folder, ray_tmp):
    return subprocess.Popen(
        [sys.executable, "-m", "latts", "tune", str(spec), "--storage", url],
        cwd=folder,
        env={**os.environ, "LATTS_RAY_TMP": str(ray_tmp)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # its own process group: a group kill takes Ray and the engines down with it
    )


def held_under(folder) -> list[int]:
    """Processes with a file open under `folder` (a controller's Ray processes)."""
    found = []
    for process in psutil.process_iter():
        try:
            if any(f.path.startswith(str(folder)) for f in process.open_files()):
                found.append(process.pid)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return found


def snapshot(url):
    if not os.path.exists(url.removeprefix("sqlite:///")):
        return None
    return Repository(url).trials("resume")


def test_a_controller_stopped_at_any_point_resumes_without_loss_or_duplicates(tmp_path, demo_model_paths):
    """SIGKILL of the controller's process alone before its first trial ends, of its process group
    mid-study and while it stores a result, then SIGTERM: each run resumes the last, and at the end
    every config is measured exactly once, what was measured is kept as it was, and nothing of the
    stopped runs is left running."""
    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump(SPEC))
    url = f"sqlite:///{tmp_path / 'latts.db'}"
    ray_tmp = tempfile.mkdtemp(prefix="r", dir="/tmp")  # Ray's socket paths must stay short

    # Trials of earlier runs still read RUNNING until the next run finds their controller dead: each
    # point waits for a trial the new run started.
    earlier: set[int] = set()

    def first_running(trials):
        return not any(t.state == "COMPLETE" for t in trials) and any(t.state == "RUNNING" for t in trials)

    def mid_study(trials):
        started = any(t.state == "RUNNING" and t.id not in earlier for t in trials)
        return any(t.state == "COMPLETE" for t in trials) and started

    def storing(trials):
        # A generation stored, its trial not yet: the controller is between its writes of one result.
        if not trials:
            return False
        running = {t.generation_id for t in trials if t.state == "RUNNING"}
        return any(g.id in running for g in Repository(url).generations("resume", states=["COMPLETE"]))

    kills = [(first_running, "pid"), (mid_study, "group"), (storing, "group"), (mid_study, "sigterm")]
    kept: dict[int, tuple] = {}
    for when, how in kills:
        controller = start_tune(spec, url, tmp_path, ray_tmp)
        try:
            # Polled often: a result is stored within a fraction of a second.
            before = wait_for(lambda: (t := snapshot(url)) and when(t) and t, 900, f"{when.__name__} in a new run", every_s=0.01)
        finally:
            if how == "pid":
                controller.kill()  # the controller's process alone: its Ray processes are orphaned
            elif how == "group":
                os.killpg(controller.pid, signal.SIGKILL)
            else:
                controller.send_signal(signal.SIGTERM)
            _, stderr = controller.communicate(timeout=120)
        folders = list(Path(ray_tmp).glob("latts-ray-*"))
        if how == "pid":
            assert held_under(ray_tmp), "SIGKILL of the controller alone left nothing of Ray: the test does not test reaping"
            assert run_latts("status", "--storage", url, env={**os.environ, "LATTS_RAY_TMP": ray_tmp}).returncode == 0
            assert held_under(ray_tmp) == [] and not list(Path(ray_tmp).glob("latts-ray-*"))
        if how == "sigterm":
            assert controller.returncode == 128 + signal.SIGTERM and "stopped by SIGTERM" in stderr, stderr[-2000:]
            # It handed its running configs back itself and its Ray processes ended with it.
            after = Repository(url).trials("resume")
            assert not [t for t in after if t.state == "RUNNING"]
            assert {t.id for t in after if t.fail_reason == INTERRUPTED} >= {t.id for t in before if t.state == "RUNNING"}
            wait_for(lambda: not held_under(ray_tmp), 30, "the stopped controller's Ray processes to end")
            assert len(folders) == 1
        kept.update({t.id: (t.config, t.generation_id, t.latency_s) for t in before if t.state == "COMPLETE"})
        earlier |= {t.id for t in before}

    proc = run_latts("tune", str(spec), "--storage", url, cwd=tmp_path, env={**os.environ, "LATTS_RAY_TMP": ray_tmp})
    assert proc.returncode == 0, proc.stderr[-3000:]
    after = Repository(url).trials("resume")
    complete = [t for t in after if t.state == "COMPLETE"]
    # Every grid point measured exactly once; nothing failed but the interrupted; nothing measured lost or
    # changed: its generation and timings. (Its accuracy is estimated again on the pool as the study ended.)
    assert sorted(t.config.branches for t in complete) == SPEC["search_space"]["branches"]
    assert all(t.fail_reason == INTERRUPTED for t in after if t.state == "FAILED")
    assert {t.id: (t.config, t.generation_id, t.latency_s) for t in complete if t.id in kept} == kept
    generations = Repository(url).generations("resume", states=["COMPLETE"])
    assert sorted(g.generation.branches for g in generations) == SPEC["search_space"]["branches"]
    # Optuna agrees: nothing left running, one COMPLETE trial per measured config.
    study = optuna.load_study(study_name="resume", storage=url)
    states = [t.state for t in study.trials if "latts_repeat_of" not in t.user_attrs]
    assert optuna.trial.TrialState.RUNNING not in states
    assert states.count(optuna.trial.TrialState.COMPLETE) == len(SPEC["search_space"]["branches"])
    assert held_under(ray_tmp) == []


def name(process: psutil.Process) -> str:
    try:
        return process.name()
    except psutil.NoSuchProcess:  # compilers come and go while an engine starts
        return ""


def alive(process: psutil.Process) -> bool:
    try:
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def test_killed_worker_fails_its_trial_and_the_study_goes_on(tmp_path, demo_model_paths):
    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump({**SPEC, "study": "worker-death", "n_trials": 3, "search_space": {**SPEC["search_space"], "branches": [1, 2, 4]}}))
    url = f"sqlite:///{tmp_path / 'latts.db'}"
    controller = subprocess.Popen(
        [sys.executable, "-m", "latts", "tune", str(spec), "--storage", url],
        cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
    )
    try:

        def running_worker():
            if not (tmp_path / "latts.db").exists() or not Repository(url).running_trials("worker-death"):
                return None
            try:
                # This test's worker only (another study may run on the machine), while it runs a generation:
                # Ray names it ray::EngineWorker.run_generation then, ray::EngineWorker when idle. An idle one
                # killed after the last trial's result came back would fail no trial.
                workers = [p for p in psutil.Process(controller.pid).children(recursive=True) if name(p) == "ray::EngineWorker.run_generation"]
                worker = workers[0] if workers else None
                # Once its engine core runs: the whole tree below the worker must go with it.
                below = worker.children(recursive=True) if worker else []
            except psutil.NoSuchProcess:
                return None
            return (worker, below) if any("EngineCore" in name(p) for p in below) else None

        worker, engine_processes = wait_for(running_worker, 600, "a worker running a trial on a started engine")
        worker.kill()
        _, stderr = controller.communicate(timeout=900)
        left = [p for p in engine_processes if alive(p)]
        assert not left, f"the killed worker's engine processes outlived it: {[name(p) for p in left]}"
    finally:
        if controller.poll() is None:
            os.killpg(controller.pid, signal.SIGKILL)
    assert controller.returncode == 0, stderr[-3000:]
    trials = Repository(url).trials("worker-death")
    failed = [t for t in trials if t.state == "FAILED"]
    assert len(failed) == 1 and failed[0].fail_reason.startswith("worker died"), [t.fail_reason for t in trials]
    assert failed[0].accuracy is None and failed[0].latency_s is None  # no made-up numbers
    assert sum(t.state == "COMPLETE" for t in trials) == 2  # the replacement worker ran the rest
