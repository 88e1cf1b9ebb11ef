"""Two `latts tune` processes on one study in PostgreSQL share the work: n_trials configs measured in
all, none twice, no timed problem or pooled sample stored twice."""

from __future__ import annotations

import subprocess
import sys

import psycopg
import pytest
import yaml

from latts.core.records import TrialState
from latts.storage import Repository
from tests.conftest import pg_schema_url

pytestmark = [pytest.mark.engine, pytest.mark.postgres]

SPEC = {
    "study": "shared",
    "hardware": "cpu-2core",
    "model": "demo:target",
    "benchmark": {"name": "arith", "n_problems": 12, "seed": 11},
    "search_space": {"branches": [1, 2, 4, 8, 16, 32], "speculative": ["none"], "aggregator": ["majority"]},
    "budgets_s": [1.0],
    "sampler": "random",
    "n_trials": 4,  # of 6 configs: the two must stop together at 4
    "workers": {"count": 1, "engines_per_worker": 1},
    "race": {"finalists": 0},
}


def test_two_tune_processes_share_a_postgresql_study(pg_database, tmp_path, demo_model_paths):
    url = pg_schema_url(pg_database)
    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump(SPEC))
    command = [sys.executable, "-m", "latts", "tune", str(spec), "--storage", url]
    controllers = [subprocess.Popen(command, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    for controller in controllers:
        _, stderr = controller.communicate(timeout=1200)
        assert controller.returncode == 0, stderr[-3000:]

    repo = Repository(url)
    trials = repo.trials("shared")
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    assert len(complete) == 4 and len(trials) == 4, [(t.number, t.state, t.fail_reason) for t in trials]
    assert len({t.config.key() for t in complete}) == 4
    generations = repo.generations("shared")
    assert len(generations) == 4 and len({g.generation.key() for g in generations}) == 4
    schema = url.split("search_path%3D")[1]
    with psycopg.connect(f"postgresql://postgres@127.0.0.1:5432/{pg_database}", options=f"-csearch_path={schema}") as conn:
        # Both controllers measured, and nothing was stored twice.
        assert conn.execute("SELECT count(DISTINCT controller_id) FROM latts_generations").fetchone()[0] == 2
        timed = conn.execute("SELECT count(*), count(DISTINCT (generation_id, round, problem_index)) FROM latts_timed_problems").fetchone()
        assert timed[0] == timed[1] > 0
        pooled = conn.execute("SELECT count(*), count(DISTINCT (pool, prompt_sha, seed, branch)) FROM latts_pool_samples").fetchone()
        assert pooled[0] == pooled[1] > 0
        assert conn.execute("SELECT count(*) FROM latts_controllers WHERE stopped_at IS NULL").fetchone()[0] == 0
