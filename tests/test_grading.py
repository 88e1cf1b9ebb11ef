import threading

import pytest

from latts.problems import Problem, arith_problems, arith_training_problems, extract_boxed, grade


def test_arith_is_deterministic_per_seed():
    a, b = arith_problems(50, seed=0), arith_problems(50, seed=0)
    assert a == b
    assert [p.prompt for p in arith_problems(50, seed=1)] != [p.prompt for p in a]
    assert arith_problems(10, seed=0) == a[:10]  # prefix-stable in n
    assert len({p.id for p in a}) == 50 and a[17].id == "arith-0-17"


def test_arith_solutions_grade_correct_and_stay_short():
    for p in arith_problems(200, seed=3):
        assert isinstance(p, Problem)
        assert p.prompt.startswith("Q: ") and p.prompt.endswith("\nA:")
        assert p.solution.endswith(f"\\boxed{{{p.answer}}}")
        assert extract_boxed(p.solution) == p.answer
        assert grade(extract_boxed(p.solution), p.answer)
        assert eval(p.prompt[3:-3]) == int(p.answer)  # the reference answer is right
        assert len(p.solution) < 60  # one token per character at worst: far below 96 tokens


def test_training_problems_never_overlap_evaluation_sets():
    evaluation = {p.prompt for s in range(10) for p in arith_problems(256, s)}
    train = arith_training_problems(5000)
    assert not evaluation & {p.prompt for p in train}
    assert train == arith_training_problems(5000)


@pytest.mark.parametrize(
    "text, expected",
    [
        ("so \\boxed{\\frac{1}{2}}.", "\\frac{1}{2}"),
        ("\\boxed{1} then \\boxed{{2}+3}", "{2}+3"),
        ("first \\boxed{7}, finally \\boxed{ 18 }", "18"),
        ("\\boxed{\\sqrt{\\{2\\}}}", "\\sqrt{\\{2\\}}"),  # escaped braces inside
        ("no box here: 18", None),
        ("cut off \\boxed{\\frac{1}{2", None),
        ("\\boxed{3} and then \\boxed{4", None),  # the last box is unfinished
        ("", None),
        (None, None),
    ],
)
def test_extract_boxed(text, expected):
    assert extract_boxed(text) == expected


@pytest.mark.parametrize(
    "pred, ref, ok",
    [
        ("18", "18", True),
        ("18.0", "18", True),
        ("0.5", "\\frac{1}{2}", True),
        ("\\frac{1}{2}", "0.5", True),
        ("\\dfrac{3}{4}", "\\frac34", True),
        ("(3,\\pi/2)", "\\left( 3, \\frac{\\pi}{2} \\right)", True),
        ("17", "18", False),
        ("-18", "18", False),
        ("x+", "1", False),
        ("", "1", False),
        (None, "18", False),
    ],
)
def test_grade(pred, ref, ok):
    assert grade(pred, ref) is ok


def test_grade_works_outside_the_main_thread():
    # math-verify's timeouts use SIGALRM, which raises outside the main thread.
    got = []
    t = threading.Thread(target=lambda: got.extend([grade("0.5", "\\frac{1}{2}"), grade("1/3", "0.5")]))
    t.start()
    t.join()
    assert got == [True, False]
