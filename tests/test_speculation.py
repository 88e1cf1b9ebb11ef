"""Speculative configs on real engines at temperature 0.8: lossless with latts' CPU fix, lossy without it."""

from __future__ import annotations

import json
import os

import pytest
import yaml

from latts.core.records import TrialSummary
from latts.core.statistics import wilson_interval
from latts.problems import arith_problems, grade
from latts.storage import Repository
from tests.conftest import run_latts

pytestmark = pytest.mark.engine

DRAFT = {"method": "draft_model", "model": "demo:draft", "num_speculative_tokens": [4]}
NGRAM = {"method": "ngram", "num_speculative_tokens": [4]}


def tune(folder, name: str, speculative: list, fix: str) -> tuple[str, str]:
    spec = {
        "study": name,
        "hardware": "cpu-2core",
        "model": "demo:target",
        "benchmark": {"name": "arith", "n_problems": 32, "seed": 11},
        "sampling": {"temperature": 0.8, "max_tokens": 96},
        "search_space": {"branches": [4], "speculative": speculative, "aggregator": ["majority"]},
        "budgets_s": [10.0],
        "latency_probes": 32,  # every problem timed: the losslessness test sees all of them
        "sampler": "grid",
        "n_trials": len(speculative),
        "workers": {"count": 1, "engines_per_worker": 1},
        # Racing would time each config three times more, switching engines each time: 9 more starts.
        "race": {"finalists": 0},
    }
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(spec))
    url = f"sqlite:///{folder / 'latts.db'}"
    proc = run_latts("tune", str(path), "--storage", url, cwd=folder, env={**os.environ, "LATTS_VLLM_CPU_FIX": fix})
    assert proc.returncode == 0, proc.stderr[-3000:]
    return url, proc.stderr


PROBLEMS = arith_problems(32, seed=11)


def per_branch(repo: Repository, trial: TrialSummary) -> tuple[int, int]:
    """(correct branches, branches): the accuracy of one branch, which speculation must not change."""
    rows = repo.timed_problems(trial.generation_id)
    correct = sum(grade(b.answer, PROBLEMS[r.index].answer) for r in rows for b in r.branches)
    return correct, sum(len(r.branches) for r in rows)


def by_method(repo: Repository, study: str) -> dict[str | None, TrialSummary]:
    trials = repo.trials(study)
    assert all(t.state == "COMPLETE" for t in trials), [t.fail_reason for t in trials]
    return {t.config.speculative_method: t for t in trials}


def test_with_the_fix_speculation_keeps_the_answers(tmp_path, demo_model_paths):
    url, _ = tune(tmp_path, "fixed", ["none", NGRAM, DRAFT], fix="1")
    repo = Repository(url)
    trials = by_method(repo, "fixed")
    baseline = trials[None]
    lo, hi = wilson_interval(*per_branch(repo, baseline))
    for method in ("ngram", "draft_model"):
        trial = trials[method]
        assert trial.vllm_cpu_fix == "applied"
        assert (trial.lossless.verdict, trial.lossless.baseline_trial) == ("lossless", baseline.number), trial.lossless
        correct, total = per_branch(repo, trial)
        assert lo <= correct / total <= hi, (method, correct / total, (lo, hi))
    assert trials["draft_model"].mean_acceptance_length > 2  # the demo draft is accepted most of the time


def test_without_the_fix_draft_model_speculation_is_flagged_lossy(tmp_path, demo_model_paths):
    url, stderr = tune(tmp_path, "stock", ["none", DRAFT], fix="0")
    trials = by_method(Repository(url), "stock")
    draft = trials["draft_model"]
    assert draft.vllm_cpu_fix == "off"
    assert draft.lossless.verdict == "lossy" and draft.lossless.p_value < 0.01
    assert f"trial {draft.number} " in stderr and "is lossy" in stderr

    front = json.loads(run_latts("frontier", "--study", "stock", "--json", "--storage", url).stdout)["frontier"]
    assert draft.number not in [t["number"] for t in front]
    for budget in ("0.5", "1000"):
        best = json.loads(run_latts("best", "--study", "stock", "--budget", budget, "--json", "--storage", url).stdout)
        assert best["best"] is None or best["best"]["number"] != draft.number
    everything = run_latts("frontier", "--study", "stock", "--json", "--include-lossy", "--storage", url)
    assert json.loads(everything.stdout)["include_lossy"] is True
