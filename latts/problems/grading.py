"""Answer extraction and grading: the last \\boxed{} of a branch, compared with math-verify.

Pure functions; they run on workers (grading inside a trial) and on the read side alike.
"""

from __future__ import annotations

import logging
import threading


def extract_boxed(text: str | None) -> str | None:
    """Content of the last \\boxed{...} in text, nested braces handled.

    None when there is no \\boxed{ or the last one is never closed (for
    example a generation cut off by max_tokens).
    """
    if not text:
        return None
    start = text.rfind("\\boxed{")
    if start < 0:
        return None
    i = start + len("\\boxed{")
    depth = 1
    for j in range(i, len(text)):
        c = text[j]
        if c == "{":
            depth += 1
        elif c == "}":
            depth -= 1
            if depth == 0:
                return text[i:j].strip()
    return None


def _norm(s: str) -> str:
    return "".join(s.split()).strip("$").rstrip(".")


def _mv_parse(s: str, timeout: int | None) -> list:
    from math_verify import parse

    # \boxed{} first (math-verify's highest priority target), $...$ as fallback.
    got = parse(f"\\boxed{{{s}}}", parsing_timeout=timeout)
    return got or parse(f"${s}$", parsing_timeout=timeout)


# math-verify warns once (at WARNING level) whenever its timeout is off; off is
# what we want outside the main thread, so keep that warning quiet.
logging.getLogger("math_verify").setLevel(logging.ERROR)


def grade(predicted: str | None, reference: str) -> bool:
    """Whether the predicted final answer equals the reference (math-verify).

    Never raises. math-verify's timeouts use SIGALRM, which only works in the
    main thread, so elsewhere (Ray actor threads, thread pools) they are off;
    our answers are short, so parsing them cannot run away.
    """
    if predicted is None:
        return False
    try:
        if _norm(predicted) == _norm(reference):  # fast path: no sympy needed
            return True
        from math_verify import verify

        timeout = 5 if threading.current_thread() is threading.main_thread() else None
        gold = _mv_parse(reference, timeout)
        pred = _mv_parse(predicted, timeout)
        if not gold or not pred:
            return False
        return bool(verify(gold, pred, timeout_seconds=timeout))
    except BaseException as e:  # math-verify/sympy can raise odd things; a grade is a bool
        if isinstance(e, (KeyboardInterrupt, SystemExit)):
            raise
        return False
