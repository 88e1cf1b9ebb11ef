"""Storage: latts' SQL tables beside Optuna's, on SQLite or PostgreSQL.

`repository.Repository` is the one class that reads and writes them; the controller writes
through it and every question (frontier, best, export, API, plots) reads through it.
"""

from latts.storage.repository import ControllerInfo, Repository, StorageError, StudyFull, StudyInfo, Taken

__all__ = ["ControllerInfo", "Repository", "StorageError", "StudyFull", "StudyInfo", "Taken"]
