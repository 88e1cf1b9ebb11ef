"""The `latts` command line. Errors are one line on stderr: exit 2 for bad input, 3 when no config fits."""

from __future__ import annotations

import functools
import json
import os
import sys
import time
from collections.abc import Callable
from typing import Annotated, Any

import typer
from rich.console import Console, Group
from rich.live import Live
from rich.markup import escape
from rich.table import Table

from latts.records import TrialSummary
from latts.spec import STATISTICS, SpecError

app = typer.Typer(add_completion=False, pretty_exceptions_enable=False, help=__doc__)
# Tables are wide; when stdout is a file or pipe, don't squeeze them into rich's default 80 columns.
out = Console(highlight=False, width=None if sys.stdout.isatty() else 160)
err = Console(stderr=True, highlight=False)

EXIT_BAD_INPUT = 2
EXIT_NO_FIT = 3
DEFAULT_STORAGE = "sqlite:///latts.db"

StorageOption = Annotated[
    str | None, typer.Option("--storage", help="SQLAlchemy URL; default $LATTS_STORAGE, else sqlite:///latts.db")
]
JsonOption = Annotated[bool, typer.Option("--json", help="one JSON document on stdout")]
StatisticOption = Annotated[str, typer.Option("--statistic", help="latency statistic: mean, p50, p90 or p99")]


class UsageError(Exception):
    """Bad command-line input; one line."""


def _fail(message: str) -> None:
    err.print(f"error: {message}", markup=False, soft_wrap=True)
    raise typer.Exit(EXIT_BAD_INPUT)


def friendly_errors(command: Callable[..., Any]) -> Callable[..., Any]:
    """Turn latts' own errors into one line on stderr and exit code 2."""
    from latts.benchmarks import BenchmarkError
    from latts.storage import StorageError

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except (SpecError, StorageError, BenchmarkError, UsageError) as exc:
            _fail(str(exc))

    return wrapper


def _repository(storage: str | None):
    from latts.storage import Repository

    return Repository(storage or os.environ.get("LATTS_STORAGE") or DEFAULT_STORAGE)


def _check_statistic(statistic: str) -> None:
    if statistic not in STATISTICS:
        raise UsageError(f"--statistic {statistic!r} is not one of {', '.join(STATISTICS)}")


def _check_budget(budget: float) -> None:
    if not budget > 0:
        raise UsageError(f"--budget must be a positive number of seconds, got {budget:g}")


def _print_json(document: Any) -> None:
    sys.stdout.write(json.dumps(document, indent=2) + "\n")


def _seconds(value: float) -> str:
    # Four significant digits: demo latencies are hundredths of a second, and budgets compare exactly.
    return f"{value:.4g}"


def trials_table(title: str, trials: list[TrialSummary], statistic: str) -> Table:
    table = Table(title=title, title_justify="left")
    for column in ("trial", "branches", "speculative", "aggregator", "verifier", "accuracy (95% CI)"):
        table.add_column(column, justify="right" if column in ("trial", "branches") else "left")
    for stat in STATISTICS:
        table.add_column(f"{stat} s" + (" *" if stat == statistic else ""), justify="right")
    table.add_column("accept len", justify="right")
    for t in trials:
        c = t.config
        speculative = f"{c.speculative_method} k={c.num_speculative_tokens}" if c.speculative_method else "none"
        lo, hi = t.accuracy_ci or (0.0, 0.0)
        table.add_row(
            f"{t.study}#{t.number}" if t.study else str(t.number),
            str(c.branches),
            speculative,
            c.aggregator,
            c.verifier or "-",
            f"{t.accuracy:.1%} ({lo:.0%}-{hi:.0%})",
            *(_seconds(t.latency_s.get(s)) for s in STATISTICS),
            f"{t.mean_acceptance_length:.2f}" if t.mean_acceptance_length else "-",
        )
    return table


def best_table(bests: dict[float, TrialSummary | None], statistic: str) -> Table:
    table = Table(title=f"Best config per budget ({statistic} latency)", title_justify="left")
    for column in ("budget s", "trial", "config", "accuracy", f"{statistic} s"):
        table.add_column(column)
    for budget, t in bests.items():
        if t is None:
            table.add_row(f"{budget:g}", "-", "nothing fits", "-", "-")
        else:
            table.add_row(
                f"{budget:g}", f"{t.study}#{t.number}", t.config.label(), f"{t.accuracy:.1%}", _seconds(t.latency_s.get(statistic))
            )
    return table


def _progress_view(state, spec) -> Group:
    elapsed = time.monotonic() - state.started_at
    finished_here = max(state.done - state.initial_done, 0)
    remaining = (state.target - state.done) * elapsed / finished_here if finished_here else None
    filled = int(30 * state.done / max(state.target, 1))
    line = (
        f"[bold]{escape(spec.study)}[/] \\[{'#' * filled}{'.' * (30 - filled)}] "
        f"{state.done}/{state.target} done  {state.failed} failed  {state.in_flight} in flight  "
        f"elapsed {elapsed:.0f}s  remaining {'~%.0fs' % remaining if remaining is not None else '?'}"
    )
    best = "  ".join(
        f"<= {budget:g}s: {t.accuracy:.1%}" if t else f"<= {budget:g}s: -" for budget, t in state.best.items()
    )
    return Group(line, f"best accuracy so far  {best}")


@app.command()
@friendly_errors
def tune(
    spec_path: Annotated[str, typer.Argument(metavar="SPEC.yaml", help="study spec (YAML)")],
    storage: StorageOption = None,
    ray_address: Annotated[str | None, typer.Option("--ray-address", help="join this Ray cluster")] = None,
    n_trials: Annotated[int | None, typer.Option("--n-trials", help="total trials for the study (overrides the spec)")] = None,
) -> None:
    """Run or resume the study named in the spec; print its frontier and best config per budget."""
    from latts.optimizer.controller import Controller
    from latts.optimizer.frontier import pareto_front
    from latts.spec import load_spec

    spec = load_spec(spec_path)
    if n_trials is not None and n_trials < 1:
        raise UsageError(f"--n-trials must be at least 1, got {n_trials}")
    url = storage or spec.storage or os.environ.get("LATTS_STORAGE") or DEFAULT_STORAGE
    repo = _repository(url)
    controller = Controller(spec, repo, url, n_trials)
    with Live(console=err, refresh_per_second=4, transient=False) as live:
        state = controller.run(ray_address, on_update=lambda s: live.update(_progress_view(s, spec)))
    if not err.is_terminal:  # rich ends its last frame without a newline when it cannot redraw
        err.line()
    if state.exhausted:
        err.print(f"the search space holds fewer distinct configs than {state.target}; stopped after {state.done}")
    trials = repo.trials(spec.study)
    from latts.optimizer.controller import INTERRUPTED

    for t in trials:
        if t.state == "FAILED" and t.fail_reason != INTERRUPTED:
            err.print(f"trial {t.number} ({t.config.label()}) failed: {t.fail_reason}", markup=False)
    out.print(trials_table(f"Frontier of {spec.study}", pareto_front(trials, spec.latency_statistic), spec.latency_statistic))
    out.print(best_table(state.best, spec.latency_statistic))


@app.command()
@friendly_errors
def status(
    study: Annotated[str | None, typer.Option("--study")] = None,
    storage: StorageOption = None,
    as_json: JsonOption = False,
) -> None:
    """Studies and their trial counts by state."""
    repo = _repository(storage)
    studies = repo.studies()
    if study is not None:
        studies = [s for s in studies if s.name == study]
        if not studies:
            raise UsageError(f"no study named {study!r} in this storage; `latts status` lists them")
    if as_json:
        from latts.answers import studies_document

        _print_json(studies_document(studies))
        return
    table = Table(title="Studies", title_justify="left")
    for column in ("study", "hardware", "model", "benchmark", "complete", "failed", "running"):
        table.add_column(column)
    for s in studies:
        table.add_row(s.name, s.hardware, s.model, s.benchmark, *(str(s.counts.get(k, 0)) for k in ("COMPLETE", "FAILED", "RUNNING")))
    out.print(table)


def _study_trials(repo, study: str) -> list[TrialSummary]:
    from latts import answers

    try:
        return answers.study_trials(repo, study)
    except answers.UnknownStudy as exc:
        raise UsageError(f"{exc}; `latts status` lists them") from None


@app.command()
@friendly_errors
def frontier(
    study: Annotated[str, typer.Option("--study")],
    storage: StorageOption = None,
    statistic: StatisticOption = "mean",
    as_json: JsonOption = False,
) -> None:
    """The Pareto-optimal trials: no other trial is both more accurate and faster."""
    from latts.answers import frontier_document
    from latts.optimizer.frontier import pareto_front

    _check_statistic(statistic)
    trials = _study_trials(_repository(storage), study)
    if as_json:
        _print_json(frontier_document(study, trials, statistic))
    else:
        out.print(trials_table(f"Frontier of {study} ({statistic} latency)", pareto_front(trials, statistic), statistic))


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
    as_json: JsonOption = False,
) -> None:
    """The most accurate config within the budget; exit code 3 when none fits."""
    from latts.answers import best_document
    from latts.optimizer.frontier import best_within

    _check_budget(budget)
    _check_statistic(statistic)
    repo = _repository(storage)
    if study is not None:
        trials = _study_trials(repo, study)
    elif hardware and model and benchmark:
        trials = repo.trials(hardware=hardware, model=model, benchmark=benchmark)
    else:
        raise UsageError("give --study NAME, or all of --hardware, --model and --benchmark")
    chosen = best_within(trials, budget, statistic)
    if as_json:
        _print_json(best_document(trials, budget, statistic))
    elif chosen:
        out.print(trials_table(f"Best within {budget:g} s ({statistic} latency)", [chosen], statistic))
    else:
        err.print(f"no completed trial fits {budget:g} s ({statistic} latency)")
    if chosen is None:
        raise typer.Exit(EXIT_NO_FIT)


@app.command("demo-models")
def demo_models_command() -> None:
    """Train the tiny demo models on `arith` (cached; instant when already there)."""
    from latts import demo_models

    for name, path in demo_models.ensure_demo_models(log=lambda m: err.print(m)).items():
        out.print(f"{name}: {path}")


def _study_spec_and_trials(repo, study: str) -> tuple[dict[str, Any], list[TrialSummary]]:
    trials = _study_trials(repo, study)
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
) -> None:
    """Serving config for the most accurate config within the budget; exit code 3 when none fits."""
    from latts import export as exporting
    from latts.optimizer.frontier import best_within

    if fmt not in exporting.FORMATS:
        raise UsageError(f"--format {fmt!r} is not one of {', '.join(exporting.FORMATS)}")
    if fmt == "vllm-yaml" and output is not None and not output.endswith((".yaml", ".yml")):
        raise UsageError(f"-o {output!r}: `vllm serve --config` reads only .yaml or .yml files; name it so")
    _check_budget(budget)
    if statistic is not None:
        _check_statistic(statistic)
    spec, trials = _study_spec_and_trials(_repository(storage), study)
    statistic = statistic or spec.get("latency_statistic", "mean")
    chosen = best_within(trials, budget, statistic)
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
    from latts.plots import PlotError, plot_study

    if statistic is not None:
        _check_statistic(statistic)
    repo = _repository(storage)
    spec, trials = _study_spec_and_trials(repo, study)
    info = repo.study(study)
    statistic = statistic or spec.get("latency_statistic", "mean")
    title = f"{study}: {info.model} on {info.benchmark}, {info.hardware}" if info else study
    try:
        plot_study(trials, spec.get("budgets_s", []), statistic, output, title=title)
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

    from latts.api import create_app

    url = storage or os.environ.get("LATTS_STORAGE") or DEFAULT_STORAGE
    try:
        make_url(url)  # a typo fails now; a database that is down only makes requests answer 503
    except ArgumentError:
        raise UsageError(f"cannot parse storage URL {url!r}; use sqlite:///FILE or postgresql+psycopg://USER@HOST:PORT/DB") from None
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
