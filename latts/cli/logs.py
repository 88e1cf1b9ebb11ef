"""Where `latts tune` logs, and how: a file per study beside the database, the terminal on demand.

Every module logs through `logging.getLogger(__name__)`; what the workers and their engines write
arrives through the worker pool's logger (latts.workers.remote). The file takes everything at INFO
and above; the terminal shows warnings, or everything with --verbose, above tune's live display.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import optuna
from rich.console import Console
from rich.logging import RichHandler

from latts.storage import sqlite_file

LOG_FOLDER = "latts-logs"
FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def default_log_file(storage_url: str, study: str) -> Path:
    """latts-logs/STUDY.log beside a SQLite database file, so that a database and the logs its
    failed trials name stay together; in the current directory for a database server."""
    database = sqlite_file(storage_url)
    folder = database.resolve().parent if database is not None else Path.cwd()
    return folder / LOG_FOLDER / f"{study}.log"


def failure_logs(log_file: Path, study: str) -> Path:
    """The folder of a study's failed generations' full reasons: beside its log file, named after it."""
    return log_file.parent / study


def log_file_handler(log_file: Path) -> logging.Handler:
    """A handler appending to `log_file` (a resumed study's runs follow each other); OSError when it cannot."""
    log_file.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(log_file, encoding="utf-8")
    handler.setFormatter(logging.Formatter(FORMAT))
    return handler


@contextmanager
def logging_to(to_file: logging.Handler, console: Console, verbose: bool) -> Iterator[None]:
    """Everything at INFO and above to `to_file`; warnings, or with `verbose` everything, to `console`."""
    to_terminal = RichHandler(console=console, level=logging.INFO if verbose else logging.WARNING, show_path=False)
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.INFO)
    root.addHandler(to_file)
    root.addHandler(to_terminal)
    logging.captureWarnings(True)  # Python's warnings (torch, Ray) go the same ways
    optuna.logging.disable_default_handler()  # Optuna's own stderr handler: its records come here instead
    optuna.logging.enable_propagation()
    try:
        yield
    finally:
        optuna.logging.disable_propagation()
        optuna.logging.enable_default_handler()
        logging.captureWarnings(False)
        for handler in (to_file, to_terminal):
            root.removeHandler(handler)
            handler.close()
        root.setLevel(level)
