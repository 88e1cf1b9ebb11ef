"""SQL storage of latts' hardware targets, studies, trials and per-problem results."""

from latts.storage.repository import Repository, StorageError, StudyInfo

__all__ = ["Repository", "StorageError", "StudyInfo"]
