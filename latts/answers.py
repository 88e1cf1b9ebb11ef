"""The answers latts gives (studies, frontier, best), as the JSON documents that both the CLI's
`--json` output and the HTTP API return. One builder per answer, so the two can never disagree.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from latts.optimizer.frontier import best_within, pareto_front
from latts.records import TrialSummary
from latts.storage import Repository, StudyInfo


class AnswerError(Exception):
    """A question latts cannot answer as asked; the message is one line."""


class UnknownStudy(AnswerError):
    def __init__(self, study: str) -> None:
        super().__init__(f"no study named {study!r} in this storage")
        self.study = study


class MissingScope(AnswerError):
    """Neither a study nor the full hardware/model/benchmark triple was given."""


def study_trials(repo: Repository, study: str) -> list[TrialSummary]:
    if repo.study(study) is None:
        raise UnknownStudy(study)
    return repo.trials(study)


def scope_trials(
    repo: Repository, study: str | None, hardware: str | None, model: str | None, benchmark: str | None
) -> list[TrialSummary]:
    """The trials a `best` question is about: one study's, or every study's for one hardware/model/benchmark."""
    if study is not None:
        return study_trials(repo, study)
    if hardware and model and benchmark:
        return repo.trials(hardware=hardware, model=model, benchmark=benchmark)
    raise MissingScope("give a study, or all of hardware, model and benchmark")


def studies_document(studies: Sequence[StudyInfo]) -> dict[str, Any]:
    return {"studies": [s.to_json() for s in studies]}


def frontier_document(study: str, trials: Sequence[TrialSummary], statistic: str) -> dict[str, Any]:
    return {"study": study, "statistic": statistic, "frontier": [t.to_json() for t in pareto_front(trials, statistic)]}


def best_document(trials: Sequence[TrialSummary], budget_s: float, statistic: str) -> dict[str, Any]:
    """`best` is None when no completed trial fits the budget."""
    chosen = best_within(trials, budget_s, statistic)
    return {"budget_s": budget_s, "statistic": statistic, "best": chosen.to_json() if chosen else None}
