"""Errors as users read them: one line."""

from __future__ import annotations


def first_line(error: BaseException) -> str:
    """The first non-empty line of an error's message, unwrapped from the layers that wrap it.

    SQLAlchemy keeps the driver's error in `.orig` (psycopg appends hint lines to it) and Ray keeps
    a task's exception in `.cause`; the wrapped error's own words are the useful ones.
    """
    inner = getattr(error, "orig", None) or getattr(error, "cause", None) or error
    text = str(inner)
    return next((line.strip() for line in text.splitlines() if line.strip()), type(inner).__name__)
