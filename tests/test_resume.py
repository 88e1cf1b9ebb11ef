"""A controller killed mid-study (SIGKILL) resumes: no lost and no duplicated trials."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import optuna
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
