"""latts' tables. latts.storage.repository reads and writes the study tables, latts.storage.pool the
sample pool's; nothing else touches them.

The `latts_` prefix keeps them apart from Optuna's tables (`studies`, `trials`, ...)
in the same database. Types are portable between SQLite and PostgreSQL. A change here
needs a migration revision too (latts/storage/migrations/env.py says how).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, get_args

from sqlalchemy import (
    JSON,
    BigInteger,
    CheckConstraint,
    DateTime,
    Dialect,
    ForeignKey,
    Index,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from latts.core.records import AccuracySource, LosslessVerdict, MarginVerdict, TrialState

NAME_LENGTH = 512
KEY_LENGTH = 2048  # canonical JSON of a generation or pool key; model paths make them long


class UTCDateTime(TypeDecorator[datetime]):
    """Stored as naive UTC (SQLite keeps no zone), read back as aware UTC on every backend."""

    impl = DateTime
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        return value.astimezone(UTC).replace(tzinfo=None) if value is not None else None

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        return value.replace(tzinfo=UTC) if value is not None else None


def utcnow() -> datetime:
    return datetime.now(UTC)


class Base(DeclarativeBase):
    # Plain JSON (not JSONB): PostgreSQL keeps the text as written, so floats read back bit-exact.
    type_annotation_map = {dict[str, Any]: JSON, list[dict[str, Any]]: JSON, list[Any]: JSON, datetime: UTCDateTime}


class Hardware(Base):
    __tablename__ = "latts_hardware"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(NAME_LENGTH), unique=True)
    detected: Mapped[dict[str, Any]]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Study(Base):
    __tablename__ = "latts_studies"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(NAME_LENGTH), unique=True)
    hardware_id: Mapped[int] = mapped_column(ForeignKey("latts_hardware.id"), index=True)
    model: Mapped[str] = mapped_column(Text)
    benchmark: Mapped[str] = mapped_column(Text)
    spec: Mapped[dict[str, Any]]
    # The budgets in seconds; relative ones ("1.5x") once the reference config is measured.
    budgets_s: Mapped[list[Any] | None]
    reference_s: Mapped[float | None]  # the latency relative budgets multiply, as first measured
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Controller(Base):
    """A `latts tune` (or `confirm`) process driving a study: several may share one, each holding a lease
    on the generations it runs. Its heartbeat renews the lease; one whose heartbeat stopped (or, on the
    same host, whose process is gone) is dead, and its running generations are re-run by the next."""

    __tablename__ = "latts_controllers"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(NAME_LENGTH), unique=True)  # host:pid:random
    study_id: Mapped[int] = mapped_column(ForeignKey("latts_studies.id"), index=True)
    host: Mapped[str] = mapped_column(String(NAME_LENGTH))
    pid: Mapped[int]
    started_at: Mapped[datetime] = mapped_column(default=utcnow)
    heartbeat_at: Mapped[datetime] = mapped_column(default=utcnow)
    stopped_at: Mapped[datetime | None]  # ended, cleanly or found dead


def _one_of(column: str, values: tuple[str, ...], nullable: bool = False) -> str:
    allowed = "{} IN ({})".format(column, ", ".join(f"'{v}'" for v in values))
    return f"{column} IS NULL OR {allowed}" if nullable else allowed


class Generation(Base):
    """One generation of a study: branches generated (and timed) for the configs that share it."""

    __tablename__ = "latts_generations"
    __table_args__ = (
        CheckConstraint(_one_of("state", tuple(TrialState)), name="ck_latts_generations_state"),
        CheckConstraint(
            _one_of("lossless_verdict", get_args(LosslessVerdict), nullable=True), name="ck_latts_generations_lossless"
        ),
        # A generation is measured once per study; a failed one may be measured again.
        Index(
            "uq_latts_generations_study_key",
            "study_id",
            "key",
            unique=True,
            sqlite_where=text("state != 'FAILED'"),
            postgresql_where=text("state != 'FAILED'"),
        ),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    study_id: Mapped[int] = mapped_column(ForeignKey("latts_studies.id"), index=True)
    key: Mapped[str] = mapped_column(String(KEY_LENGTH))  # records.Generation.key()
    generation: Mapped[dict[str, Any]]
    state: Mapped[TrialState] = mapped_column(String(16))
    fail_reason: Mapped[str | None] = mapped_column(Text)
    # Who runs it; NULL for generations stored before controllers held leases.
    controller_id: Mapped[int | None] = mapped_column(ForeignKey("latts_controllers.id", name="fk_latts_generations_controller_id"))
    worker: Mapped[str | None] = mapped_column(Text)
    engine_start_s: Mapped[float | None]
    engine_starts: Mapped[int | None]
    warmup_s: Mapped[float | None]
    generated_tokens: Mapped[int | None]
    drafted_tokens: Mapped[int | None]
    accepted_tokens: Mapped[int | None]
    num_drafts: Mapped[int | None]
    vllm_cpu_fix: Mapped[str | None] = mapped_column(String(16))
    # Speculative generations: their answer-shift test against the sample pool (NULL: not yet).
    lossless_verdict: Mapped[str | None] = mapped_column(String(16))
    lossless_p_value: Mapped[float | None]
    lossless_baseline: Mapped[int | None]  # number of the study's trial without speculation that filled the pool
    started_at: Mapped[datetime] = mapped_column(default=utcnow)
    finished_at: Mapped[datetime | None]


class Trial(Base):
    """One config: a generation and an aggregator, with its accuracy and latency."""

    __tablename__ = "latts_trials"
    __table_args__ = (
        UniqueConstraint("study_id", "number", name="uq_latts_trials_study_number"),
        CheckConstraint(_one_of("state", tuple(TrialState)), name="ck_latts_trials_state"),
        CheckConstraint(_one_of("accuracy_source", get_args(AccuracySource), nullable=True), name="ck_latts_trials_source"),
        CheckConstraint("accuracy IS NULL OR (accuracy >= 0 AND accuracy <= 1)", name="ck_latts_trials_accuracy"),
        # A config is measured once per study, however many controllers share it; a failed one may be again.
        Index(
            "uq_latts_trials_study_key",
            "study_id",
            "key",
            unique=True,
            sqlite_where=text("state != 'FAILED'"),
            postgresql_where=text("state != 'FAILED'"),
        ),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    study_id: Mapped[int] = mapped_column(ForeignKey("latts_studies.id"))
    number: Mapped[int]  # the Optuna trial number
    key: Mapped[str] = mapped_column(String(KEY_LENGTH))  # records.TTSConfig.key()
    config: Mapped[dict[str, Any]]
    state: Mapped[TrialState] = mapped_column(String(16))
    fail_reason: Mapped[str | None] = mapped_column(Text)
    generation_id: Mapped[int | None] = mapped_column(ForeignKey("latts_generations.id"), index=True)
    accuracy: Mapped[float | None]
    accuracy_lo: Mapped[float | None]
    accuracy_hi: Mapped[float | None]
    accuracy_source: Mapped[str | None] = mapped_column(String(16))
    n_problems: Mapped[int | None]  # behind the accuracy
    latency_mean: Mapped[float | None]
    latency_p50: Mapped[float | None]
    latency_p90: Mapped[float | None]
    latency_p99: Mapped[float | None]
    latency_ci: Mapped[dict[str, Any] | None]  # statistic -> [lo, hi], 95%; null ends are unbounded
    n_latency_problems: Mapped[int | None]
    started_at: Mapped[datetime] = mapped_column(default=utcnow)
    finished_at: Mapped[datetime | None]


class TimedProblemRow(Base):
    """A problem whose latency a generation measured, with its branches."""

    __tablename__ = "latts_timed_problems"
    __table_args__ = (UniqueConstraint("generation_id", "round", "problem_index", name="uq_latts_timed_problems_index"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    generation_id: Mapped[int] = mapped_column(ForeignKey("latts_generations.id", ondelete="CASCADE"))
    round: Mapped[int] = mapped_column(default=0)  # 0 to latency_rounds - 1: the generation itself; later: a race
    problem_index: Mapped[int]
    # Each Branch as a dict: text, answer, n_tokens, token_logprobs (list), verifier_score.
    branches: Mapped[list[dict[str, Any]]]
    latency_s: Mapped[float]
    aggregation_s: Mapped[dict[str, Any]]  # aggregator -> seconds
    answers: Mapped[dict[str, Any]]  # aggregator -> its answer on the worker


class BudgetAnswer(Base):
    """A budget's answer after racing its finalists: the choice, and its margin."""

    __tablename__ = "latts_budget_answers"
    __table_args__ = (
        UniqueConstraint("study_id", "budget_s", name="uq_latts_budget_answers_budget"),
        CheckConstraint(_one_of("verdict", get_args(MarginVerdict)), name="ck_latts_budget_answers_verdict"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    study_id: Mapped[int] = mapped_column(ForeignKey("latts_studies.id"), index=True)
    budget_s: Mapped[float]
    trial_id: Mapped[int | None] = mapped_column(ForeignKey("latts_trials.id"))  # NULL: nothing fits
    runner_up_id: Mapped[int | None] = mapped_column(ForeignKey("latts_trials.id"))
    fits_confidently: Mapped[bool]  # the latency's 95% interval lies under the budget's range
    margin: Mapped[float | None]  # accuracy of the choice minus the runner-up's, paired over problems
    margin_lo: Mapped[float | None]
    margin_hi: Mapped[float | None]
    # Where the budget may lie: a relative one over its reference's fastest to slowest timing round.
    budget_lo_s: Mapped[float | None]
    budget_hi_s: Mapped[float | None]
    edge: Mapped[list[Any] | None]  # trial numbers that answer the budget elsewhere in its range
    verdict: Mapped[str] = mapped_column(String(16))
    rounds: Mapped[int]
    finalists: Mapped[list[Any]]  # trial numbers raced for this budget
    raced_at: Mapped[datetime] = mapped_column(default=utcnow)


class PoolSample(Base):
    """One branch in the sample pool: shared by every trial and study with the same model, sampling and prompt."""

    __tablename__ = "latts_pool_samples"
    __table_args__ = (
        # The same seed and branch twice would be the same sample twice: the pool takes it once.
        UniqueConstraint("pool", "prompt_sha", "seed", "branch", name="uq_latts_pool_samples_draw"),
        Index("ix_latts_pool_samples_prompt", "pool", "prompt_sha"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    pool: Mapped[str] = mapped_column(String(KEY_LENGTH))  # model, dtype and sampling (storage.pool.PoolKey)
    prompt_sha: Mapped[str] = mapped_column(String(64))
    seed: Mapped[int] = mapped_column(BigInteger)
    branch: Mapped[int]  # position among the samples of that seeded request
    text: Mapped[str] = mapped_column(Text)
    answer: Mapped[str | None] = mapped_column(Text)
    n_tokens: Mapped[int]
    token_logprobs: Mapped[list[Any]]
    generation_id: Mapped[int | None] = mapped_column(ForeignKey("latts_generations.id", ondelete="SET NULL"))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class PoolScore(Base):
    """A verifier's score of a pool sample."""

    __tablename__ = "latts_pool_scores"
    __table_args__ = (UniqueConstraint("sample_id", "verifier", name="uq_latts_pool_scores_sample_verifier"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    sample_id: Mapped[int] = mapped_column(ForeignKey("latts_pool_samples.id", ondelete="CASCADE"))
    verifier: Mapped[str] = mapped_column(String(KEY_LENGTH))
    score: Mapped[float]
