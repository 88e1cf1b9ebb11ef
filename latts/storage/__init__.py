"""Storage: latts' SQL tables beside Optuna's, on SQLite or PostgreSQL.

`repository.Repository` is the one class that reads and writes them; the controller writes
through it and every question (frontier, best, export, API, plots) reads through it. Opening
storage checks its schema version (latts.storage.migrations); `upgrade` migrates it.

A storage URL may carry a database password: show, log or store it, or an error's text that may
quote it, only through `redact` (`redact(url)`, `redact(str(error), url)`).
"""

from latts.core.errors import redact
from latts.storage.repository import ControllerInfo, Repository, StorageError, StudyFull, StudyInfo, Taken, sqlite_file, upgrade

__all__ = ["ControllerInfo", "Repository", "StorageError", "StudyFull", "StudyInfo", "Taken", "redact", "sqlite_file", "upgrade"]
