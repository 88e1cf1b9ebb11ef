"""The one module that reads and writes latts' tables.

Every method opens one short session and transaction, so several processes (and
Optuna, in the same database) can write side by side. Database failures surface
as StorageError with a one-line message that names the problem and the fix.
"""

from __future__ import annotations

import math
import sqlite3
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Engine, Select, create_engine, event, func, select, update
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, DBAPIError, IntegrityError, NoResultFound
from sqlalchemy.orm import Session

from latts.core import statistics
from latts.core.errors import first_line
from latts.core.records import (
    Branch,
    LatencyStats,
    Losslessness,
    ProblemResult,
    TrialResult,
    TrialState,
    TrialSummary,
    TTSConfig,
)
from latts.storage.models import Base, Hardware, ProblemResultRow, Study, Trial, utcnow

# Writers wait this long for each other (and for Optuna's writes to the same SQLite file).
SQLITE_BUSY_TIMEOUT_S = 60
POSTGRES_CONNECT_TIMEOUT_S = 10
CREATE_TABLES_LOCK_ID = int.from_bytes(b"latts")  # any fixed number; unlikely to clash with other apps
URL_HINT = "use sqlite:///FILE or postgresql+psycopg://USER@HOST:PORT/DB"


class StorageError(Exception):
    """A storage problem; the message is one line naming the problem and the fix."""


@dataclass(frozen=True)
class StudyInfo:
    name: str
    hardware: str
    model: str
    benchmark: str
    counts: dict[str, int]  # trials by state; every state is present, 0 when it has none
    created_at: datetime


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    # WAL lets readers run beside a writer; foreign keys make the problem rows' cascade real.
    cursor = dbapi_connection.cursor()
    deadline = time.monotonic() + SQLITE_BUSY_TIMEOUT_S
    while True:
        # Switching a fresh database to WAL answers "locked" at once, without SQLite's busy
        # handler, while another process holds its write lock (two writers opening it together).
        try:
            cursor.execute("PRAGMA journal_mode=WAL")
            break
        except sqlite3.OperationalError as err:
            if "locked" not in str(err) or time.monotonic() > deadline:
                raise
            time.sleep(0.05)
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def _create_engine(url: str) -> Engine:
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        # pysqlite's `timeout` is SQLite's busy timeout: a locked database makes writers wait, not fail.
        engine = create_engine(url, connect_args={"timeout": SQLITE_BUSY_TIMEOUT_S})
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    connect_args: dict[str, Any] = {}
    if parsed.get_driver_name() in ("psycopg", "psycopg2"):
        connect_args["connect_timeout"] = POSTGRES_CONNECT_TIMEOUT_S  # an unreachable host fails fast
    # pre_ping: a long-lived process (latts serve) survives a database restart.
    return create_engine(url, connect_args=connect_args, pool_pre_ping=True)


def _branch_to_json(branch: Branch) -> dict[str, Any]:
    # JSON has no inf/nan and PostgreSQL rejects them, so such logprobs go in as strings ("-inf");
    # float() reads them back on every backend.
    data = asdict(branch)
    data["token_logprobs"] = [x if math.isfinite(x) else repr(x) for x in branch.token_logprobs]
    return data


def _branch_from_json(data: dict[str, Any]) -> Branch:
    return Branch(**{**data, "token_logprobs": tuple(float(x) for x in data["token_logprobs"])})


def _summary(trial: Trial, study: str, hardware: str) -> TrialSummary:
    latency = None
    if trial.latency_mean is not None:
        latency = LatencyStats(trial.latency_mean, trial.latency_p50, trial.latency_p90, trial.latency_p99)  # type: ignore[arg-type]
    ci = (trial.accuracy_lo, trial.accuracy_hi) if trial.accuracy_lo is not None else None
    return TrialSummary(
        id=trial.id,
        study=study,
        number=trial.number,
        config=TTSConfig.from_dict(trial.config),
        state=TrialState(trial.state),
        hardware=hardware,
        fail_reason=trial.fail_reason,
        accuracy=trial.accuracy,
        accuracy_ci=ci,  # type: ignore[arg-type]
        latency_s=latency,
        n_problems=trial.n_problems,
        engine_start_s=trial.engine_start_s,
        warmup_s=trial.warmup_s,
        drafted_tokens=trial.drafted_tokens,
        accepted_tokens=trial.accepted_tokens,
        mean_acceptance_length=statistics.mean_acceptance_length(trial.num_drafts, trial.accepted_tokens),
        lossless=_losslessness(trial),
        vllm_cpu_fix=trial.vllm_cpu_fix,  # type: ignore[arg-type]
        worker=trial.worker,
        extra={
            "num_drafts": trial.num_drafts,
            "started_at": trial.started_at.isoformat(),
            "finished_at": trial.finished_at.isoformat() if trial.finished_at else None,
        },
    )


def _losslessness(trial: Trial) -> Losslessness | None:
    if trial.config.get("speculative_method") is None:
        return None
    if trial.lossless_verdict is None:
        return Losslessness("untested")
    return Losslessness(trial.lossless_verdict, trial.lossless_p_value, trial.lossless_baseline)  # type: ignore[arg-type]


def _summary_query() -> Select[tuple[Trial, str, str]]:
    return select(Trial, Study.name, Hardware.name).join(Study, Trial.study_id == Study.id).join(Hardware)


class Repository:
    def __init__(self, url: str):
        try:
            self.url = make_url(url).render_as_string(hide_password=True)
        except ArgumentError:
            raise StorageError(f"cannot parse storage URL {url!r}; {URL_HINT}") from None
        try:
            self._engine = _create_engine(url)
            self._create_tables()
        except (ArgumentError, ImportError) as err:  # unknown dialect or its driver is not installed
            raise StorageError(f"cannot open storage '{self.url}': {first_line(err)}; {URL_HINT}") from err
        except DBAPIError as err:
            fix = "create its folder" if self._engine.dialect.name == "sqlite" else "start the database"
            raise StorageError(
                f"cannot open storage '{self.url}': {first_line(err)}; {fix} or pass --storage URL"
            ) from err

    def _create_tables(self) -> None:
        # Check-then-create races when two processes open a fresh database at once, so it
        # runs under a lock: SQLite's write lock, or a PostgreSQL advisory lock (DDL is transactional there).
        with self._engine.begin() as conn:
            if conn.dialect.name == "sqlite":
                conn.exec_driver_sql("BEGIN IMMEDIATE")
            elif conn.dialect.name == "postgresql":
                conn.execute(select(func.pg_advisory_xact_lock(CREATE_TABLES_LOCK_ID)))
            Base.metadata.create_all(conn)

    def close(self) -> None:
        """Close pooled connections (tests drop their database afterwards)."""
        self._engine.dispose()

    @contextmanager
    def _transaction(self) -> Iterator[Session]:
        try:
            with Session(self._engine) as session, session.begin():
                yield session
        except IntegrityError:
            raise  # a constraint conflict: the calling method knows what it means
        except DBAPIError as err:
            raise StorageError(
                f"storage '{self.url}' failed: {first_line(err)}; "
                "check that the database is up and reachable and its latts_ tables intact"
            ) from err

    def _insert_missing(self, table: type[Hardware] | type[Study], name: str, **values: Any) -> None:
        """Insert the row called `name` unless it exists; losing an insert race to another process is fine."""
        try:
            with self._transaction() as s:
                if s.scalar(select(table.id).where(table.name == name)) is None:
                    s.add(table(name=name, **values))
        except IntegrityError:
            pass

    def ensure_hardware(self, name: str, detected: dict[str, Any]) -> None:
        """Register a hardware target; an existing one keeps what was detected first."""
        self._insert_missing(Hardware, name, detected=detected)

    def hardware(self, name: str) -> dict[str, Any] | None:
        """What was detected on a hardware target when it was first recorded."""
        with self._transaction() as s:
            return s.scalar(select(Hardware.detected).where(Hardware.name == name))

    def ensure_study(self, name: str, hardware: str, model: str, benchmark: str, spec: dict[str, Any]) -> None:
        """Create the study, or take the newest spec for an existing one (a resume may change budgets).

        Whether the new spec may resume the study (the same measurements) is the caller's check.
        """
        with self._transaction() as s:
            hardware_id = s.scalar(select(Hardware.id).where(Hardware.name == hardware))
        if hardware_id is None:
            raise StorageError(f"hardware '{hardware}' is not registered; call ensure_hardware('{hardware}', ...) first")
        self._insert_missing(Study, name, hardware_id=hardware_id, model=model, benchmark=benchmark, spec=spec)
        info = self.study(name)
        assert info is not None  # it was inserted above, and nothing deletes studies
        if (info.hardware, info.model, info.benchmark) != (hardware, model, benchmark):
            raise StorageError(
                f"study '{name}' already exists for model '{info.model}', benchmark '{info.benchmark}' "
                f"on hardware '{info.hardware}'; pick another `study:` name"
            )
        with self._transaction() as s:
            s.execute(update(Study).where(Study.name == name).values(spec=spec))

    def study_spec(self, name: str) -> dict[str, Any] | None:
        with self._transaction() as s:
            return s.scalar(select(Study.spec).where(Study.name == name))

    def start_trial(self, study: str, number: int, config: TTSConfig, worker: str | None = None) -> int:
        try:
            with self._transaction() as s:
                study_id = s.scalar(select(Study.id).where(Study.name == study))
                if study_id is None:
                    raise StorageError(f"study '{study}' does not exist in '{self.url}'; call ensure_study first")
                trial = Trial(study_id=study_id, number=number, config=config.to_dict(), state=TrialState.RUNNING, worker=worker)
                s.add(trial)
                s.flush()
                return trial.id
        except IntegrityError:
            raise StorageError(
                f"trial {number} of study '{study}' is already stored; its Optuna study was probably "
                "deleted and recreated, so pick another `study:` name"
            ) from None

    def _running_trial(self, s: Session, trial_id: int) -> Trial:
        # FOR UPDATE: two processes cannot both finish one trial (SQLite serialises writers anyway).
        trial = s.scalar(select(Trial).where(Trial.id == trial_id).with_for_update())
        if trial is None:
            raise StorageError(f"trial id {trial_id} does not exist in '{self.url}'; use the id start_trial returned")
        if trial.state != TrialState.RUNNING:
            raise StorageError(f"trial id {trial_id} is already {trial.state}; only RUNNING trials can be finished or failed")
        return trial

    def finish_trial(self, trial_id: int, result: TrialResult) -> TrialSummary:
        """Write every problem row and the trial's aggregates in one transaction, or nothing."""
        problems = result.problems
        if not problems:
            raise StorageError(f"trial id {trial_id} has no problem results; record it with fail_trial instead")
        n_correct = sum(p.correct for p in problems)
        accuracy_lo, accuracy_hi = statistics.wilson_interval(n_correct, len(problems))
        latency = statistics.latency_stats([p.latency_s for p in problems])
        try:
            with self._transaction() as s:
                trial = self._running_trial(s, trial_id)
                s.add_all(
                    ProblemResultRow(
                        trial_id=trial_id,
                        problem_index=p.index,
                        problem_id=p.problem_id,
                        reference=p.reference,
                        branches=[_branch_to_json(b) for b in p.branches],
                        aggregated_answer=p.aggregated_answer,
                        correct=p.correct,
                        latency_s=p.latency_s,
                    )
                    for p in problems
                )
                trial.state = TrialState.COMPLETE
                trial.accuracy = n_correct / len(problems)
                trial.accuracy_lo, trial.accuracy_hi = accuracy_lo, accuracy_hi
                trial.latency_mean, trial.latency_p50 = latency.mean, latency.p50
                trial.latency_p90, trial.latency_p99 = latency.p90, latency.p99
                trial.n_problems = len(problems)
                trial.engine_start_s, trial.warmup_s = result.engine_start_s, result.warmup_s
                trial.drafted_tokens = result.drafted_tokens
                trial.accepted_tokens = result.accepted_tokens
                trial.num_drafts = result.num_drafts
                trial.vllm_cpu_fix = result.vllm_cpu_fix
                trial.worker = result.worker
                trial.finished_at = utcnow()
                s.flush()
                return self._trial(s, trial_id)
        except IntegrityError as err:
            raise StorageError(
                f"cannot finish trial id {trial_id}: {first_line(err)}; each problem index must appear once"
            ) from None

    def fail_trial(self, trial_id: int, reason: str) -> TrialSummary:
        """Mark a trial FAILED with its reason; its measurements stay empty, never made up."""
        with self._transaction() as s:
            trial = self._running_trial(s, trial_id)
            trial.state = TrialState.FAILED
            trial.fail_reason = reason
            trial.finished_at = utcnow()
        return self.trial(trial_id)

    def record_losslessness(self, trial_id: int, verdict: Losslessness) -> TrialSummary:
        """Store a completed speculative trial's answer-shift test against its baseline."""
        with self._transaction() as s:
            trial = s.scalar(select(Trial).where(Trial.id == trial_id).with_for_update())
            if trial is None or trial.state != TrialState.COMPLETE or trial.config.get("speculative_method") is None:
                raise StorageError(f"trial id {trial_id} is not a completed speculative trial; only those are tested")
            trial.lossless_verdict = verdict.verdict
            trial.lossless_p_value = verdict.p_value
            trial.lossless_baseline = verdict.baseline_trial
            return self._trial(s, trial_id)

    def trial(self, trial_id: int) -> TrialSummary:
        with self._transaction() as s:
            return self._trial(s, trial_id)

    def _trial(self, s: Session, trial_id: int) -> TrialSummary:
        try:
            return _summary(*s.execute(_summary_query().where(Trial.id == trial_id)).one())
        except NoResultFound:
            raise StorageError(f"trial id {trial_id} does not exist in '{self.url}'; use an id that trials() lists") from None

    def running_trials(self, study: str) -> list[TrialSummary]:
        return self.trials(study, states=[TrialState.RUNNING])

    def trials(
        self,
        study: str | None = None,
        states: Iterable[TrialState] | None = None,
        hardware: str | None = None,
        model: str | None = None,
        benchmark: str | None = None,
    ) -> list[TrialSummary]:
        """Trials ordered by study name then trial number; every given filter must hold."""
        query = _summary_query().order_by(Study.name, Trial.number)
        if study is not None:
            query = query.where(Study.name == study)
        if states is not None:
            query = query.where(Trial.state.in_(list(states)))
        if hardware is not None:
            query = query.where(Hardware.name == hardware)
        if model is not None:
            query = query.where(Study.model == model)
        if benchmark is not None:
            query = query.where(Study.benchmark == benchmark)
        with self._transaction() as s:
            return [_summary(*row) for row in s.execute(query)]

    def problem_results(self, trial_id: int) -> list[ProblemResult]:
        query = select(ProblemResultRow).where(ProblemResultRow.trial_id == trial_id)
        with self._transaction() as s:
            return [
                ProblemResult(
                    index=row.problem_index,
                    problem_id=row.problem_id,
                    reference=row.reference,
                    branches=tuple(_branch_from_json(b) for b in row.branches),
                    aggregated_answer=row.aggregated_answer,
                    correct=row.correct,
                    latency_s=row.latency_s,
                )
                for row in s.scalars(query.order_by(ProblemResultRow.problem_index))
            ]

    def studies(self) -> list[StudyInfo]:
        return self._studies(None)

    def study(self, name: str) -> StudyInfo | None:
        found = self._studies(name)
        return found[0] if found else None

    def _studies(self, name: str | None) -> list[StudyInfo]:
        rows = select(Study.id, Study.name, Hardware.name, Study.model, Study.benchmark, Study.created_at).join(Hardware)
        counts = select(Trial.study_id, Trial.state, func.count()).join(Study).group_by(Trial.study_id, Trial.state)
        if name is not None:
            rows, counts = rows.where(Study.name == name), counts.where(Study.name == name)
        with self._transaction() as s:
            by_study: dict[int, dict[str, int]] = {}
            for study_id, state, count in s.execute(counts):
                by_study.setdefault(study_id, {})[state] = count
            return [
                StudyInfo(
                    name=row[1],
                    hardware=row[2],
                    model=row[3],
                    benchmark=row[4],
                    counts={state.value: by_study.get(row[0], {}).get(state, 0) for state in TrialState},
                    created_at=row[5],
                )
                for row in s.execute(rows.order_by(Study.name))
            ]
