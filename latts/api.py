"""Read-only HTTP query service over a latts database (`latts serve`).

Every answer is the same JSON document the CLI prints with `--json` (built by latts.answers).
Errors are `{"detail": "<one line>"}`: 422 bad parameters, 404 unknown study, 503 storage down.
When no completed trial fits the budget, /v1/best answers 404 with its usual document
(`"best": null`) plus `detail`, mirroring the CLI's exit code 3.
"""

from __future__ import annotations

import threading
from typing import Annotated, Any, Literal

from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from latts import answers
from latts.storage import Repository, StorageError

Statistic = Annotated[Literal["mean", "p50", "p90", "p99"], Query(description="latency statistic the budget applies to")]
StudyName = Annotated[str, Query(min_length=1, description="study name, as `GET /v1/studies` lists them")]

_ERRORS: dict[int | str, dict[str, Any]] = {
    422: {"description": "bad parameters: `{detail}` names the parameter"},
    503: {"description": "the database is down or unreachable"},
}


def _error(status: int, detail: str) -> JSONResponse:
    return JSONResponse(status_code=status, content={"detail": detail})


def _validation_message(exc: RequestValidationError) -> str:
    # One line like the CLI's errors: the first problem, with the parameter it is about.
    error = exc.errors()[0]
    where = ".".join(str(part) for part in error["loc"] if part not in ("query", "body"))
    return f"{where}: {error['msg']}" if where else str(error["msg"])


def create_app(storage_url: str) -> FastAPI:
    app = FastAPI(
        title="latts",
        summary="Latency-optimal test-time-scaling configs, read from a latts database",
        version="0.1.0",
    )
    # Opened on first use, not here: the service starts (and reports 503) while the database is down.
    opened: list[Repository] = []
    lock = threading.Lock()

    def repository() -> Repository:
        with lock:
            if not opened:
                opened.append(Repository(storage_url))
            return opened[0]

    @app.exception_handler(StorageError)
    async def storage_down(_request: Request, exc: StorageError) -> JSONResponse:
        return _error(503, str(exc))

    @app.exception_handler(RequestValidationError)
    async def bad_parameters(_request: Request, exc: RequestValidationError) -> JSONResponse:
        return _error(422, _validation_message(exc))

    @app.exception_handler(answers.UnknownStudy)
    async def unknown_study(_request: Request, exc: answers.UnknownStudy) -> JSONResponse:
        return _error(404, f"{exc}; GET /v1/studies lists them")

    @app.exception_handler(answers.MissingScope)
    async def missing_scope(_request: Request, exc: answers.MissingScope) -> JSONResponse:
        return _error(422, f"{exc}: ?study=NAME or ?hardware=H&model=M&benchmark=B")

    @app.get("/healthz", responses={503: _ERRORS[503]})
    def healthz() -> dict[str, Any]:
        """Up, and the database answers."""
        repo = repository()
        repo.studies()
        return {"status": "ok", "storage": repo.url}

    @app.get("/v1/studies", responses={503: _ERRORS[503]})
    def studies() -> dict[str, Any]:
        """Every study with its hardware, model, benchmark and trial counts by state (as `latts status --json`)."""
        return answers.studies_document(repository().studies())

    @app.get("/v1/frontier", responses={404: {"description": "unknown study"}, **_ERRORS})
    def frontier(study: StudyName, statistic: Statistic = "mean") -> dict[str, Any]:
        """The study's Pareto-optimal trials, fastest first (as `latts frontier --json`)."""
        return answers.frontier_document(study, answers.study_trials(repository(), study), statistic)

    @app.get(
        "/v1/best",
        responses={404: {"description": "unknown study, or no completed trial fits (then `best` is null)"}, **_ERRORS},
    )
    def best(
        budget_s: Annotated[float, Query(gt=0, allow_inf_nan=False, description="latency budget in seconds")],
        study: Annotated[str | None, Query(min_length=1)] = None,
        hardware: Annotated[str | None, Query(min_length=1)] = None,
        model: Annotated[str | None, Query(min_length=1)] = None,
        benchmark: Annotated[str | None, Query(min_length=1)] = None,
        statistic: Statistic = "mean",
    ) -> Any:
        """The most accurate config within the budget, of one study or of every study for one
        hardware/model/benchmark (as `latts best --json`)."""
        trials = answers.scope_trials(repository(), study, hardware, model, benchmark)
        document = answers.best_document(trials, budget_s, statistic)
        if document["best"] is None:
            detail = f"no completed trial fits {budget_s:g} s ({statistic} latency)"
            return JSONResponse(status_code=404, content={**document, "detail": detail})
        return document

    return app
