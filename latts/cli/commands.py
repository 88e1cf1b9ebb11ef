"""The `latts` commands. Errors are one line on stderr: exit 2 for bad input, 3 when no config fits,
4 when `tune --max-failures` stopped a study."""

from __future__ import annotations

import functools
import json
import logging
import os
import shlex
import signal
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import typer
from pydantic import BaseModel
from rich.console import Console

from latts.cli.tables import TuneProgress, answers_table, best_table, trials_table
from latts.core.errors import first_line, redact
from latts.core.records import STATISTICS, TrialState, TrialSummary
from latts.core.spec import SpecError
from latts.storage import Repository

logger = logging.getLogger(__name__)
app = typer.Typer(add_completion=False, pretty_exceptions_enable=False, help=__doc__)
# Tables are wide; when stdout is a file or pipe, don't squeeze them into rich's default 80 columns.
out = Console(highlight=False, width=None if sys.stdout.isatty() else 160)
err = Console(stderr=True, highlight=False, width=None if sys.stderr.isatty() else 160)

EXIT_BAD_INPUT = 2
EXIT_NO_FIT = 3
EXIT_TOO_MANY_FAILURES = 4
DEFAULT_STORAGE = "sqlite:///latts.db"
SUBMIT_PATIENCE_S = 60  # how long `latts submit` waits for a cluster's job server to take jobs

StorageOption = Annotated[
    str | None, typer.Option("--storage", help="SQLAlchemy URL; default $LATTS_STORAGE, else sqlite:///latts.db")
]
JsonOption = Annotated[bool, typer.Option("--json", help="one JSON document on stdout")]
StatisticOption = Annotated[str, typer.Option("--statistic", help="latency statistic: mean, p50, p90 or p99")]
IncludeLossyOption = Annotated[
    bool, typer.Option("--include-lossy", help="also consider speculative trials whose answers differ from no speculation")
]


class UsageError(Exception):
    """Bad command-line input; one line."""


def friendly_errors(command: Callable[..., Any]) -> Callable[..., Any]:
    """Turn latts' own errors into one line on stderr and exit code 2."""
    from latts.problems import ProblemSetError
    from latts.reporting.documents import MissingScope, UnknownStudy
    from latts.storage import StorageError

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except UnknownStudy as exc:
            message = f"{exc}; `latts status` lists them"
        except MissingScope:
            message = "give --study NAME, or all of --hardware, --model and --benchmark"
        except (SpecError, StorageError, ProblemSetError, UsageError) as exc:
            message = str(exc)
        err.print(f"error: {redact(message)}", markup=False, soft_wrap=True)
        raise typer.Exit(EXIT_BAD_INPUT)

    return wrapper


@contextmanager
def stoppable(what: str) -> Iterator[None]:
    """SIGINT and SIGTERM end the command cleanly: the controller hands its running configs back for
    re-run and its Ray processes end with it; exit 128 + the signal's number, as a shell reports it."""
    received: list[int] = []

    def stop(signum: int, _frame: Any) -> None:
        received.append(signum)  # noted here: Ray re-raises a handler's exception as a plain KeyboardInterrupt
        raise KeyboardInterrupt(signal.Signals(signum).name)

    previous = {signum: signal.signal(signum, stop) for signum in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    except KeyboardInterrupt:
        signum = received[0] if received else signal.SIGINT
        err.print(f"stopped by {signal.Signals(signum).name}: {what}", markup=False, soft_wrap=True)
        raise typer.Exit(128 + signum) from None
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def storage_url(flag: str | None, spec_storage: str | None = None) -> str:
    """--storage, else the spec's `storage:` (tune only), else $LATTS_STORAGE, else ./latts.db."""
    return flag or spec_storage or os.environ.get("LATTS_STORAGE") or DEFAULT_STORAGE


def _check_statistic(statistic: str) -> None:
    if statistic not in STATISTICS:
        raise UsageError(f"--statistic {statistic!r} is not one of {', '.join(STATISTICS)}")


def _check_budget(budget: float) -> None:
    if not budget > 0:
        raise UsageError(f"--budget must be a positive number of seconds, got {budget:g}")


def _print_json(document: BaseModel) -> None:
    sys.stdout.write(json.dumps(document.model_dump(mode="json"), indent=2) + "\n")


@app.command()
@friendly_errors
def tune(
    spec_path: Annotated[str, typer.Argument(metavar="SPEC.yaml", help="study spec (YAML)")],
    storage: StorageOption = None,
    ray_address: Annotated[str | None, typer.Option("--ray-address", help="join this Ray cluster")] = None,
    n_trials: Annotated[int | None, typer.Option("--n-trials", help="total trials for the study (overrides the spec)")] = None,
    max_failures: Annotated[
        int | None, typer.Option("--max-failures", help="stop once N trials have failed in this run (exit 4); default: never")
    ] = None,
    log_file: Annotated[
        str | None, typer.Option("--log-file", help="log here; default latts-logs/STUDY.log beside a SQLite database, else in .")
    ] = None,
    verbose: Annotated[bool, typer.Option("--verbose", help="show the log live, workers' and engines' output included")] = False,
) -> None:
    """Run or resume the study named in the spec; print its frontier and best config per budget."""
    from latts.cli.logs import default_log_file, failure_logs, log_file_handler, logging_to
    from latts.core.spec import load_spec
    from latts.optimizer.controller import INTERRUPTED, Controller
    from latts.optimizer.frontier import pareto_front
    from latts.workers.cluster import reap_orphans

    reap_orphans()
    spec = load_spec(spec_path)
    if n_trials is not None and n_trials < 1:
        raise UsageError(f"--n-trials must be at least 1, got {n_trials}")
    if max_failures is not None and max_failures < 1:
        raise UsageError(f"--max-failures must be at least 1, got {max_failures}; leave it out to never stop")
    url = storage_url(storage, spec.storage)
    repo = Repository(url)
    spec.check_resumable(repo.study_spec(spec.study))  # refused before anything is logged or measured
    log_path = Path(log_file).resolve() if log_file else default_log_file(url, spec.study)
    controller = Controller(spec, repo, url, n_trials, max_failures=max_failures, failure_logs=failure_logs(log_path, spec.study))
    try:
        to_file = log_file_handler(log_path)
    except OSError as exc:
        raise UsageError(f"cannot write the log file {log_path}: {exc.strerror}; pass --log-file PATH") from None
    with logging_to(to_file, err, verbose):
        err.print(f"log: {log_path}", markup=False)
        logger.info("latts tune %s: study %s, storage %s", spec_path, spec.study, repo.url)
        if controller.state.capped:
            err.print(controller.state.capped, markup=False)
        resume = f"its running configs will run again; `latts tune {spec_path}` resumes it"
        with stoppable(resume), TuneProgress(err, spec.study) as progress:
            state = controller.run(ray_address, on_update=progress.update)
    if not err.is_terminal:  # rich ends its last frame without a newline when it cannot redraw
        err.line()
    if state.greedy_stopped:
        err.print(f"greedy: every budget's path has stopped; {state.done} of {state.target} configs measured")
    trials = repo.trials(spec.study)
    for t in trials:
        if t.state == TrialState.FAILED and t.fail_reason != INTERRUPTED:
            err.print(f"trial {t.number} ({t.config.label()}) failed: {t.fail_reason}", markup=False, soft_wrap=True)
        elif t.lossy:
            err.print(
                f"trial {t.number} ({t.config.label()}) is lossy: its answers differ from trial {t.lossless.baseline_trial} "
                f"without speculation (p={t.lossless.p_value:.2g}); kept out of the frontier and best",
                markup=False,
            )
    if state.stopped:
        err.print(
            f"error: stopped after {state.failed_now} failed trials in this run (--max-failures {max_failures}); "
            f"their reasons are above, measured trials are kept, and `latts tune` again resumes the study",
            markup=False,
            soft_wrap=True,
        )
        raise typer.Exit(EXIT_TOO_MANY_FAILURES)
    out.print(trials_table(f"Frontier of {spec.study}", pareto_front(trials, spec.latency_statistic), spec.latency_statistic))
    _print_answers(repo, spec.study, spec.latency_statistic, state.best)


def _print_answers(repo, study: str, statistic, best) -> None:
    """Each budget's raced answer with its margin, or the best config per budget where there was no race."""
    answers = repo.budget_answers(study)
    if answers:
        out.print(answers_table(answers, {t.number: t for t in repo.trials(study)}, statistic))
    else:
        out.print(best_table(best, statistic))


@app.command()
@friendly_errors
def status(
    study: Annotated[str | None, typer.Option("--study")] = None,
    storage: StorageOption = None,
    as_json: JsonOption = False,
) -> None:
    """Studies and their trial counts by state."""
    from rich.table import Table

    from latts.reporting.documents import UnknownStudy, studies_document
    from latts.workers.cluster import reap_orphans

    reap_orphans()  # a controller killed on this machine may have left Ray processes running

    studies = Repository(storage_url(storage), create=False).studies()
    if study is not None:
        studies = [s for s in studies if s.name == study]
        if not studies:
            raise UnknownStudy(study)
    if as_json:
        _print_json(studies_document(studies))
        return
    table = Table(title="Studies", title_justify="left")
    for column in ("study", "hardware", "model", "benchmark", "complete", "failed", "running"):
        table.add_column(column)
    for s in studies:
        counts = (str(s.counts[state]) for state in (TrialState.COMPLETE, TrialState.FAILED, TrialState.RUNNING))
        table.add_row(s.name, s.hardware, s.model, s.benchmark, *counts)
    out.print(table)


@app.command()
@friendly_errors
def frontier(
    study: Annotated[str, typer.Option("--study")],
    storage: StorageOption = None,
    statistic: StatisticOption = "mean",
    include_lossy: IncludeLossyOption = False,
    as_json: JsonOption = False,
) -> None:
    """The Pareto-optimal trials: no other trial is both more accurate and faster."""
    from latts.reporting.documents import frontier_document, study_trials

    _check_statistic(statistic)
    trials = study_trials(Repository(storage_url(storage), create=False), study)
    document = frontier_document(study, trials, statistic, include_lossy)
    if as_json:
        _print_json(document)
    else:
        out.print(trials_table(f"Frontier of {study} ({statistic} latency)", document.frontier, statistic))


@app.command()
@friendly_errors
def best(
    budget: Annotated[float, typer.Option("--budget", help="latency budget in seconds")],
    study: Annotated[str | None, typer.Option("--study")] = None,
    hardware: Annotated[str | None, typer.Option("--hardware")] = None,
    model: Annotated[str | None, typer.Option("--model")] = None,
    benchmark: Annotated[str | None, typer.Option("--benchmark")] = None,
    storage: StorageOption = None,
    statistic: StatisticOption = "mean",
    include_lossy: IncludeLossyOption = False,
    as_json: JsonOption = False,
) -> None:
    """The most accurate config within the budget; exit code 3 when none fits."""
    from latts.reporting.documents import best_document, scope_trials, study_answers

    _check_budget(budget)
    _check_statistic(statistic)
    repo = Repository(storage_url(storage), create=False)
    trials = scope_trials(repo, study, hardware, model, benchmark)
    document = best_document(trials, budget, statistic, include_lossy, study_answers(repo, study, statistic))
    if as_json:
        _print_json(document)
    elif document.best:
        out.print(trials_table(f"Best within {budget:g} s ({statistic} latency)", [document.best], statistic))
    else:
        err.print(f"no completed trial fits {budget:g} s ({statistic} latency)")
    if document.best is None:
        raise typer.Exit(EXIT_NO_FIT)


@app.command()
@friendly_errors
def confirm(
    study: Annotated[str, typer.Option("--study")],
    storage: StorageOption = None,
    ray_address: Annotated[str | None, typer.Option("--ray-address", help="join this Ray cluster")] = None,
) -> None:
    """Time each budget's finalists again in interleaved rounds; print each answer's margin."""
    from latts.core.spec import parse_spec
    from latts.optimizer.controller import Controller
    from latts.reporting.documents import study_trials
    from latts.workers.cluster import reap_orphans

    reap_orphans()
    url = storage_url(storage)
    repo = Repository(url, create=False)
    study_trials(repo, study)  # an unknown study fails here, in one line
    spec = parse_spec(repo.study_spec(study), source=f"study {study}'s stored spec")
    if not spec.race.finalists:
        raise UsageError(f"study {study} races no finalists (race.finalists: 0); set race.finalists in its spec")
    with stoppable("the answers stored before stay"), err.status(f"timing the finalists of {study} again ({spec.race.rounds} rounds)"):
        Controller(spec, repo, url).confirm(ray_address)
    _print_answers(repo, study, spec.latency_statistic, {})


@app.command()
@friendly_errors
def upgrade(storage: StorageOption = None) -> None:
    """Bring the database's latts tables to this latts' schema (back it up first)."""
    from latts.storage import upgrade as upgrade_schema
    from latts.storage.repository import EMPTY

    url = storage_url(storage)
    before, after = upgrade_schema(url)
    shown = redact(url)
    if before == after:
        out.print(f"storage '{shown}' is at latts schema {after} already; nothing to do", markup=False, soft_wrap=True)
    elif before == EMPTY:
        out.print(f"storage '{shown}': created latts' tables at schema {after}", markup=False, soft_wrap=True)
    else:
        out.print(f"storage '{shown}': latts schema {before} -> {after}", markup=False, soft_wrap=True)


@app.command()
@friendly_errors
def submit(
    spec_path: Annotated[str, typer.Argument(metavar="SPEC.yaml", help="study spec (YAML)")],
    ray_address: Annotated[str, typer.Option("--ray-address", help="the cluster's job server, http://HEAD:8265")],
    storage: StorageOption = None,
    n_trials: Annotated[int | None, typer.Option("--n-trials", help="total trials for the study (overrides the spec)")] = None,
) -> None:
    """Send `latts tune SPEC` to a Ray cluster as a job (Ray's job submission API); print its id and how to follow it.

    latts must be installed on the cluster's nodes; the job runs on the head node and stores into --storage, a database the head reaches.
    A password in the URL stays here: the job gets the URL without it (set PGPASSWORD or ~/.pgpass on the head node)."""
    import tempfile
    from pathlib import Path

    from sqlalchemy.engine import make_url

    from latts.core.spec import load_spec

    spec = load_spec(spec_path)  # a bad spec fails here, before anything is sent
    if n_trials is not None and n_trials < 1:
        raise UsageError(f"--n-trials must be at least 1, got {n_trials}")
    url = make_url(storage_url(storage, spec.storage))
    if url.get_backend_name() == "sqlite":
        raise UsageError(
            f"--storage {redact(str(url))} is a file on this machine; the job runs on the "
            "cluster's head node: give a database it reaches, e.g. postgresql+psycopg://USER@HOST:5432/DB"
        )
    from ray.job_submission import JobSubmissionClient

    try:
        client = JobSubmissionClient(ray_address)
    except (ConnectionError, ValueError, RuntimeError) as exc:
        raise UsageError(f"--ray-address {ray_address}: no Ray job server answers there ({first_line(exc)}); give http://HEAD:8265") from None
    job_storage = url.set(password=None).render_as_string(hide_password=False)
    command = ["latts", "tune", "spec.yaml", "--ray-address", "auto", "--storage", job_storage]
    command += ["--n-trials", str(n_trials)] if n_trials else []
    with tempfile.TemporaryDirectory(prefix="latts-submit-") as folder:
        Path(folder, "spec.yaml").write_text(Path(spec_path).read_text())
        deadline = time.monotonic() + SUBMIT_PATIENCE_S
        while True:
            try:
                job = client.submit_job(entrypoint=shlex.join(command), runtime_env={"working_dir": folder}, metadata={"latts_study": spec.study})
                break
            except RuntimeError as exc:  # the job server's HTTP errors
                # A cluster just started answers "no available agent ... try again later" for a while.
                if "try again later" not in str(exc) or time.monotonic() > deadline:
                    raise UsageError(f"--ray-address {ray_address}: the job server refused the job: {first_line(exc)}") from None
                time.sleep(2)
    shown = redact(str(url))
    out.print(f"submitted study {spec.study} as Ray job {job}", markup=False)
    out.print(f"follow it:  ray job logs --follow {job} --address {ray_address}", markup=False)
    out.print(f"its trials: latts status --study {spec.study} --storage '{shown}'", markup=False)
    if url.password:
        err.print("the password stayed here: set PGPASSWORD or ~/.pgpass on the head node", markup=False)


@app.command("demo-models")
def demo_models_command() -> None:
    """Train the tiny demo models on `arith` (cached; instant when already there)."""
    from latts.demo.models import ensure_demo_models

    for name, path in ensure_demo_models(log=lambda m: err.print(m)).items():
        out.print(f"{name}: {path}")


def _study_spec_and_trials(repo, study: str) -> tuple[dict[str, Any], list[TrialSummary]]:
    from latts.reporting.documents import study_trials

    trials = study_trials(repo, study)
    return repo.study_spec(study) or {}, trials


@app.command("export")
@friendly_errors
def export_command(
    study: Annotated[str, typer.Option("--study")],
    budget: Annotated[float, typer.Option("--budget", help="latency budget in seconds")],
    fmt: Annotated[str, typer.Option("--format", help="vllm-yaml (for `vllm serve --config`) or json (request side)")],
    output: Annotated[str | None, typer.Option("-o", "--output", help="file to write; default stdout")] = None,
    storage: StorageOption = None,
    statistic: Annotated[str | None, typer.Option("--statistic", help="mean, p50, p90 or p99; default the study's own")] = None,
    include_lossy: IncludeLossyOption = False,
) -> None:
    """Serving config for the most accurate config within the budget; exit code 3 when none fits."""
    from latts.reporting import export as exporting
    from latts.reporting.documents import answer_for, study_answers

    if fmt not in exporting.FORMATS:
        raise UsageError(f"--format {fmt!r} is not one of {', '.join(exporting.FORMATS)}")
    if fmt == "vllm-yaml" and output is not None and not output.endswith((".yaml", ".yml")):
        raise UsageError(f"-o {output!r}: `vllm serve --config` reads only .yaml or .yml files; name it so")
    _check_budget(budget)
    if statistic is not None:
        _check_statistic(statistic)
    repo = Repository(storage_url(storage), create=False)
    spec, trials = _study_spec_and_trials(repo, study)
    statistic = statistic or spec.get("latency_statistic", "mean")
    chosen = answer_for(trials, budget, statistic, include_lossy, study_answers(repo, study, statistic))
    if chosen is None:
        err.print(f"no completed trial of {study} fits {budget:g} s ({statistic} latency); nothing exported")
        raise typer.Exit(EXIT_NO_FIT)
    text = exporting.render(fmt, spec, chosen, budget, statistic)
    if output is None:
        sys.stdout.write(text)
        return
    try:
        with open(output, "w") as file:
            file.write(text)
    except OSError as exc:
        raise UsageError(f"cannot write {output}: {exc.strerror}; check the path") from None
    err.print(f"wrote {output}: {study} trial #{chosen.number} ({chosen.config.label()}, {chosen.accuracy:.1%})", markup=False)


@app.command("plot")
@friendly_errors
def plot_command(
    study: Annotated[str, typer.Option("--study")],
    output: Annotated[str, typer.Option("-o", "--output", help="FILE.png (matplotlib) or FILE.html (plotly)")],
    storage: StorageOption = None,
    statistic: Annotated[str | None, typer.Option("--statistic", help="mean, p50, p90 or p99; default the study's own")] = None,
) -> None:
    """Accuracy-latency plot: every trial, the frontier, each budget and the config chosen for it."""
    from latts.reporting.documents import study_answers
    from latts.reporting.plots import PlotError, plot_study

    if statistic is not None:
        _check_statistic(statistic)
    repo = Repository(storage_url(storage), create=False)
    spec, trials = _study_spec_and_trials(repo, study)
    info = repo.study(study)
    statistic = statistic or spec.get("latency_statistic", "mean")
    title = f"{study}: {info.model} on {info.benchmark}, {info.hardware}" if info else study
    try:
        budgets = (info.budgets_s if info else None) or []
        plot_study(trials, budgets, statistic, output, title=title, answers=study_answers(repo, study, statistic))
    except PlotError as exc:
        raise UsageError(str(exc)) from None
    err.print(f"wrote {output}", markup=False)


@app.command("serve")
@friendly_errors
def serve_command(
    host: Annotated[str, typer.Option("--host", help="address to listen on")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", help="port; 0 picks a free one")] = 8000,
    storage: StorageOption = None,
) -> None:
    """Read-only HTTP API: /healthz, /v1/studies, /v1/frontier, /v1/best; OpenAPI at /openapi.json."""
    import socket

    import uvicorn
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    from latts.reporting.api import create_app
    from latts.storage.repository import URL_HINT

    url = storage_url(storage)
    try:
        make_url(url)  # a typo fails now; a database that is down only makes requests answer 503
    except ArgumentError:
        raise UsageError(f"cannot parse storage URL {redact(url)!r}; {URL_HINT}") from None
    if not 0 <= port <= 65535:
        raise UsageError(f"--port must be between 0 and 65535, got {port}")
    # Bound here rather than by uvicorn, so a busy port is one line and exit 2, and port 0 can be reported.
    try:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
        sock = socket.create_server((host, port), family=family)
    except OSError as exc:
        raise UsageError(f"cannot listen on {host}:{port}: {exc.strerror or exc}; pick another --host or --port") from None
    bound_host, bound_port = sock.getsockname()[:2]
    err.print(f"latts serve: http://{bound_host}:{bound_port} (OpenAPI at /openapi.json)", markup=False)
    config = uvicorn.Config(create_app(url), log_level="warning")
    uvicorn.Server(config).run(sockets=[sock])
