"""A database password in the storage URL never leaves it: not in messages, logs, stored rows,
exported files or API answers.

A PostgreSQL role with a password owns the schema the study lives in (the server here trusts
loopback, so the password is sent but not checked; what matters is where latts repeats it).
Commands that start engines (`tune`, `confirm`) are another test's.
"""

from __future__ import annotations

import os
import secrets
import traceback
from dataclasses import dataclass
from urllib.parse import quote

import psycopg
import pytest
from fastapi.testclient import TestClient

from latts.reporting.api import create_app
from latts.storage import Repository, StorageError, redact
from tests.conftest import PG_SERVER, run_latts
from tests.handmade import make_study


@dataclass(frozen=True)
class Secret:
    url: str
    password: str
    role: str
    database: str
    schema: str

    def with_database(self, database: str) -> str:
        return self.url.replace(f"/{self.database}?", f"/{database}?")


@pytest.fixture(scope="module")
def secret(pg_database):
    role, schema = f"latts_secret_{secrets.token_hex(3)}", f"s_{secrets.token_hex(4)}"
    password = f"S3cr3t-{secrets.token_hex(8)}"
    with psycopg.connect(f"{PG_SERVER}/{pg_database}", autocommit=True) as admin:
        admin.execute(f"CREATE ROLE {role} LOGIN PASSWORD '{password}'")
        admin.execute(f"CREATE SCHEMA {schema} AUTHORIZATION {role}")
    url = f"postgresql+psycopg://{role}:{password}@127.0.0.1:5432/{pg_database}?options=-csearch_path%3D{schema}"
    yield Secret(url, password, role, pg_database, schema)
    with psycopg.connect(f"{PG_SERVER}/{pg_database}", autocommit=True) as admin:
        admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = %s", (role,))
        admin.execute(f"DROP SCHEMA {schema} CASCADE")
        admin.execute(f"DROP ROLE {role}")


def _assert_hidden(secret: Secret, *texts: str) -> None:
    for text in texts:
        assert secret.password not in text, text
        assert quote(secret.password, safe="") not in text, text


def _full_text(error: BaseException) -> str:
    """The error as an uncaught one would be logged: message and every chained cause."""
    return "".join(traceback.format_exception(error))


@pytest.mark.postgres
def test_failing_opens_never_show_the_password(secret, tmp_path):
    unreachable = {
        "missing database": secret.with_database(f"{secret.database}_missing"),
        "closed port": secret.url.replace("127.0.0.1:5432", "127.0.0.1:1"),
        "unparseable": secret.url.replace("postgresql+psycopg://", "postgresql+psycopg//"),
    }
    for why, url in unreachable.items():
        with pytest.raises(StorageError) as err:
            Repository(url)
        _assert_hidden(secret, _full_text(err.value))
        assert "\n" not in str(err.value) and secret.role in str(err.value), (why, str(err.value))

        for command in (["status"], ["upgrade"], ["best", "--study", "s", "--budget", "1"]):
            by_flag = run_latts(*command, "--storage", url, cwd=tmp_path)
            by_env = run_latts(*command, cwd=tmp_path, env={**os.environ, "LATTS_STORAGE": url})
            for proc in (by_flag, by_env):
                assert proc.returncode == 2, (why, command, proc.stderr)
                _assert_hidden(secret, proc.stdout, proc.stderr)
                assert "***" in proc.stderr, (why, proc.stderr)

        if why != "unparseable":  # `latts serve` refuses that one before it serves
            with TestClient(create_app(url)) as client:
                response = client.get("/healthz")
                assert response.status_code == 503
                _assert_hidden(secret, response.text)


@pytest.mark.postgres
def test_a_study_read_through_a_password_url_never_shows_it(secret, tmp_path):
    # Stored as the controller stores it: the spec names its storage.
    repo = make_study(secret.url, tmp_path, storage=secret.url)
    assert repo.url == redact(secret.url) and "***" in repo.url
    assert repo.study_spec("hand")["storage"] == redact(secret.url)
    repo.close()

    commands = [
        ["status"],
        ["status", "--json"],
        ["frontier", "--study", "hand"],
        ["frontier", "--study", "hand", "--json"],
        ["best", "--study", "hand", "--budget", "1"],
        ["best", "--study", "hand", "--budget", "1", "--json"],
        ["export", "--study", "hand", "--budget", "1", "--format", "json"],
        ["export", "--study", "hand", "--budget", "1", "--format", "json", "-o", "request.json"],
        ["export", "--study", "hand", "--budget", "1", "--format", "vllm-yaml", "-o", "serve.yaml"],
        ["plot", "--study", "hand", "-o", "hand.html"],
        ["upgrade"],
    ]
    for command in commands:
        proc = run_latts(*command, "--storage", secret.url, cwd=tmp_path)
        assert proc.returncode == 0, (command, proc.stderr)
        _assert_hidden(secret, proc.stdout, proc.stderr)
    for name in ("request.json", "serve.yaml", "hand.html"):
        _assert_hidden(secret, (tmp_path / name).read_text())

    with TestClient(create_app(secret.url)) as client:
        health = client.get("/healthz")
        assert health.json() == {"status": "ok", "storage": redact(secret.url)}
        for path in ("/v1/studies", "/v1/frontier?study=hand", "/v1/best?study=hand&budget_s=1", "/v1/best?study=nope&budget_s=1", "/openapi.json"):
            response = client.get(path)
            assert response.status_code in (200, 404), (path, response.text)
            _assert_hidden(secret, response.text)

    # Every row of every table in the study's schema, as text.
    with psycopg.connect(f"{PG_SERVER}/{secret.database}", autocommit=True) as admin:
        tables = admin.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = %s", (secret.schema,)
        ).fetchall()
        assert len(tables) >= 9
        for (table,) in tables:
            rows = admin.execute(f'SELECT row_to_json(t)::text FROM {secret.schema}."{table}" t').fetchall()
            _assert_hidden(secret, *(row for (row,) in rows))


@pytest.mark.parametrize(
    ("text", "url", "expected"),
    [
        ("postgresql+psycopg://me:pw0rd@db:5432/latts", None, "postgresql+psycopg://me:***@db:5432/latts"),
        ("cannot open 'postgresql://me:p%40ss:x@db/l': refused", None, "cannot open 'postgresql://me:***@db/l': refused"),
        ("host=db user=me password='a b' dbname=l", None, "host=db user=me password=*** dbname=l"),
        ("password authentication failed for user \"me\"", "postgresql://me:pw0rd@db/l", "password authentication failed for user \"me\""),
        ("driver quoted pw0rd in its message", "postgresql://me:pw0rd@db/l", "driver quoted *** in its message"),
        ("driver quoted p@ss: and p%40ss%3A", "postgresql://me:p%40ss%3A@db/l", "driver quoted *** and ***"),
        # A password that is also a word of the message: hidden where it stands alone, not inside other words.
        ("role postgres on postgresql://postgres:postgres@db/postgres", "postgresql://postgres:postgres@db/postgres",
         "role *** on postgresql://***:***@db/***"),
        ("cannot parse 'postgresql+psycopg//me:pw0rd@db/l'", None, "cannot parse 'postgresql+psycopg//me:***@db/l'"),
        ("sqlite:////tmp/latts.db and postgresql://me@db:5432/l at 12:00:01 me@db", None, "sqlite:////tmp/latts.db and postgresql://me@db:5432/l at 12:00:01 me@db"),
        ("not a url", "not a url either", "not a url"),
    ],
)
def test_redact(text, url, expected):
    assert redact(text, url) == expected
