"""latts' tables. Only latts.storage.repository reads and writes them.

The `latts_` prefix keeps them apart from Optuna's tables (`studies`, `trials`, ...)
in the same database. Types are portable between SQLite and PostgreSQL.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, get_args

from sqlalchemy import (
    JSON,
    CheckConstraint,
    DateTime,
    Dialect,
    ForeignKey,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from latts.core.records import LosslessVerdict, TrialState

NAME_LENGTH = 512


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
    type_annotation_map = {dict[str, Any]: JSON, list[dict[str, Any]]: JSON, datetime: UTCDateTime}


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
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Trial(Base):
    __tablename__ = "latts_trials"
    __table_args__ = (
        UniqueConstraint("study_id", "number", name="uq_latts_trials_study_number"),
        CheckConstraint(
            "state IN ({})".format(", ".join(f"'{s}'" for s in TrialState)),
            name="ck_latts_trials_state",
        ),
        CheckConstraint("accuracy IS NULL OR (accuracy >= 0 AND accuracy <= 1)", name="ck_latts_trials_accuracy"),
        CheckConstraint(
            "lossless_verdict IS NULL OR lossless_verdict IN ({})".format(", ".join(f"'{v}'" for v in get_args(LosslessVerdict))),
            name="ck_latts_trials_lossless_verdict",
        ),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    study_id: Mapped[int] = mapped_column(ForeignKey("latts_studies.id"))
    number: Mapped[int]
    config: Mapped[dict[str, Any]]
    state: Mapped[TrialState] = mapped_column(String(16))
    fail_reason: Mapped[str | None] = mapped_column(Text)
    accuracy: Mapped[float | None]
    accuracy_lo: Mapped[float | None]
    accuracy_hi: Mapped[float | None]
    latency_mean: Mapped[float | None]
    latency_p50: Mapped[float | None]
    latency_p90: Mapped[float | None]
    latency_p99: Mapped[float | None]
    n_problems: Mapped[int | None]
    engine_start_s: Mapped[float | None]
    warmup_s: Mapped[float | None]
    drafted_tokens: Mapped[int | None]
    accepted_tokens: Mapped[int | None]
    num_drafts: Mapped[int | None]
    # Speculative trials: their answer-shift test against a trial without speculation (NULL: none).
    lossless_verdict: Mapped[str | None] = mapped_column(String(16))
    lossless_p_value: Mapped[float | None]
    lossless_baseline: Mapped[int | None]  # the baseline's trial number in the same study
    vllm_cpu_fix: Mapped[str | None] = mapped_column(String(16))
    worker: Mapped[str | None] = mapped_column(Text)
    started_at: Mapped[datetime] = mapped_column(default=utcnow)
    finished_at: Mapped[datetime | None]


class ProblemResultRow(Base):
    __tablename__ = "latts_problem_results"
    __table_args__ = (UniqueConstraint("trial_id", "problem_index", name="uq_latts_problem_results_trial_index"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    trial_id: Mapped[int] = mapped_column(ForeignKey("latts_trials.id", ondelete="CASCADE"))
    problem_index: Mapped[int]
    problem_id: Mapped[str] = mapped_column(Text)
    reference: Mapped[str] = mapped_column(Text)
    # Each Branch as a dict: text, answer, n_tokens, token_logprobs (list), verifier_score.
    branches: Mapped[list[dict[str, Any]]]
    aggregated_answer: Mapped[str | None] = mapped_column(Text)
    correct: Mapped[bool]
    latency_s: Mapped[float]
