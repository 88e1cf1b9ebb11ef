"""Problem sets: `arith` generated from a seed, and JSONL files (MATH-500, GSM8K, any).

`arith` is a synthetic multi-step arithmetic set: small enough that the tiny
demo models (latts.demo) learn it in seconds on a CPU, noisy enough that
test-time scaling visibly helps them.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Problem:
    id: str  # stable id: "<set>-<seed>-<index>"
    prompt: str  # exact text fed to the engine
    answer: str  # reference final answer
    solution: str | None = None  # reference chain of thought ending in \boxed{answer}


# Evaluation seeds are plain ints; training draws from a disjoint stream
# (a string seed namespace), and additionally drops any prompt that occurs in
# the first _HELD_OUT_N problems of evaluation seeds 0.._HELD_OUT_SEEDS-1.
_HELD_OUT_SEEDS = 10
_HELD_OUT_N = 1000
_MAX_TERM = 9  # largest operand of + and -
_MAX_VALUE = 30  # every intermediate value and the answer lie in 0.._MAX_VALUE


def _arith_one(rng: random.Random) -> tuple[str, str, str]:
    """One problem: (expression, answer, chain of thought).

    2-3 operations over +, - and *, evaluated left to right (parentheses make
    that the standard reading, e.g. "(6-2)*3+5"). Factors are one-digit and
    every intermediate value lies in 0.._MAX_VALUE (30), so each step is a small fact, and
    the chain of thought takes the operands in prompt order: both keep the
    task learnable in seconds by a tiny model.
    """
    while True:
        acc = rng.randint(1, _MAX_TERM)
        expr, steps, prev = str(acc), [], "*"
        for _ in range(rng.choice((2, 3))):
            op = rng.choice("+-*")
            if op == "*":
                v = rng.randint(2, 9)
                r = acc * v
                if prev in "+-":  # a sum so far: bracket it to keep left-to-right order
                    expr = f"({expr})"
            else:
                v = rng.randint(1, _MAX_TERM)
                r = acc + v if op == "+" else acc - v
            expr += f"{op}{v}"
            steps.append(f"{acc}{op}{v}={r}.")
            acc, prev = r, op
            if not 0 <= acc <= _MAX_VALUE:
                break
        else:
            answer = str(acc)
            return expr, answer, " " + " ".join(steps) + f" \\boxed{{{answer}}}"


def _arith_prompt(expr: str) -> str:
    return f"Q: {expr}\nA:"


def arith_problems(n: int, seed: int) -> list[Problem]:
    """The first n arith problems of evaluation seed `seed` (prefix-stable in n)."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        expr, answer, solution = _arith_one(rng)
        out.append(Problem(f"arith-{seed}-{i}", _arith_prompt(expr), answer, solution))
    return out


def arith_training_problems(n: int, seed: int = 0) -> list[Problem]:
    """n arith problems for training, disjoint from the held-out evaluation sets."""
    held_out = {p.prompt for s in range(_HELD_OUT_SEEDS) for p in arith_problems(_HELD_OUT_N, s)}
    rng = random.Random(f"arith-train-{seed}")
    out: list[Problem] = []
    while len(out) < n:
        expr, answer, solution = _arith_one(rng)
        prompt = _arith_prompt(expr)
        if prompt not in held_out:
            out.append(Problem(f"arith-train-{seed}-{len(out)}", prompt, answer, solution))
    return out


class ProblemSetError(Exception):
    """A problem set that cannot be loaded; the message is one line naming the fix."""


def _reference(raw: object, benchmark_name: str) -> str:
    text = str(raw).strip()
    if benchmark_name == "gsm8k":
        # GSM8K's answer field is a worked solution ending in "#### 42".
        if "####" not in text:
            raise ValueError("has no '#### answer' line")
        text = text.rsplit("####", 1)[1].strip().replace(",", "")
    return text


def load_jsonl(
    path: str, benchmark_name: str, problem_field: str = "problem", answer_field: str = "answer"
) -> list[Problem]:
    """Problems from a JSONL file: one object per line with the problem text and its reference answer."""
    problems = []
    source = Path(path).expanduser()
    try:
        lines = source.read_text().splitlines()
    except OSError as exc:
        raise ProblemSetError(f"benchmark.path: cannot read {path!r} ({exc.strerror}); check the path") from None
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        where = f"benchmark.path: {path} line {number}"
        try:
            row = json.loads(line)
            reference = _reference(row[answer_field], benchmark_name)
            text = row[problem_field]
        except json.JSONDecodeError:
            raise ProblemSetError(f"{where} is not JSON; give one JSON object per line") from None
        except KeyError as exc:
            raise ProblemSetError(
                f"{where} has no field {exc.args[0]!r}; set benchmark.problem_field / answer_field"
            ) from None
        except ValueError as exc:
            raise ProblemSetError(f"{where}: the answer {exc}; check benchmark.name") from None
        solution = row.get("solution")
        problems.append(
            Problem(
                id=str(row.get("unique_id") or row.get("id") or f"{source.stem}-{len(problems)}"),
                prompt=f"Problem: {text}\nSolution:",
                answer=reference,
                solution=solution if isinstance(solution, str) else None,
            )
        )
    if not problems:
        raise ProblemSetError(f"benchmark.path: {path} holds no problems; give a JSONL file with one problem per line")
    return problems


def load_problems(benchmark) -> list[Problem]:
    """The problems a study runs, from its spec's `benchmark` section (latts.core.spec.BenchmarkSpec)."""
    if benchmark.name == "arith":
        return arith_problems(benchmark.n_problems, benchmark.seed)
    problems = load_jsonl(benchmark.path, benchmark.name, benchmark.problem_field, benchmark.answer_field)
    if benchmark.n_problems is None or benchmark.n_problems >= len(problems):
        return problems
    # Seeded subsample, kept in file order so that problem indices read naturally.
    chosen = sorted(random.Random(benchmark.seed).sample(range(len(problems)), benchmark.n_problems))
    return [problems[i] for i in chosen]
