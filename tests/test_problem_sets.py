"""JSONL problem sets: MATH-500, GSM8K and field mapping, with seeded subsampling."""

from __future__ import annotations

import json

import pytest

from latts.core.spec import BenchmarkSpec
from latts.problems import ProblemSetError, extract_boxed, grade, load_jsonl, load_problems
from tests.conftest import SHARED_DATA

MATH500 = SHARED_DATA / "math500.jsonl"
needs_math500 = pytest.mark.skipif(not MATH500.exists(), reason=f"{MATH500} is absent (../shared/data not beside the repo)")


@needs_math500
def test_math500_reads_all_rows_and_reference_solutions_grade_correct():
    problems = load_jsonl(str(MATH500), "math500")
    assert len(problems) == 500
    assert len({p.id for p in problems}) == 500
    correct = sum(grade(extract_boxed(p.solution), p.answer) for p in problems)
    assert correct / 500 >= 0.99, correct


@needs_math500
def test_seeded_subsample_is_stable_and_seed_dependent():
    spec = BenchmarkSpec(name="math500", path=str(MATH500), n_problems=20, seed=1)
    first, again = load_problems(spec), load_problems(spec)
    other = load_problems(BenchmarkSpec(name="math500", path=str(MATH500), n_problems=20, seed=2))
    assert [p.id for p in first] == [p.id for p in again]
    assert len(first) == 20 and [p.id for p in first] != [p.id for p in other]


def test_gsm8k_answer_after_hashes(tmp_path):
    path = tmp_path / "gsm8k.jsonl"
    rows = [
        {"question": "Tom has 3 apples and buys 4. How many?", "answer": "3 + 4 = 7\n#### 7"},
        {"question": "A large sum?", "answer": "It is big.\n#### 1,200"},
    ]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    problems = load_problems(BenchmarkSpec(name="gsm8k", path=str(path), problem_field="question"))
    assert [p.answer for p in problems] == ["7", "1200"]
    assert "Tom has 3 apples" in problems[0].prompt
    assert grade("1200", problems[1].answer)


def test_field_mapping_for_any_jsonl(tmp_path):
    path = tmp_path / "mine.jsonl"
    path.write_text(json.dumps({"q": "1+1?", "a": "2"}) + "\n\n" + json.dumps({"q": "2+2?", "a": "4"}) + "\n")
    problems = load_problems(BenchmarkSpec(name="jsonl", path=str(path), problem_field="q", answer_field="a"))
    assert [p.answer for p in problems] == ["2", "4"]


@pytest.mark.parametrize(
    "lines, words",
    [
        (["{not json"], ["line 1", "not JSON"]),
        ([json.dumps({"problem": "x"})], ["line 1", "'answer'", "answer_field"]),
        ([], ["no problems"]),
    ],
)
def test_bad_jsonl_is_one_clear_error(tmp_path, lines, words):
    path = tmp_path / "bad.jsonl"
    path.write_text("\n".join(lines))
    with pytest.raises(ProblemSetError) as info:
        load_jsonl(str(path), "jsonl")
    message = str(info.value)
    assert "\n" not in message and all(w in message for w in words), message


def test_gsm8k_without_hashes_is_refused(tmp_path):
    path = tmp_path / "g.jsonl"
    path.write_text(json.dumps({"problem": "x", "answer": "7"}) + "\n")
    with pytest.raises(ProblemSetError, match="####"):
        load_jsonl(str(path), "gsm8k")
