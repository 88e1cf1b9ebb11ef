"""Storage: latts' SQL tables beside Optuna's, on SQLite or PostgreSQL.

`repository.Repository` is the one class that reads and writes them; the controller writes
through it and every question (frontier, best, export, API, plots) reads through it. Opening
storage checks its schema version (latts.storage.migrations); `upgrade` migrates it.
"""

from latts.storage.repository import Repository, StorageError, StudyInfo, upgrade

__all__ = ["Repository", "StorageError", "StudyInfo", "upgrade"]
