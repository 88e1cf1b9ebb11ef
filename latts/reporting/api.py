"""Read-only HTTP query service over a latts database (`latts serve`).

Every answer is the same document the CLI prints with `--json` (latts.reporting.documents), declared
as the route's response model so that /openapi.json documents it. Errors are `{"detail": "<one
line>"}`: 422 bad parameters, 404 unknown study, 503 storage down. When no completed trial fits the
budget, /v1/best answers 404 with its usual document (`"best": null`) plus `detail`, mirroring the
CLI's exit code 3.
"""

from __future__ import annotations

import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from importlib import metadata
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel

from latts.core.records import LatencyStatistic
from latts.reporting import documents
from latts.reporting.documents import BestDocument, FrontierDocument, StudiesDocument
from latts.storage import Repository, StorageError

Statistic = Annotated[LatencyStatistic, Query(description="latency statistic the budget applies to")]
StudyName = Annotated[str, Query(min_length=1, description="study name, as `GET /v1/studies` lists them")]
IncludeLossy = Annotated[bool, Query(description="also consider speculative trials whose answers differ from no speculation")]


class ErrorDocument(BaseModel):
    detail: str


class NoFitDocument(BestDocument):
    """/v1/best when nothing fits: the usual document with `best: null`, and why."""

    detail: str


class Health(BaseModel):
    status: str
    storage: str  # the URL, password hidden


_ERRORS: dict[int | str, dict[str, Any]] = {
    422: {"model": ErrorDocument, "description": "bad parameters: `detail` names the parameter"},
    503: {"model": ErrorDocument, "description": "the database is down or unreachable"},
}
_UNKNOWN_STUDY = {"model": ErrorDocument, "description": "unknown study"}


class _Storage:
    """The service's database handle: opened on first use, so the service starts (and answers 503)
    while the database is down, and recovers when it returns."""

    def __init__(self, url: str) -> None:
        self.url = url
        self._repo: Repository | None = None
        self._lock = threading.Lock()

    def repository(self) -> Repository:
        with self._lock:
            if self._repo is None:
                self._repo = Repository(self.url, create=False)
            return self._repo

    def close(self) -> None:
        if self._repo is not None:
            self._repo.close()


def _error(status: int, detail: str) -> JSONResponse:
    return JSONResponse(status_code=status, content={"detail": detail})


def _validation_message(exc: RequestValidationError) -> str:
    # One line like the CLI's errors: the first problem, with the parameter it is about.
    error = exc.errors()[0]
    where = ".".join(str(part) for part in error["loc"] if part not in ("query", "body"))
    return f"{where}: {error['msg']}" if where else str(error["msg"])


def _repository(request: Request) -> Repository:
    return request.app.state.storage.repository()


Repo = Annotated[Repository, Depends(_repository)]


def create_app(storage_url: str) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.storage = _Storage(storage_url)
        yield
        app.state.storage.close()

    app = FastAPI(
        title="latts",
        summary="Latency-optimal test-time-scaling configs, read from a latts database",
        version=metadata.version("latts"),
        lifespan=lifespan,
    )

    @app.exception_handler(StorageError)
    async def storage_down(_request: Request, exc: StorageError) -> JSONResponse:
        return _error(503, str(exc))

    @app.exception_handler(RequestValidationError)
    async def bad_parameters(_request: Request, exc: RequestValidationError) -> JSONResponse:
        return _error(422, _validation_message(exc))

    @app.exception_handler(documents.UnknownStudy)
    async def unknown_study(_request: Request, exc: documents.UnknownStudy) -> JSONResponse:
        return _error(404, f"{exc}; GET /v1/studies lists them")

    @app.exception_handler(documents.MissingScope)
    async def missing_scope(_request: Request, exc: documents.MissingScope) -> JSONResponse:
        return _error(422, f"{exc}: ?study=NAME or ?hardware=H&model=M&benchmark=B")

    @app.get("/healthz", responses={503: _ERRORS[503]})
    def healthz(repo: Repo) -> Health:
        """Up, and the database answers."""
        repo.studies()
        return Health(status="ok", storage=repo.url)

    @app.get("/v1/studies", responses={503: _ERRORS[503]})
    def studies(repo: Repo) -> StudiesDocument:
        """Every study with its hardware, model, benchmark and trial counts by state (as `latts status --json`)."""
        return documents.studies_document(repo.studies())

    @app.get("/v1/frontier", responses={404: _UNKNOWN_STUDY, **_ERRORS})
    def frontier(
        repo: Repo, study: StudyName, statistic: Statistic = "mean", include_lossy: IncludeLossy = False
    ) -> FrontierDocument:
        """The study's Pareto-optimal trials, fastest first (as `latts frontier --json`)."""
        return documents.frontier_document(study, documents.study_trials(repo, study), statistic, include_lossy)

    @app.get(
        "/v1/best",
        response_model=BestDocument,
        responses={
            404: {"model": NoFitDocument, "description": "unknown study (`detail` only), or no completed trial fits"},
            **_ERRORS,
        },
    )
    def best(
        repo: Repo,
        budget_s: Annotated[float, Query(gt=0, allow_inf_nan=False, description="latency budget in seconds")],
        study: Annotated[str | None, Query(min_length=1)] = None,
        hardware: Annotated[str | None, Query(min_length=1)] = None,
        model: Annotated[str | None, Query(min_length=1)] = None,
        benchmark: Annotated[str | None, Query(min_length=1)] = None,
        statistic: Statistic = "mean",
        include_lossy: IncludeLossy = False,
    ) -> Any:
        """The most accurate config within the budget, of one study or of every study for one
        hardware/model/benchmark (as `latts best --json`)."""
        trials = documents.scope_trials(repo, study, hardware, model, benchmark)
        answers = documents.study_answers(repo, study, statistic)
        document = documents.best_document(trials, budget_s, statistic, include_lossy, answers)
        if document.best is None:
            detail = f"no completed trial fits {budget_s:g} s ({statistic} latency)"
            no_fit = NoFitDocument(**dict(document), detail=detail)
            return JSONResponse(status_code=404, content=no_fit.model_dump(mode="json"))
        return document

    return app
