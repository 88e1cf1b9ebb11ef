"""Errors as users read them: one line, and no database password."""

from __future__ import annotations

import re
from urllib.parse import quote

# The password of a URL (`scheme://user:PASSWORD@host`), of a URL mistyped past parsing
# (`scheme//user:PASSWORD@host`), and of a libpq connection string (`password=PASSWORD`, which
# drivers may quote in their messages).
_URL_PASSWORD = re.compile(r"(?P<keep>[A-Za-z][\w+.-]*://[^:/@\s]*:)[^@\s]+(?=@)")
_USERINFO_PASSWORD = re.compile(r"(?P<keep>(?:^|(?<=[\s'\"/]))[^:/@\s'\"]+:)(?!/)[^@\s]+(?=@)")
_CONNINFO_PASSWORD = re.compile(r"(?P<keep>\bpassword\s*=\s*)(?:'(?:[^'\\]|\\.)*'|[^\s'&]+)", re.IGNORECASE)
HIDDEN = "***"


def first_line(error: BaseException) -> str:
    """The first non-empty line of an error's message, unwrapped from the layers that wrap it.

    SQLAlchemy keeps the driver's error in `.orig` (psycopg appends hint lines to it) and Ray keeps
    a task's exception in `.cause`; the wrapped error's own words are the useful ones.
    """
    inner = getattr(error, "orig", None) or getattr(error, "cause", None) or error
    text = str(inner)
    return next((line.strip() for line in text.splitlines() if line.strip()), type(inner).__name__)


def redact(text: str, url: str | None = None) -> str:
    """`text` with database passwords replaced by `***`, fit to print, log, store or answer.

    Hides the password of every URL and connection string in `text`, and, given the storage
    `url`, that URL's password wherever else it stands as a word (a driver's message may quote it
    bare). `redact(url)` is a storage URL to show; `redact(str(error), url)` an error's text.
    """
    hidden = _URL_PASSWORD.sub(rf"\g<keep>{HIDDEN}", text)
    hidden = _USERINFO_PASSWORD.sub(rf"\g<keep>{HIDDEN}", hidden)
    hidden = _CONNINFO_PASSWORD.sub(rf"\g<keep>{HIDDEN}", hidden)
    password = _password(url) if url else None
    if password:
        # Raw and percent-encoded, as a URL may spell it; only as a whole word, so that a password
        # which is also a word of the message ("postgres") leaves the rest of the message readable.
        for spelling in {password, quote(password, safe="")}:
            before = r"(?<!\w)" if re.match(r"\w", spelling[0]) else ""
            after = r"(?!\w)" if re.match(r"\w", spelling[-1]) else ""
            hidden = re.sub(before + re.escape(spelling) + after, HIDDEN, hidden)
    return hidden


def _password(url: str) -> str | None:
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        return make_url(url).password
    except ArgumentError:
        return None
