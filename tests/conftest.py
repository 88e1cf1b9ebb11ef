"""Shared fixtures: real databases, the demo models, and the `latts` command as a user runs it."""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest
import yaml

PG_SERVER = "postgresql://postgres@127.0.0.1:5432"
REPO_ROOT = Path(__file__).resolve().parent.parent
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"


@pytest.fixture(scope="session")
def pg_database():
    """A fresh PostgreSQL database for this test session, dropped at the end."""
    try:
        admin = psycopg.connect(f"{PG_SERVER}/postgres", autocommit=True, connect_timeout=3)
    except psycopg.OperationalError as err:
        reason = str(err).strip().splitlines()[0]
        pytest.skip(f"PostgreSQL is not reachable at {PG_SERVER} ({reason}); start it to run these tests")
    name = f"latts_test_{os.getpid()}_{secrets.token_hex(3)}"
    admin.execute(f"CREATE DATABASE {name}")
    yield name
    admin.execute(f"DROP DATABASE {name} WITH (FORCE)")
    admin.close()


def pg_schema_url(database: str) -> str:
    """A URL on a fresh schema of `database`, so tests never see each other's tables."""
    schema = f"t_{secrets.token_hex(4)}"
    with psycopg.connect(f"{PG_SERVER}/{database}", autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
    return f"postgresql+psycopg://postgres@127.0.0.1:5432/{database}?options=-csearch_path%3D{schema}"


@pytest.fixture(scope="session")
def demo_model_paths() -> dict[str, Path]:
    """Trained once per machine (cached in the user's cache folder), then instant."""
    from latts.demo import models as demo_models

    return demo_models.ensure_demo_models()


def run_latts(*args: str, cwd: Path | None = None, timeout: float = 900, **popen) -> subprocess.CompletedProcess:
    """`latts ARGS...` in a subprocess, exactly as a user types it."""
    return subprocess.run(
        [sys.executable, "-m", "latts", *args], capture_output=True, text=True, cwd=cwd, timeout=timeout, **popen
    )


SMALL_STUDY = {
    "study": "e2e",
    "hardware": "cpu-2core",
    "model": "demo:target",
    "benchmark": {"name": "arith", "n_problems": 6, "seed": 3},
    "sampling": {"temperature": 0.8, "max_tokens": 96},
    "search_space": {
        "branches": [1, 4],
        "speculative": ["none", {"method": "ngram", "num_speculative_tokens": [2]}],
        "aggregator": ["majority"],
    },
    "budgets_s": [0.05, 0.5, 5.0],
    "latency_rounds": 2,
    "sampler": "grid",
    "n_trials": 4,
    "workers": {"count": 2, "engines_per_worker": 2},
}


def write_spec(folder: Path, **changes) -> Path:
    path = folder / "spec.yaml"
    path.write_text(yaml.safe_dump({**SMALL_STUDY, **changes}))
    return path


def tune(folder: Path, url: str, **changes):
    proc = run_latts("tune", str(write_spec(folder, **changes)), "--storage", url, cwd=folder)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


@pytest.fixture(scope="session")
def sqlite_study(tmp_path_factory, demo_model_paths):
    """One small study in SQLite, shared by every test that reads a finished study."""
    folder = tmp_path_factory.mktemp("e2e")
    url = f"sqlite:///{folder / 'latts.db'}"
    proc = tune(folder, url)
    return url, proc
