"""The answers latts gives (studies, frontier, best) as typed documents: the CLI's `--json` output
and the HTTP API's response models. One builder per answer, so the two can never disagree.
"""

from __future__ import annotations

from collections.abc import Sequence

from pydantic import BaseModel, Field

from latts.core.records import BudgetAnswer, LatencyStatistic, TieReason, TrialSummary
from latts.optimizer.frontier import best_within, pareto_front
from latts.optimizer.racing import tie_reason
from latts.storage import Repository, StudyInfo


class UnknownStudy(Exception):
    def __init__(self, study: str) -> None:
        super().__init__(f"no study named {study!r} in this storage")
        self.study = study


class MissingScope(Exception):
    """Neither a study nor the full hardware/model/benchmark triple was given."""


class StudiesDocument(BaseModel):
    """Every study with its hardware, model, benchmark and trial counts by state."""

    studies: list[StudyInfo]


class FrontierDocument(BaseModel):
    """A study's Pareto-optimal trials (accuracy up, latency down), fastest first."""

    study: str
    statistic: LatencyStatistic
    include_lossy: bool  # whether speculative trials found lossy may be on it
    frontier: list[TrialSummary]


class BestDocument(BaseModel):
    """The most accurate completed trial within the budget; `best` is null when none fits."""

    budget_s: float = Field(gt=0)
    statistic: LatencyStatistic
    include_lossy: bool
    best: TrialSummary | None
    # For one of the study's own budgets, after its finalists raced: the choice's margin, and why it
    # ties with the runner-up where it does (as `tune`'s table says it).
    raced: BudgetAnswer | None = None
    tie: TieReason | None = None


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


def studies_document(studies: Sequence[StudyInfo]) -> StudiesDocument:
    return StudiesDocument(studies=list(studies))


def frontier_document(
    study: str, trials: Sequence[TrialSummary], statistic: LatencyStatistic, include_lossy: bool = False
) -> FrontierDocument:
    front = pareto_front(trials, statistic, include_lossy)
    return FrontierDocument(study=study, statistic=statistic, include_lossy=include_lossy, frontier=front)


def best_document(
    trials: Sequence[TrialSummary],
    budget_s: float,
    statistic: LatencyStatistic,
    include_lossy: bool = False,
    answers: Sequence[BudgetAnswer] = (),
) -> BestDocument:
    raced = next((a for a in answers if a.budget_s == budget_s), None)
    best = answer_for(trials, budget_s, statistic, include_lossy, answers)
    tie = tie_reason(raced, {t.number: t for t in trials}) if raced else None
    return BestDocument(budget_s=budget_s, statistic=statistic, include_lossy=include_lossy, best=best, raced=raced, tie=tie)


def answer_for(
    trials: Sequence[TrialSummary],
    budget_s: float,
    statistic: LatencyStatistic,
    include_lossy: bool = False,
    answers: Sequence[BudgetAnswer] = (),
) -> TrialSummary | None:
    """The config that answers the budget: for one of the study's own budgets after its race, the
    raced answer, as `tune` printed it (its finalists' latencies pool more timings than any other
    config's); otherwise the most accurate config within it."""
    raced = next((a for a in answers if a.budget_s == budget_s), None)
    if raced is not None and not include_lossy:
        return next((t for t in trials if t.number == raced.trial), None)
    return best_within(trials, budget_s, statistic, include_lossy)


def study_answers(repo: Repository, study: str | None, statistic: LatencyStatistic) -> list[BudgetAnswer]:
    """A study's raced budget answers, when the question is about its own latency statistic."""
    if study is None:
        return []
    spec = repo.study_spec(study) or {}
    return repo.budget_answers(study) if spec.get("latency_statistic", "mean") == statistic else []
