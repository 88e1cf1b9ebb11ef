"""Bad input: each malformed spec or flag exits 2 with one line naming the field, and writes nothing."""

from __future__ import annotations

import sqlite3
import subprocess
from pathlib import Path

import pytest
import yaml

from latts.storage import Repository
from tests.conftest import run_latts

GOOD = {
    "study": "bad-input",
    "hardware": "cpu-2core",
    "model": "demo:target",
    "benchmark": {"name": "arith", "n_problems": 4, "seed": 0},
    "search_space": {"branches": [1, 2], "speculative": ["none"], "aggregator": ["majority"]},
    "budgets_s": [1.0],
    "n_trials": 2,
}


def _with(path: str, value, base=GOOD):
    spec = yaml.safe_load(yaml.safe_dump(base))
    *parents, last = path.split(".")
    node = spec
    for key in parents:
        node = node[key]
    if value is _DELETE:
        del node[last]
    else:
        node[last] = value
    return yaml.safe_dump(spec)


_DELETE = object()

CASES = {
    # name: (spec text, words the one-line message must contain)
    "unknown key": (_with("colour", "blue"), ["colour", "unknown field"]),
    "empty branches": (_with("search_space.branches", []), ["search_space.branches"]),
    "zero budget": (_with("budgets_s", [1.0, 0]), ["budgets_s[1]", "greater than 0"]),
    "negative budget": (_with("budgets_s", [-2]), ["budgets_s[0]"]),
    "unknown sampler": (_with("sampler", "annealing"), ["sampler", "nsga2"]),
    "unknown aggregator": (_with("search_space.aggregator", ["median"]), ["search_space.aggregator[0]", "majority"]),
    "missing model folder": (_with("model", "/nonexistent/model"), ["model", "does not exist"]),
    "missing draft folder": (
        _with("search_space.speculative", ["none", {"method": "draft_model", "model": "./no-draft", "num_speculative_tokens": [2]}]),
        ["search_space.speculative[1].model", "does not exist"],
    ),
    "draft without model": (
        _with("search_space.speculative", [{"method": "draft_model", "num_speculative_tokens": [2]}]),
        ["search_space.speculative[0]", "needs model"],
    ),
    "speculation without a baseline": (
        _with("search_space.speculative", [{"method": "ngram", "num_speculative_tokens": [2]}]),
        ["search_space.speculative", "add none"],
    ),
    "branches below one": (_with("search_space.branches", [0, 4]), ["search_space.branches[0]", "greater than or equal to 1"]),
    "missing field": (_with("model", _DELETE), ["model", "missing"]),
    "negative temperature": (_with("sampling", {"temperature": -0.5}), ["sampling.temperature"]),
    "unknown benchmark": (_with("benchmark", {"name": "trivia", "n_problems": 3}), ["benchmark.name"]),
    "arith without n_problems": (_with("benchmark", {"name": "arith"}), ["benchmark", "n_problems"]),
    "zero trials": (_with("n_trials", 0), ["n_trials"]),
    "malformed yaml": ("study: x\nsearch_space: [branches: {\n", ["malformed YAML", "line"]),
    "not a mapping": ("- just\n- a list\n", ["mapping"]),
}


def _dump(db: Path) -> list[str]:
    with sqlite3.connect(db) as conn:
        return list(conn.iterdump())


@pytest.fixture(scope="module")
def existing_db(tmp_path_factory) -> Path:
    """A database that already holds a study, so 'unchanged' means something."""
    db = tmp_path_factory.mktemp("db") / "latts.db"
    repo = Repository(f"sqlite:///{db}")
    repo.ensure_hardware("cpu-2core", {"cpu_count": 2, "gpus": []})
    from latts.core.spec import parse_spec

    repo.ensure_study("bad-input", "cpu-2core", "demo:target", "arith", parse_spec(GOOD).model_dump(mode="json"))
    return db


def _assert_one_line_error(proc: subprocess.CompletedProcess, words: list[str]) -> None:
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("error: ")
    for word in words:
        assert word in lines[0], (word, lines[0])
    assert proc.stdout == ""


@pytest.mark.parametrize("name", sorted(CASES))
def test_bad_spec_exits_2_with_one_line_and_writes_nothing(name, existing_db, tmp_path):
    text, words = CASES[name]
    spec = tmp_path / "spec.yaml"
    spec.write_text(text)
    before = _dump(existing_db)
    proc = run_latts("tune", str(spec), "--storage", f"sqlite:///{existing_db}", cwd=tmp_path)
    _assert_one_line_error(proc, words)
    assert _dump(existing_db) == before
    assert not (tmp_path / "latts.db").exists()


def test_changed_search_space_of_existing_study_is_refused(existing_db, tmp_path):
    spec = tmp_path / "spec.yaml"
    spec.write_text(_with("search_space.branches", [1, 2, 4]))
    before = _dump(existing_db)
    proc = run_latts("tune", str(spec), "--storage", f"sqlite:///{existing_db}", cwd=tmp_path)
    _assert_one_line_error(proc, ["bad-input", "search_space", "new `study:` name"])
    assert _dump(existing_db) == before


@pytest.mark.parametrize(
    "storage, words",
    [
        ("postgresql+psycopg://postgres@127.0.0.1:1/test", ["cannot open storage", "127.0.0.1:1"]),
        ("sqlite:////nonexistent-dir/sub/latts.db", ["cannot open storage"]),
        ("nosuchdb://x", ["cannot open storage"]),
    ],
)
def test_storage_that_cannot_be_opened(storage, words, tmp_path):
    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump(GOOD))
    proc = run_latts("tune", str(spec), "--storage", storage, cwd=tmp_path)
    _assert_one_line_error(proc, words)


@pytest.mark.parametrize(
    "args, words",
    [
        (["best", "--study", "bad-input", "--budget", "-1"], ["--budget"]),
        (["best", "--study", "bad-input", "--budget", "1", "--statistic", "p42"], ["--statistic", "p42"]),
        (["best", "--budget", "1"], ["--study", "--hardware"]),
        (["frontier", "--study", "no-such-study"], ["no-such-study"]),
        (["tune", "missing.yaml"], ["missing.yaml", "cannot read"]),
    ],
)
def test_bad_flags(args, words, existing_db, tmp_path):
    proc = run_latts(*args, "--storage", f"sqlite:///{existing_db}", cwd=tmp_path)
    _assert_one_line_error(proc, words)


@pytest.mark.parametrize(
    "command",
    [
        ["status"],
        ["frontier", "--study", "bad-input"],
        ["best", "--study", "bad-input", "--budget", "1"],
        ["export", "--study", "bad-input", "--budget", "1", "--format", "json"],
        ["plot", "--study", "bad-input", "-o", "p.png"],
        ["confirm", "--study", "bad-input"],
    ],
)
def test_read_commands_do_not_create_a_missing_sqlite_file(command, tmp_path):
    # A typo in --storage used to leave an empty database behind and answer "no study named ...".
    proc = run_latts(*command, "--storage", "sqlite:///typo.db", cwd=tmp_path)
    _assert_one_line_error(proc, ["no database at typo.db", "latts tune SPEC --storage sqlite:///typo.db"])
    assert list(tmp_path.iterdir()) == []
