"""The one module that reads and writes latts' tables.

Every method opens one short session and transaction, so several processes (and
Optuna, in the same database) can write side by side. Database failures surface
as StorageError with a one-line message that names the problem and the fix, and
never with the URL's password. Opening checks the schema version; the schema
itself changes only through the migrations in latts.storage.migrations.
"""

from __future__ import annotations

import math
import sqlite3
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import Connection, Engine, Select, column, create_engine, delete, event, func, inspect, literal, select, table, update
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, DBAPIError, IntegrityError, NoResultFound
from sqlalchemy.orm import Session, aliased

from latts.core import statistics
from latts.core.errors import first_line, redact
from latts.core.records import (
    Branch,
    BudgetAnswer,
    Generation,
    GenerationResult,
    GenerationSummary,
    LatencyStats,
    Losslessness,
    PoolDraw,
    PooledSample,
    TimedProblem,
    TrialNumbers,
    TrialState,
    TrialSummary,
    TTSConfig,
)
from latts.storage import migrations
from latts.storage.models import Base, Hardware, PoolSample, PoolScore, Study, TimedProblemRow, Trial, utcnow
from latts.storage.models import BudgetAnswer as BudgetAnswerRow
from latts.storage.models import Controller as ControllerRow
from latts.storage.models import Generation as GenerationRow

if TYPE_CHECKING:
    from alembic.config import Config
    from alembic.script import ScriptDirectory

# Writers wait this long for each other (and for Optuna's writes to the same SQLite file).
SQLITE_BUSY_TIMEOUT_S = 60
POSTGRES_CONNECT_TIMEOUT_S = 10
SCHEMA_LOCK_ID = int.from_bytes(b"latts")  # any fixed number; unlikely to clash with other apps
# What `upgrade` reports a database held before it: tables an earlier latts wrote without a version, or none.
UNVERSIONED = "unversioned"
EMPTY = "empty"
URL_HINT = "use sqlite:///FILE or postgresql+psycopg://USER@HOST:PORT/DB"
_VERSION = table(migrations.VERSION_TABLE, column("version_num"))  # Alembic writes it; latts only reads it


class StorageError(Exception):
    """A storage problem; the message is one line naming the problem and the fix."""


class Taken(StorageError):
    """The generation or config is already running or measured in this study (another controller's, maybe)."""


class StudyFull(StorageError):
    """The study holds as many running and measured configs as it asked for (its controllers share the count)."""


@dataclass(frozen=True)
class ControllerInfo:
    id: int
    name: str
    host: str
    pid: int
    heartbeat_at: datetime


@dataclass(frozen=True)
class StudyInfo:
    name: str
    hardware: str
    model: str
    benchmark: str
    counts: dict[str, int]  # trials by state; every state is present, 0 when it has none
    created_at: datetime
    budgets_s: list[float] | None = None  # in seconds; None while relative ones await their reference
    reference_s: float | None = None  # the reference config's latency that relative budgets multiply


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


def _shown_url(url: str) -> str:
    """The storage URL as messages show it: parsed, password hidden."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        raise StorageError(f"cannot parse storage URL {redact(url)!r}; {URL_HINT}") from None


def _said(error: BaseException, url: str) -> str:
    """An error's first line, with the storage password hidden should the driver quote it."""
    return redact(first_line(error), url)


@contextmanager
def _opening(url: str) -> Iterator[str]:
    """The URL to show; failures to reach the database inside, as one line naming the fix."""
    shown = _shown_url(url)
    try:
        yield shown
    except (ArgumentError, ImportError) as err:  # unknown dialect or its driver is not installed
        raise StorageError(f"cannot open storage '{shown}': {_said(err, url)}; {URL_HINT}") from err
    except DBAPIError as err:
        fix = "create its folder" if make_url(url).get_backend_name() == "sqlite" else "start the database"
        raise StorageError(f"cannot open storage '{shown}': {_said(err, url)}; {fix} or pass --storage URL") from err


def _stored_version(conn: Connection) -> str | None:
    """The latts schema revision the database is stamped with; None when it has no version row."""
    if not inspect(conn).has_table(migrations.VERSION_TABLE):
        return None
    return conn.scalar(select(_VERSION.c.version_num))


def _has_latts_tables(conn: Connection) -> bool:
    return any(name.startswith("latts_") and name != migrations.VERSION_TABLE for name in inspect(conn).get_table_names())


def _lock_schema(conn: Connection) -> None:
    # Check-then-create races when two processes open a fresh database at once, so schema changes
    # run under a lock: SQLite's write lock, or a PostgreSQL advisory lock (DDL is transactional there).
    if conn.dialect.name == "sqlite":
        conn.exec_driver_sql("BEGIN IMMEDIATE")
    elif conn.dialect.name == "postgresql":
        conn.execute(select(func.pg_advisory_xact_lock(SCHEMA_LOCK_ID)))


def _migrations(conn: Connection) -> tuple[Config, ScriptDirectory]:
    """Alembic pointed at the package's migrations, running on `conn` (inside its transaction and lock)."""
    from alembic.config import Config
    from alembic.script import ScriptDirectory

    config = Config()
    config.set_main_option("script_location", str(migrations.LOCATION).replace("%", "%%"))
    config.attributes["connection"] = conn
    return config, ScriptDirectory.from_config(config)


def _revisions(scripts: ScriptDirectory) -> set[str]:
    return {script.revision for script in scripts.walk_revisions()}


def _schema_error(shown_url: str, version: str | None, scripts: ScriptDirectory) -> StorageError:
    """Why this latts cannot use a database stamped `version` (None: unversioned), and the fix."""
    if version is not None and version not in _revisions(scripts):
        return StorageError(
            f"storage '{shown_url}' holds latts schema {version}, which this latts does not know "
            f"(it knows up to {migrations.HEAD}): a newer latts wrote it; upgrade latts to use it"
        )
    return StorageError(
        f"storage '{shown_url}' holds latts schema {version or UNVERSIONED}, this latts needs {migrations.HEAD}; "
        f"run `latts upgrade --storage {shown_url}` (back it up first)"
    )


def _open_schema(engine: Engine, shown_url: str) -> None:
    """Check the database's schema version; a database without latts' tables gets them, stamped at HEAD."""
    with engine.connect() as conn:
        if _stored_version(conn) == migrations.HEAD:
            return  # the usual case, on every command: a look at the version row, no Alembic
    with engine.begin() as conn:
        _lock_schema(conn)
        version = _stored_version(conn)  # again: another process may have created the tables meanwhile
        if version == migrations.HEAD:
            return
        config, scripts = _migrations(conn)
        if version is not None or _has_latts_tables(conn):
            raise _schema_error(shown_url, version, scripts)
        from alembic import command

        command.upgrade(config, "head")


def upgrade(url: str) -> tuple[str, str]:
    """Bring latts' tables at `url` to this latts' schema (`latts upgrade`): the revisions from and to.

    From is UNVERSIONED for tables an earlier latts wrote without a version (the baseline), EMPTY for
    a database without latts' tables (they are created), HEAD when there was nothing to do.
    """
    from alembic import command

    with _opening(url) as shown:
        engine = _create_engine(url)
        try:
            with engine.begin() as conn:
                _lock_schema(conn)
                version = _stored_version(conn)
                if version == migrations.HEAD:
                    return version, version
                config, scripts = _migrations(conn)
                if version is not None:
                    if version not in _revisions(scripts):
                        raise _schema_error(shown, version, scripts)
                    before = version
                elif _has_latts_tables(conn):
                    before = UNVERSIONED
                    command.stamp(config, scripts.get_base())  # an earlier latts wrote the baseline's tables
                else:
                    before = EMPTY
                command.upgrade(config, "head")
                return before, migrations.HEAD
        finally:
            engine.dispose()


def _branch_to_json(branch: Branch) -> dict[str, Any]:
    # JSON has no inf/nan and PostgreSQL rejects them, so such logprobs go in as strings ("-inf");
    # float() reads them back on every backend.
    data = asdict(branch)
    data["token_logprobs"] = [x if math.isfinite(x) else repr(x) for x in branch.token_logprobs]
    return data


def _branch_from_json(data: dict[str, Any]) -> Branch:
    return Branch(**{**data, "token_logprobs": tuple(float(x) for x in data["token_logprobs"])})


def _losslessness(generation: GenerationRow | None) -> Losslessness | None:
    if generation is None or generation.generation.get("speculative_method") is None:
        return None
    if generation.lossless_verdict is None:
        return Losslessness("untested")
    return Losslessness(generation.lossless_verdict, generation.lossless_p_value, generation.lossless_baseline)  # type: ignore[arg-type]


def _summary(trial: Trial, generation: GenerationRow | None, study: str, hardware: str) -> TrialSummary:
    latency = None
    if trial.latency_mean is not None:
        latency = LatencyStats(trial.latency_mean, trial.latency_p50, trial.latency_p90, trial.latency_p99)  # type: ignore[arg-type]
    ci = (trial.accuracy_lo, trial.accuracy_hi) if trial.accuracy_lo is not None else None
    g = generation
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
        accuracy_source=trial.accuracy_source,  # type: ignore[arg-type]
        n_problems=trial.n_problems,
        latency_s=latency,
        latency_ci={name: tuple(interval) for name, interval in trial.latency_ci.items()} if trial.latency_ci else None,
        n_latency_problems=trial.n_latency_problems,
        generation_id=trial.generation_id,
        generated_tokens=g.generated_tokens if g else None,
        engine_start_s=g.engine_start_s if g else None,
        warmup_s=g.warmup_s if g else None,
        drafted_tokens=g.drafted_tokens if g else None,
        accepted_tokens=g.accepted_tokens if g else None,
        mean_acceptance_length=statistics.mean_acceptance_length(g.num_drafts, g.accepted_tokens) if g else None,
        lossless=_losslessness(g),
        vllm_cpu_fix=g.vllm_cpu_fix if g else None,  # type: ignore[arg-type]
        worker=g.worker if g else None,
        extra={
            "num_drafts": g.num_drafts if g else None,
            "started_at": trial.started_at.isoformat(),
            "finished_at": trial.finished_at.isoformat() if trial.finished_at else None,
        },
    )


def _generation_summary(row: GenerationRow) -> GenerationSummary:
    return GenerationSummary(
        id=row.id,
        generation=Generation(**row.generation),
        state=TrialState(row.state),
        fail_reason=row.fail_reason,
        lossless=_losslessness(row),
        generated_tokens=row.generated_tokens,
        engine_start_s=row.engine_start_s,
        engine_starts=row.engine_starts,
    )


def _summary_query() -> Select[tuple[Trial, GenerationRow, str, str]]:
    return (
        select(Trial, GenerationRow, Study.name, Hardware.name)
        .join(Study, Trial.study_id == Study.id)
        .join(Hardware)
        .outerjoin(GenerationRow, Trial.generation_id == GenerationRow.id)
    )


def _insert_ignoring_duplicates(s: Session, table: type[Base], rows: list[dict[str, Any]]) -> None:
    """INSERT ... ON CONFLICT DO NOTHING: rows that break a unique constraint are left out."""
    if not rows:
        return
    insert = sqlite_insert if s.get_bind().dialect.name == "sqlite" else postgresql_insert
    s.execute(insert(table).on_conflict_do_nothing(), rows)


def sqlite_file(url: str) -> Path | None:
    """The file a SQLite URL names, as given (relative paths are to the working directory); None for an
    in-memory database or a database server."""
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite" or parsed.database in (None, "", ":memory:"):
        return None
    return Path(parsed.database)


def _missing_sqlite_file(url: str) -> Path | None:
    """The file of a SQLite URL that does not exist yet; None for any other URL (a `uri=true` one
    names a URI, not a path)."""
    file = sqlite_file(url)
    if file is None or "uri" in make_url(url).query or file.exists():
        return None
    return file


class Repository:
    def __init__(self, url: str, create: bool = True):
        """Open latts' storage at `url`. With `create` off (commands that only read a study), a
        SQLite file that does not exist is refused rather than created empty."""
        with _opening(url) as shown:
            self.url = shown
            missing = None if create else _missing_sqlite_file(url)
            if missing is not None:
                raise StorageError(f"no database at {missing}: `latts tune SPEC --storage {shown}` creates one; or pass --storage URL of an existing one")
            self._engine = _create_engine(url)
            _open_schema(self._engine, self.url)

    def _said(self, error: BaseException) -> str:
        return _said(error, self._engine.url.render_as_string(hide_password=False))

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
                f"storage '{self.url}' failed: {self._said(err)}; "
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

    def set_budgets(self, name: str, budgets_s: list[float], reference_s: float | None = None) -> None:
        """The study's budgets in seconds, and the reference latency relative ones were resolved against."""
        with self._transaction() as s:
            s.execute(update(Study).where(Study.name == name).values(budgets_s=budgets_s, reference_s=reference_s))

    def study_spec(self, name: str) -> dict[str, Any] | None:
        with self._transaction() as s:
            return s.scalar(select(Study.spec).where(Study.name == name))

    def _study_id(self, s: Session, study: str) -> int:
        study_id = s.scalar(select(Study.id).where(Study.name == study))
        if study_id is None:
            raise StorageError(f"study '{study}' does not exist in '{self.url}'; call ensure_study first")
        return study_id

    # ------------------------------------------------------------------ controllers

    def register_controller(self, study: str, name: str, host: str, pid: int) -> int:
        with self._transaction() as s:
            row = ControllerRow(study_id=self._study_id(s, study), name=name, host=host, pid=pid)
            s.add(row)
            s.flush()
            return row.id

    def heartbeat(self, controller_id: int) -> None:
        """Renew the controller's lease on the generations it runs."""
        with self._transaction() as s:
            s.execute(update(ControllerRow).where(ControllerRow.id == controller_id).values(heartbeat_at=utcnow()))

    def stop_controllers(self, controller_ids: Iterable[int]) -> list[int]:
        """Controllers that ended (cleanly, or found dead): their leases are void. Returns those this call
        stopped, so that of two controllers finding a third dead, one re-runs its work."""
        stopped = []
        with self._transaction() as s:
            for controller_id in controller_ids:
                query = update(ControllerRow).where(ControllerRow.id == controller_id, ControllerRow.stopped_at.is_(None))
                if s.execute(query.values(stopped_at=utcnow())).rowcount:
                    stopped.append(controller_id)
        return stopped

    def active_controllers(self, study: str) -> list[ControllerInfo]:
        """The study's controllers not known to have ended (some may be dead: the caller judges)."""
        query = select(ControllerRow).join(Study).where(Study.name == study, ControllerRow.stopped_at.is_(None))
        with self._transaction() as s:
            return [ControllerInfo(c.id, c.name, c.host, c.pid, c.heartbeat_at) for c in s.scalars(query.order_by(ControllerRow.id))]

    # ------------------------------------------------------------------ generations

    def _running_generation(self, s: Session, generation_id: int) -> GenerationRow:
        row = s.scalar(select(GenerationRow).where(GenerationRow.id == generation_id).with_for_update())
        if row is None:
            raise StorageError(f"generation id {generation_id} does not exist in '{self.url}'")
        if row.state != TrialState.RUNNING:
            raise StorageError(f"generation id {generation_id} is already {row.state}; only RUNNING ones can end")
        return row

    def finish_generation(self, generation_id: int, result: GenerationResult) -> None:
        """Store a generation's timed problems and engine counters, all in one transaction or nothing."""
        if not result.timed:
            raise StorageError(f"generation id {generation_id} timed no problem; record it with fail_generation")
        try:
            with self._transaction() as s:
                row = self._running_generation(s, generation_id)
                s.add_all(
                    TimedProblemRow(
                        generation_id=generation_id,
                        problem_index=p.index,
                        branches=[_branch_to_json(b) for b in p.branches],
                        round=p.round,
                        latency_s=p.latency_s,
                        aggregation_s=p.aggregation_s,
                        answers=p.answers,
                    )
                    for p in result.timed
                )
                row.state = TrialState.COMPLETE
                row.worker = result.worker
                row.engine_start_s, row.engine_starts, row.warmup_s = result.engine_start_s, result.engine_starts, result.warmup_s
                row.generated_tokens = result.generated_tokens
                row.drafted_tokens, row.accepted_tokens = result.drafted_tokens, result.accepted_tokens
                row.num_drafts = result.num_drafts
                row.vllm_cpu_fix = result.vllm_cpu_fix
                row.finished_at = utcnow()
        except IntegrityError as err:
            raise StorageError(
                f"cannot finish generation id {generation_id}: {self._said(err)}; each problem index must appear once"
            ) from None

    def add_timing_round(self, generation_id: int, timed: Iterable[TimedProblem]) -> None:
        """A completed generation's problems timed again (a race round): added, never replacing."""
        try:
            with self._transaction() as s:
                row = s.get(GenerationRow, generation_id)
                if row is None or row.state != TrialState.COMPLETE:
                    raise StorageError(f"generation id {generation_id} is not complete; only completed ones are timed again")
                s.add_all(
                    TimedProblemRow(
                        generation_id=generation_id,
                        problem_index=p.index,
                        round=p.round,
                        branches=[_branch_to_json(b) for b in p.branches],
                        latency_s=p.latency_s,
                        aggregation_s=p.aggregation_s,
                        answers=p.answers,
                    )
                    for p in timed
                )
        except IntegrityError:
            raise StorageError(f"generation id {generation_id} already has that round; number rounds on from the last") from None

    def fail_generation(self, generation_id: int, reason: str) -> None:
        with self._transaction() as s:
            row = self._running_generation(s, generation_id)
            row.state, row.fail_reason, row.finished_at = TrialState.FAILED, reason, utcnow()

    def record_losslessness(self, generation_id: int, verdict: Losslessness) -> None:
        """Store a completed speculative generation's answer-shift test against the sample pool."""
        with self._transaction() as s:
            row = s.scalar(select(GenerationRow).where(GenerationRow.id == generation_id).with_for_update())
            if row is None or row.state != TrialState.COMPLETE or row.generation.get("speculative_method") is None:
                raise StorageError(f"generation id {generation_id} is not a completed speculative one; only those are tested")
            row.lossless_verdict, row.lossless_p_value = verdict.verdict, verdict.p_value
            row.lossless_baseline = verdict.baseline_trial

    def generation(self, generation_id: int) -> GenerationSummary:
        with self._transaction() as s:
            row = s.get(GenerationRow, generation_id)
            if row is None:
                raise StorageError(f"generation id {generation_id} does not exist in '{self.url}'")
            return _generation_summary(row)

    def generations(self, study: str, states: Iterable[TrialState] | None = None) -> list[GenerationSummary]:
        query = select(GenerationRow).join(Study).where(Study.name == study).order_by(GenerationRow.id)
        if states is not None:
            query = query.where(GenerationRow.state.in_(list(states)))
        with self._transaction() as s:
            return [_generation_summary(row) for row in s.scalars(query)]

    def timed_problems(self, generation_id: int) -> list[TimedProblem]:
        query = select(TimedProblemRow).where(TimedProblemRow.generation_id == generation_id)
        with self._transaction() as s:
            return [
                TimedProblem(
                    index=row.problem_index,
                    branches=tuple(_branch_from_json(b) for b in row.branches),
                    latency_s=row.latency_s,
                    aggregation_s=row.aggregation_s,
                    answers=row.answers,
                    round=row.round,
                )
                for row in s.scalars(query.order_by(TimedProblemRow.round, TimedProblemRow.problem_index))
            ]

    # ------------------------------------------------------------------ trials

    def start_trial(self, study: str, number: int, config: TTSConfig, generation_id: int | None = None, cap: int | None = None) -> int:
        """A config about to be measured; Taken when the study runs or measured it already, StudyFull
        when it holds `cap` running and measured configs (the check and the insert are one step for
        every controller of the study)."""
        try:
            with self._transaction() as s:
                return self._start_trial(s, study, number, config, generation_id, cap)
        except IntegrityError:
            raise Taken(f"config {config.label()} of study '{study}' is already running or measured") from None

    def claim(self, study: str, number: int, config: TTSConfig, controller_id: int | None, cap: int | None = None) -> tuple[int, int]:
        """A config and its generation about to be measured, leased to `controller_id`, both or neither:
        (generation id, trial id). Taken or StudyFull as start_trial."""
        generation = config.generation()
        try:
            with self._transaction() as s:
                row = GenerationRow(
                    study_id=self._study_id(s, study),
                    key=generation.key(),
                    generation=generation.to_dict(),
                    state=TrialState.RUNNING,
                    controller_id=controller_id,
                )
                trial_id = self._start_trial(s, study, number, config, None, cap)
                s.add(row)
                s.flush()
                s.execute(update(Trial).where(Trial.id == trial_id).values(generation_id=row.id))
                return row.id, trial_id
        except IntegrityError:
            raise Taken(f"config {config.label()} of study '{study}' is already running or measured") from None

    def _start_trial(self, s: Session, study: str, number: int, config: TTSConfig, generation_id: int | None, cap: int | None) -> int:
        study_id = self._study_id(s, study)
        if cap is not None:
            # A write first: it locks the study's row (SQLite: the database) until this transaction
            # ends, so two controllers cannot both count cap - 1 and both insert.
            s.execute(update(Study).where(Study.id == study_id).values(name=Study.name))
            live = s.scalar(select(func.count(Trial.id)).where(Trial.study_id == study_id, Trial.state != TrialState.FAILED))
            if live >= cap:
                raise StudyFull(f"study '{study}' already runs or measured {live} of its {cap} configs")
        if s.scalar(select(Trial.id).where(Trial.study_id == study_id, Trial.number == number)) is not None:
            raise StorageError(
                f"trial {number} of study '{study}' is already stored; its Optuna study was probably "
                "deleted and recreated, so pick another `study:` name"
            )
        trial = Trial(
            study_id=study_id, number=number, key=config.key(), config=config.to_dict(), state=TrialState.RUNNING, generation_id=generation_id
        )
        s.add(trial)
        s.flush()
        return trial.id

    def _running_trial(self, s: Session, trial_id: int) -> Trial:
        # FOR UPDATE: two processes cannot both finish one trial (SQLite serialises writers anyway).
        trial = s.scalar(select(Trial).where(Trial.id == trial_id).with_for_update())
        if trial is None:
            raise StorageError(f"trial id {trial_id} does not exist in '{self.url}'; use the id start_trial returned")
        if trial.state != TrialState.RUNNING:
            raise StorageError(f"trial id {trial_id} is already {trial.state}; only RUNNING trials can be finished or failed")
        return trial

    def complete_trial(self, trial_id: int, numbers: TrialNumbers, generation_id: int | None = None) -> TrialSummary:
        """Store a running trial's accuracy and latency (computed from its generation and the pool)."""
        with self._transaction() as s:
            trial = self._running_trial(s, trial_id)
            return self._set_numbers(s, trial, numbers, generation_id)

    def update_trial_numbers(self, trial_id: int, numbers: TrialNumbers) -> TrialSummary:
        """New numbers for a completed trial: its generation was timed again (a race)."""
        with self._transaction() as s:
            trial = s.scalar(select(Trial).where(Trial.id == trial_id).with_for_update())
            if trial is None or trial.state != TrialState.COMPLETE:
                raise StorageError(f"trial id {trial_id} is not complete; only completed trials get new numbers")
            return self._set_numbers(s, trial, numbers, None)

    def _set_numbers(self, s: Session, trial: Trial, numbers: TrialNumbers, generation_id: int | None) -> TrialSummary:
        trial.state = TrialState.COMPLETE
        trial.generation_id = generation_id or trial.generation_id
        trial.accuracy, trial.accuracy_source, trial.n_problems = numbers.accuracy, numbers.accuracy_source, numbers.n_problems
        trial.accuracy_lo, trial.accuracy_hi = numbers.accuracy_ci
        trial.latency_mean, trial.latency_p50 = numbers.latency_s.mean, numbers.latency_s.p50
        trial.latency_p90, trial.latency_p99 = numbers.latency_s.p90, numbers.latency_s.p99
        trial.latency_ci = {name: list(interval) for name, interval in numbers.latency_ci.items()}
        trial.n_latency_problems = numbers.n_latency_problems
        trial.finished_at = trial.finished_at or utcnow()
        s.flush()
        return self._trial(s, trial.id)

    def record_budget_answers(self, study: str, answers: Iterable[BudgetAnswer]) -> None:
        """A race's answers, one per budget; they replace the study's earlier ones."""
        with self._transaction() as s:
            study_id = self._study_id(s, study)
            ids = {t.number: t.id for t in s.scalars(select(Trial).where(Trial.study_id == study_id))}
            s.execute(delete(BudgetAnswerRow).where(BudgetAnswerRow.study_id == study_id))
            s.add_all(
                BudgetAnswerRow(
                    study_id=study_id,
                    budget_s=a.budget_s,
                    trial_id=ids.get(a.trial),  # type: ignore[arg-type]
                    runner_up_id=ids.get(a.runner_up),  # type: ignore[arg-type]
                    fits_confidently=a.fits_confidently,
                    margin=a.margin,
                    margin_lo=a.margin_ci[0] if a.margin_ci else None,
                    margin_hi=a.margin_ci[1] if a.margin_ci else None,
                    budget_lo_s=a.budget_range_s[0] if a.budget_range_s else None,
                    budget_hi_s=a.budget_range_s[1] if a.budget_range_s else None,
                    edge=a.edge,
                    verdict=a.verdict,
                    rounds=a.rounds,
                    finalists=a.finalists,
                )
                for a in answers
            )

    def budget_answers(self, study: str) -> list[BudgetAnswer]:
        chosen, runner_up = aliased(Trial), aliased(Trial)
        query = (
            select(BudgetAnswerRow, chosen.number, runner_up.number)
            .join(Study, BudgetAnswerRow.study_id == Study.id)
            .outerjoin(chosen, BudgetAnswerRow.trial_id == chosen.id)
            .outerjoin(runner_up, BudgetAnswerRow.runner_up_id == runner_up.id)
            .where(Study.name == study)
            .order_by(BudgetAnswerRow.budget_s)
        )
        with self._transaction() as s:
            return [
                BudgetAnswer(
                    budget_s=row.budget_s,
                    trial=number,
                    runner_up=runner_up_number,
                    fits_confidently=row.fits_confidently,
                    margin=row.margin,
                    margin_ci=(row.margin_lo, row.margin_hi) if row.margin_lo is not None else None,  # type: ignore[arg-type]
                    verdict=row.verdict,  # type: ignore[arg-type]
                    rounds=row.rounds,
                    finalists=row.finalists,
                    budget_range_s=(row.budget_lo_s, row.budget_hi_s) if row.budget_lo_s is not None else None,  # type: ignore[arg-type]
                    edge=row.edge or [],
                )
                for row, number, runner_up_number in s.execute(query)
            ]

    def fail_trial(self, trial_id: int, reason: str) -> TrialSummary:
        """Mark a trial FAILED with its reason; its measurements stay empty, never made up."""
        with self._transaction() as s:
            trial = self._running_trial(s, trial_id)
            trial.state = TrialState.FAILED
            trial.fail_reason = reason
            trial.finished_at = utcnow()
        return self.trial(trial_id)

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

    def interrupt_running(self, study: str, reason: str, keep: set[int]) -> list[TrialSummary]:
        """Fail, with `reason`, the running generations and trials of the study not leased by a
        controller in `keep` (those stored before leases included). Returns the trials this call
        failed: a row another process failed first is not returned, so its config is queued once."""
        with self._transaction() as s:
            study_id = self._study_id(s, study)
            leased = GenerationRow.controller_id.in_(keep) if keep else literal(False)
            # A stored generation too: its controller may have died between storing it and its trials.
            orphaned = s.execute(
                select(GenerationRow.id, GenerationRow.state).where(GenerationRow.study_id == study_id, ~func.coalesce(leased, False))
            ).all()
            generation_ids = [gid for gid, state in orphaned if state == TrialState.RUNNING]
            trial_ids = list(
                s.scalars(
                    select(Trial.id).where(
                        Trial.study_id == study_id,
                        Trial.state == TrialState.RUNNING,
                        (Trial.generation_id.in_([gid for gid, _ in orphaned])) | Trial.generation_id.is_(None),
                    )
                )
            )
            failed = {"state": TrialState.FAILED, "fail_reason": reason, "finished_at": utcnow()}
            claimed = [
                trial_id
                for trial_id in trial_ids
                if s.execute(update(Trial).where(Trial.id == trial_id, Trial.state == TrialState.RUNNING).values(**failed)).rowcount
            ]
            for generation_id in generation_ids:
                s.execute(update(GenerationRow).where(GenerationRow.id == generation_id, GenerationRow.state == TrialState.RUNNING).values(**failed))
            return [self._trial(s, trial_id) for trial_id in claimed]

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

    # ------------------------------------------------------------------ the sample pool

    def add_pool_samples(
        self, pool: str, samples: Iterable[PoolDraw], generation_id: int | None = None, verifier: str | None = None
    ) -> None:
        """Branches into the pool of `pool` (model, dtype, sampling), with `verifier`'s scores where
        they carry one; a draw already there is kept once."""
        samples = list(samples)
        rows = [
            {
                "pool": pool,
                "prompt_sha": d.prompt_sha,
                "seed": d.seed,
                "branch": d.branch,
                **{k: v for k, v in _branch_to_json(d.sample).items() if k != "verifier_score"},
                "generation_id": generation_id,
                "created_at": utcnow(),
            }
            for d in samples
        ]
        with self._transaction() as s:
            _insert_ignoring_duplicates(s, PoolSample, rows)
            scored = {(d.prompt_sha, d.seed, d.branch): d.sample.verifier_score for d in samples if d.sample.verifier_score is not None}
            if verifier and scored:
                ids = s.execute(
                    select(PoolSample.id, PoolSample.prompt_sha, PoolSample.seed, PoolSample.branch).where(
                        PoolSample.pool == pool, PoolSample.prompt_sha.in_({sha for sha, _, _ in scored})
                    )
                )
                score_rows = [
                    {"sample_id": row.id, "verifier": verifier, "score": scored[(row.prompt_sha, row.seed, row.branch)]}
                    for row in ids
                    if (row.prompt_sha, row.seed, row.branch) in scored
                ]
                _insert_ignoring_duplicates(s, PoolScore, score_rows)

    def add_pool_scores(self, verifier: str, scores: dict[int, float]) -> None:
        rows = [{"sample_id": sample_id, "verifier": verifier, "score": score} for sample_id, score in scores.items()]
        with self._transaction() as s:
            _insert_ignoring_duplicates(s, PoolScore, rows)

    def pool_samples(self, pool: str, prompt_shas: Iterable[str], verifier: str | None = None) -> dict[str, list[PooledSample]]:
        """Each prompt's pooled samples in pool order, with `verifier`'s score where it has one."""
        shas = list(dict.fromkeys(prompt_shas))
        score = select(PoolScore.score).where(PoolScore.sample_id == PoolSample.id, PoolScore.verifier == verifier)
        # Columns, not ORM objects: a pool holds thousands of samples, read after every generation.
        columns = (PoolSample.id, PoolSample.prompt_sha, PoolSample.text, PoolSample.answer, PoolSample.n_tokens, PoolSample.token_logprobs)
        query = (
            select(*columns, score.scalar_subquery() if verifier else literal(None))
            .where(PoolSample.pool == pool, PoolSample.prompt_sha.in_(shas))
            .order_by(PoolSample.id)
        )
        found: dict[str, list[PooledSample]] = {sha: [] for sha in shas}
        with self._transaction() as s:
            for sample_id, sha, text, answer, n_tokens, logprobs, verifier_score in s.execute(query):
                found[sha].append(PooledSample(sample_id, Branch(text, answer, n_tokens, tuple(map(float, logprobs)), verifier_score)))
        return found

    def pool_version(self, pool: str, verifier: str | None = None) -> tuple[int | None, ...]:
        """Changes whenever the pool's samples, or `verifier`'s scores, do: what was read before stays
        true until then."""
        with self._transaction() as s:
            version = tuple(s.execute(select(func.count(PoolSample.id), func.max(PoolSample.id)).where(PoolSample.pool == pool)).one())
            if verifier:
                version += tuple(s.execute(select(func.count(PoolScore.id), func.max(PoolScore.id)).where(PoolScore.verifier == verifier)).one())
        return version

    def studies(self) -> list[StudyInfo]:
        return self._studies(None)

    def study(self, name: str) -> StudyInfo | None:
        found = self._studies(name)
        return found[0] if found else None

    def _studies(self, name: str | None) -> list[StudyInfo]:
        rows = select(
            Study.id, Study.name, Hardware.name, Study.model, Study.benchmark, Study.created_at, Study.budgets_s, Study.reference_s
        ).join(Hardware)
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
                    budgets_s=row[6],
                    reference_s=row[7],
                )
                for row in s.execute(rows.order_by(Study.name))
            ]
