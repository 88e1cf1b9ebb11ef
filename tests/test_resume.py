"""A controller killed mid-study (SIGKILL) resumes: no lost and no duplicated trials."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

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
    "search_space": {"branches": [1, 2, 4, 8], "speculative": ["none"], "aggregator": ["majority"]},
    "budgets_s": [1.0],
    "sampler": "grid",
    "n_trials": 4,
    "workers": {"count": 1},
    "race": {"finalists": 0},  # about resuming: a race at the end would time the kept trials again
}


def wait_for(predicate, timeout_s: float, what: str):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}")


def test_sigkilled_controller_resumes_without_loss_or_duplicates(tmp_path, demo_model_paths):
    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump(SPEC))
    url = f"sqlite:///{tmp_path / 'latts.db'}"
    controller = subprocess.Popen(
        [sys.executable, "-m", "latts", "tune", str(spec), "--storage", url],
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,  # its own process group: the kill takes Ray and the engines down with it
    )
    try:

        def one_done_one_running():
            if not (tmp_path / "latts.db").exists():
                return None
            trials = Repository(url).trials("resume")
            states = [t.state for t in trials]
            return trials if "COMPLETE" in states and "RUNNING" in states else None

        before = wait_for(one_done_one_running, 600, "a finished trial and a running one")
    finally:
        os.killpg(controller.pid, signal.SIGKILL)
        controller.wait()

    proc = run_latts("tune", str(spec), "--storage", url, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]

    after = Repository(url).trials("resume")
    complete = [t for t in after if t.state == "COMPLETE"]
    interrupted = [t for t in after if t.state == "FAILED"]
    # Every grid point measured exactly once; nothing else failed.
    assert sorted(t.config.branches for t in complete) == [1, 2, 4, 8]
    assert all(t.fail_reason == INTERRUPTED for t in interrupted)
    # What was running at the kill is marked failed and its config re-run.
    running_then = [t for t in before if t.state == "RUNNING"]
    assert {t.id for t in interrupted} == {t.id for t in running_then}
    assert {t.config for t in running_then} <= {t.config for t in complete}
    # What was complete at the kill is kept as it was.
    kept = {t.id: (t.number, t.accuracy, t.latency_s) for t in complete}
    for t in before:
        if t.state == "COMPLETE":
            assert kept[t.id] == (t.number, t.accuracy, t.latency_s)
    # Optuna agrees: nothing left running, one COMPLETE trial per measured config.
    study = optuna.load_study(study_name="resume", storage=url)
    states = [t.state for t in study.trials]
    assert optuna.trial.TrialState.RUNNING not in states
    assert states.count(optuna.trial.TrialState.COMPLETE) == 4


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
            ps = subprocess.run(["pgrep", "-f", "ray::EngineWorker"], capture_output=True, text=True)
            try:
                worker = psutil.Process(int(ps.stdout.split()[0])) if ps.stdout.strip() else None
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
