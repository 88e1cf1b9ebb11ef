"""The read-only HTTP API over real HTTP: uvicorn on loopback, httpx as the client."""

from __future__ import annotations

import json
import re
import select
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from importlib import metadata

import httpx
import psycopg
import pytest
import uvicorn

from latts.reporting.api import create_app
from tests.conftest import PG_SERVER, pg_schema_url, run_latts
from tests.handmade import HandTrial, config, make_study


@contextmanager
def serving(storage_url: str):
    """The app on a free loopback port in a background thread; yields its base URL."""
    sock = socket.create_server(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(create_app(storage_url), log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "uvicorn did not start"
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(10)


@pytest.fixture(scope="module")
def hand(tmp_path_factory):
    folder = tmp_path_factory.mktemp("api")
    url = f"sqlite:///{folder / 'latts.db'}"
    repo = make_study(url, folder)
    # A second study on the same hardware, model and benchmark, with one faster and better trial.
    better = HandTrial(config(2), (0.2, 0.2, 0.2, 0.2), (True, True, True, False))
    make_study(url, folder, name="hand2", trials=(better,))
    with serving(url) as base, httpx.Client(base_url=base, timeout=30) as client:
        yield url, repo, client


def _numbers(trials: list[dict]) -> list[tuple[str, int]]:
    return [(t["study"], t["number"]) for t in trials]


def test_health_and_studies(hand):
    url, repo, client = hand
    health = client.get("/healthz")
    assert health.status_code == 200 and health.json()["status"] == "ok"
    studies = client.get("/v1/studies").json()["studies"]
    assert [s["name"] for s in studies] == ["hand", "hand2"]
    assert studies[0]["counts"] == {"RUNNING": 0, "COMPLETE": 4, "FAILED": 1}
    assert studies[0]["hardware"] == "cpu-2core" and studies[0]["benchmark"] == "arith"


def test_frontier(hand):
    _, _, client = hand
    doc = client.get("/v1/frontier", params={"study": "hand"}).json()
    assert doc["study"] == "hand" and doc["statistic"] == "mean"
    assert _numbers(doc["frontier"]) == [("hand", 0), ("hand", 1), ("hand", 3)]
    assert [t["latency_s"]["mean"] for t in doc["frontier"]] == pytest.approx([0.1, 0.3, 1.0])
    # p90 latency of #1 is 0.37 s, so under p90 #2 (0.69 s, also 50%) still loses to it.
    p90 = client.get("/v1/frontier", params={"study": "hand", "statistic": "p90"}).json()
    assert p90["statistic"] == "p90" and _numbers(p90["frontier"]) == [("hand", 0), ("hand", 1), ("hand", 3)]


@pytest.mark.parametrize("budget, number", [(0.15, 0), (0.5, 1), (0.99, 1), (1.0, 3), (100, 3)])
def test_best_within_study(hand, budget, number):
    _, _, client = hand
    response = client.get("/v1/best", params={"study": "hand", "budget_s": budget})
    assert response.status_code == 200, response.text
    doc = response.json()
    assert (doc["budget_s"], doc["statistic"], doc["best"]["number"]) == (budget, "mean", number)
    assert doc["best"]["config"]["branches"] == [1, 4, 4, 8][number]


def test_best_across_studies_for_hardware_model_benchmark(hand):
    _, repo, client = hand
    model = repo.study("hand").model
    params = {"hardware": "cpu-2core", "model": model, "benchmark": "arith"}
    doc = client.get("/v1/best", params={**params, "budget_s": 0.5}).json()
    assert (doc["best"]["study"], doc["best"]["number"], doc["best"]["accuracy"]) == ("hand2", 0, 0.75)
    doc = client.get("/v1/best", params={**params, "budget_s": 5}).json()
    assert (doc["best"]["study"], doc["best"]["number"]) == ("hand", 3)
    unknown = client.get("/v1/best", params={**params, "hardware": "h100x1", "budget_s": 5})
    assert unknown.status_code == 404 and unknown.json()["best"] is None


def test_nothing_fits_is_404_with_null_best(hand):
    _, _, client = hand
    response = client.get("/v1/best", params={"study": "hand", "budget_s": 0.05})
    assert response.status_code == 404
    doc = response.json()
    assert doc["best"] is None and doc["budget_s"] == 0.05 and "0.05" in doc["detail"]


@pytest.mark.parametrize(
    "path, params, word",
    [
        ("/v1/best", {"study": "hand", "budget_s": "0"}, "budget_s"),
        ("/v1/best", {"study": "hand", "budget_s": "-1"}, "budget_s"),
        ("/v1/best", {"study": "hand", "budget_s": "abc"}, "budget_s"),
        ("/v1/best", {"study": "hand", "budget_s": "nan"}, "budget_s"),
        ("/v1/best", {"study": "hand", "budget_s": "inf"}, "budget_s"),
        ("/v1/best", {"study": "hand"}, "budget_s"),
        ("/v1/best", {"study": "hand", "budget_s": "1", "statistic": "p42"}, "statistic"),
        ("/v1/best", {"budget_s": "1"}, "study"),
        ("/v1/best", {"budget_s": "1", "hardware": "cpu-2core", "model": "m"}, "benchmark"),
        ("/v1/frontier", {}, "study"),
        ("/v1/frontier", {"study": "hand", "statistic": "median"}, "statistic"),
    ],
)
def test_bad_parameters_are_422_with_a_one_line_message(hand, path, params, word):
    _, _, client = hand
    response = client.get(path, params=params)
    assert response.status_code == 422, response.text
    detail = response.json()["detail"]
    assert isinstance(detail, str) and "\n" not in detail and word in detail, detail


@pytest.mark.parametrize("path", ["/v1/frontier?study=nope", "/v1/best?study=nope&budget_s=1"])
def test_unknown_study_is_404(hand, path):
    _, _, client = hand
    response = client.get(path)
    assert response.status_code == 404
    assert "'nope'" in response.json()["detail"]


def test_openapi_schema(hand):
    _, _, client = hand
    schema = client.get("/openapi.json").json()
    assert schema["info"]["version"] == metadata.version("latts")
    assert {"/healthz", "/v1/studies", "/v1/frontier", "/v1/best"} <= set(schema["paths"])
    params = {p["name"]: p for p in schema["paths"]["/v1/best"]["get"]["parameters"]}
    assert params["budget_s"]["required"] and params["budget_s"]["schema"]["exclusiveMinimum"] == 0
    assert set(params) == {"budget_s", "study", "hardware", "model", "benchmark", "statistic", "include_lossy"}
    # Every answer is documented: a named schema for each success, and for the no-fit 404 of /v1/best.
    answers = {path: ops["get"]["responses"]["200"]["content"]["application/json"]["schema"] for path, ops in schema["paths"].items()}
    assert answers == {
        "/healthz": {"$ref": "#/components/schemas/Health"},
        "/v1/studies": {"$ref": "#/components/schemas/StudiesDocument"},
        "/v1/frontier": {"$ref": "#/components/schemas/FrontierDocument"},
        "/v1/best": {"$ref": "#/components/schemas/BestDocument"},
    }
    no_fit = schema["paths"]["/v1/best"]["get"]["responses"]["404"]["content"]["application/json"]["schema"]
    assert no_fit == {"$ref": "#/components/schemas/NoFitDocument"}
    trial = schema["components"]["schemas"]["TrialSummary"]["properties"]
    assert {"accuracy", "accuracy_ci", "latency_s", "config", "state", "mean_acceptance_length"} <= set(trial)


@pytest.mark.parametrize("statistic, number", [("mean", 1), ("p90", 0)])
def test_best_cli_applies_the_statistic(hand, statistic, number):
    # Trial #1: mean latency 0.3 s but p90 0.37 s, so within 0.33 s it is the answer by mean only.
    url, _, _ = hand
    proc = run_latts("best", "--study", "hand", "--budget", "0.33", "--statistic", statistic, "--json", "--storage", url)
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert (doc["statistic"], doc["best"]["number"]) == (statistic, number)


def test_closed_database_port_is_503():
    with serving("postgresql+psycopg://postgres@127.0.0.1:1/test") as base:
        for path in ("/healthz", "/v1/studies", "/v1/frontier?study=x", "/v1/best?study=x&budget_s=1"):
            response = httpx.get(base + path, timeout=30)
            assert response.status_code == 503, (path, response.text)
            assert "127.0.0.1:1" in response.json()["detail"]


def test_missing_sqlite_file_is_503_until_tune_creates_it(tmp_path):
    db = tmp_path / "latts.db"
    with serving(f"sqlite:///{db}") as base:
        response = httpx.get(base + "/v1/studies", timeout=30)
        assert response.status_code == 503 and f"no database at {db}" in response.json()["detail"]
        assert not db.exists()  # a read-only service never creates the database
        make_study(f"sqlite:///{db}", tmp_path)
        assert [s["name"] for s in httpx.get(base + "/v1/studies", timeout=30).json()["studies"]] == ["hand"]


def test_dropped_tables_are_503_then_bad_input_still_422(tmp_path):
    url = f"sqlite:///{tmp_path / 'latts.db'}"
    make_study(url, tmp_path)
    with serving(url) as base:
        assert httpx.get(base + "/v1/studies").status_code == 200
        with sqlite3.connect(tmp_path / "latts.db") as conn:
            for table in (
                "latts_pool_scores", "latts_pool_samples", "latts_timed_problems", "latts_trials", "latts_generations",
                "latts_studies", "latts_hardware",
            ):
                conn.execute(f"DROP TABLE IF EXISTS {table}")
        response = httpx.get(base + "/v1/frontier", params={"study": "hand"})
        assert response.status_code == 503 and "no such table" in response.json()["detail"]
        assert httpx.get(base + "/v1/best", params={"study": "hand", "budget_s": "-1"}).status_code == 422


@pytest.mark.postgres
def test_dropped_postgresql_schema_is_503(pg_database, tmp_path):
    url = pg_schema_url(pg_database)
    make_study(url, tmp_path)
    with serving(url) as base:
        assert httpx.get(base + "/v1/best", params={"study": "hand", "budget_s": 1}).json()["best"]["number"] == 3
        schema = re.search(r"search_path%3D(\w+)", url).group(1)
        with psycopg.connect(f"{PG_SERVER}/{pg_database}", autocommit=True) as conn:
            conn.execute(f"DROP SCHEMA {schema} CASCADE")
        response = httpx.get(base + "/v1/best", params={"study": "hand", "budget_s": 1})
        assert response.status_code == 503, response.text


def _served_url(proc: subprocess.Popen, timeout: float = 60) -> str:
    """The URL `latts serve` announces on stderr."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([proc.stderr], [], [], 1)
        if ready:
            line = proc.stderr.readline()
            if match := re.search(r"http://[\d.]+:\d+", line):
                return match.group(0)
            assert line, f"latts serve exited: {proc.wait()}"
    raise AssertionError("latts serve announced no URL")


def test_latts_serve_answers_like_the_cli(hand):
    url, _, _ = hand
    proc = subprocess.Popen(
        [sys.executable, "-m", "latts", "serve", "--port", "0", "--storage", url], stderr=subprocess.PIPE, text=True
    )
    try:
        base = _served_url(proc)
        assert base.startswith("http://127.0.0.1:")  # loopback unless --host says otherwise
        with httpx.Client(base_url=base, timeout=30) as client:
            cli = run_latts("best", "--study", "hand", "--budget", "1", "--json", "--storage", url)
            assert cli.returncode == 0, cli.stderr
            assert client.get("/v1/best", params={"study": "hand", "budget_s": 1}).json() == json.loads(cli.stdout)
            cli = run_latts("frontier", "--study", "hand", "--json", "--storage", url)
            assert client.get("/v1/frontier", params={"study": "hand"}).json() == json.loads(cli.stdout)
            cli = run_latts("status", "--json", "--storage", url)
            assert client.get("/v1/studies").json() == json.loads(cli.stdout)
            # The port is taken now: a second server says so in one line.
            busy = run_latts("serve", "--port", base.rsplit(":", 1)[1], "--storage", url, timeout=60)
            assert busy.returncode == 2 and busy.stderr.strip().count("\n") == 0 and "cannot listen" in busy.stderr
    finally:
        proc.terminate()
        proc.wait(30)
