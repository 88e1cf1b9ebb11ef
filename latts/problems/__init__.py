"""Problem sets and grading: what a study runs and how an answer is judged.

Loaded by the controller (which problems) and used on workers (prompts, grading); pure data and
functions, no engine.
"""

from latts.problems.grading import extract_boxed, grade
from latts.problems.sets import Problem, ProblemSetError, arith_problems, arith_training_problems, load_jsonl, load_problems

__all__ = [
    "Problem",
    "ProblemSetError",
    "arith_problems",
    "arith_training_problems",
    "extract_boxed",
    "grade",
    "load_jsonl",
    "load_problems",
]
