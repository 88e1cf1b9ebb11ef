"""Schema versions: every open checks the database's latts schema revision; `latts upgrade` migrates.

An earlier release's database is simulated as it was written: the baseline revision's tables and
no version row. Each test runs on an SQLite file and on a fresh PostgreSQL schema.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap
from datetime import UTC, datetime

import pytest
from alembic import command as alembic_command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from fastapi.testclient import TestClient
from sqlalchemy import create_engine, inspect, text
from sqlalchemy.orm import Session

from latts.reporting.api import create_app
from latts.storage import Repository, StorageError, migrations, upgrade
from latts.storage.models import Base, Hardware, Study
from tests.conftest import pg_schema_url, run_latts
from tests.handmade import make_study

HEAD = migrations.HEAD
BASELINE = "92be9c63e316"  # the tables of releases before schema versions
OLD_CONFIG = {"branches": 4, "aggregator": "majority", "temperature": 0.8}
NEWER = "ffffffffffff"  # a revision only a newer latts would know


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def new_url(request, tmp_path):
    """A function making URLs of fresh, empty databases of one backend."""
    if request.param == "sqlite":
        counter = iter(range(100))
        return lambda: f"sqlite:///{tmp_path / f'latts{next(counter)}.db'}"
    database = request.getfixturevalue("pg_database")
    return lambda: pg_schema_url(database)


def _version(url: str) -> list[str]:
    engine = create_engine(url)
    with engine.connect() as conn:
        rows = conn.execute(text(f"SELECT version_num FROM {migrations.VERSION_TABLE}")).scalars().all()
    engine.dispose()
    return rows


def _set_version(url: str, version: str) -> None:
    engine = create_engine(url)
    with engine.begin() as conn:
        conn.execute(text(f"UPDATE {migrations.VERSION_TABLE} SET version_num = :v"), {"v": version})
    engine.dispose()


def _earlier_release(url: str) -> None:
    """A database as latts wrote it before schema versions: the baseline's tables, a study with a
    trial, no version row."""
    engine = create_engine(url)
    with engine.begin() as conn:
        config = Config()
        config.set_main_option("script_location", str(migrations.LOCATION))
        config.attributes["connection"] = conn
        alembic_command.upgrade(config, BASELINE)
        conn.execute(text(f"DROP TABLE {migrations.VERSION_TABLE}"))
    with Session(engine) as s, s.begin():
        hardware = Hardware(name="cpu-2core", detected={"cpu_count": 2}, created_at=datetime.now(UTC))
        s.add(hardware)
        s.flush()
        study = Study(name="old", hardware_id=hardware.id, model="m", benchmark="arith", spec={"study": "old"})
        s.add(study)
        s.flush()
        s.execute(
            text("INSERT INTO latts_trials (study_id, number, config, state, started_at) VALUES (:s, 0, :c, 'FAILED', :t)"),
            {"s": study.id, "c": json.dumps(OLD_CONFIG), "t": datetime.now(UTC).replace(tzinfo=None)},
        )
    engine.dispose()


def _schema(url: str) -> dict:
    """Everything the database says about latts' tables, comparable across two databases."""
    engine = create_engine(url)
    with engine.connect() as conn:
        insp = inspect(conn)
        tables = sorted(t for t in insp.get_table_names() if t.startswith("latts_") and t != migrations.VERSION_TABLE)
        described = {
            t: {
                # By name: a revision adds its columns at the end, the models may declare them anywhere.
                "columns": sorted((c["name"], str(c["type"]), c["nullable"], c.get("default")) for c in insp.get_columns(t)),
                "pk": insp.get_pk_constraint(t)["constrained_columns"],
                "fks": sorted((fk["constrained_columns"], fk["referred_table"], fk["options"]) for fk in insp.get_foreign_keys(t)),
                "indexes": sorted(
                    (i["name"], i["column_names"], i["unique"], {k: str(v) for k, v in i.get("dialect_options", {}).items()})
                    for i in insp.get_indexes(t)
                ),
                "unique": sorted((u["name"] or "", u["column_names"]) for u in insp.get_unique_constraints(t)),
                "checks": sorted((c["name"], c["sqltext"]) for c in insp.get_check_constraints(t)),
            }
            for t in tables
        }
    engine.dispose()
    return described


def test_head_is_the_newest_revision():
    config = Config()
    config.set_main_option("script_location", str(migrations.LOCATION))
    heads = ScriptDirectory.from_config(config).get_heads()
    assert heads == [HEAD], f"set HEAD = {heads[0]!r} in latts/storage/migrations/__init__.py"


def test_fresh_database_is_stamped_at_head_and_matches_the_models(new_url):
    url = new_url()
    Repository(url).close()
    assert _version(url) == [HEAD]
    engine = create_engine(url)
    with engine.connect() as conn:
        opts = {"version_table": migrations.VERSION_TABLE, "include_name": lambda name, kind, _: kind != "table" or name.startswith("latts_")}
        context = MigrationContext.configure(conn, opts=opts)
        assert compare_metadata(context, Base.metadata) == [], "models changed without a revision; see migrations/env.py"
    engine.dispose()


def test_the_revisions_create_exactly_what_the_models_declare(new_url):
    migrated, earlier = new_url(), new_url()
    Repository(migrated).close()
    engine = create_engine(earlier)
    Base.metadata.create_all(engine)
    engine.dispose()
    assert _schema(migrated) == _schema(earlier)


def test_opening_at_head_loads_no_alembic(new_url):
    url = new_url()
    Repository(url).close()
    check = "import sys; from latts.storage import Repository; Repository(sys.argv[1]).studies(); print('alembic' in sys.modules)"
    proc = subprocess.run([sys.executable, "-c", check, url], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "False"


READ_COMMANDS = [
    ["status"],
    ["frontier", "--study", "old"],
    ["best", "--study", "old", "--budget", "1"],
    ["export", "--study", "old", "--budget", "1", "--format", "json"],
    ["plot", "--study", "old", "-o", "old.png"],
]


def test_unversioned_database_is_refused_until_upgraded(new_url, tmp_path):
    url = new_url()
    _earlier_release(url)
    shown = url  # no password here: messages show the URL as given
    for command in READ_COMMANDS:
        proc = run_latts(*command, "--storage", url, cwd=tmp_path)
        assert proc.returncode == 2, (command, proc.stdout, proc.stderr)
        line, = proc.stderr.strip().splitlines()
        assert line == (
            f"error: storage '{shown}' holds latts schema unversioned, this latts needs {HEAD}; "
            f"run `latts upgrade --storage {shown}` (back it up first)"
        ), command
        assert proc.stdout == ""
    with TestClient(create_app(url)) as client:
        response = client.get("/v1/studies")
        assert response.status_code == 503 and "latts upgrade" in response.json()["detail"]
    assert not (tmp_path / "old.png").exists()

    proc = run_latts("upgrade", "--storage", url, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == f"storage '{shown}': latts schema unversioned -> {HEAD}"
    assert _version(url) == [HEAD]

    proc = run_latts("status", "--json", "--storage", url, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    (study,) = json.loads(proc.stdout)["studies"]
    assert (study["name"], study["hardware"], study["model"]) == ("old", "cpu-2core", "m")
    engine = create_engine(url)
    with engine.connect() as conn:  # the upgrade gave the old trial its config's key
        assert conn.execute(text("SELECT key FROM latts_trials")).scalars().all() == [json.dumps(OLD_CONFIG, sort_keys=True)]
    engine.dispose()

    proc = run_latts("upgrade", "--storage", url, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == f"storage '{shown}' is at latts schema {HEAD} already; nothing to do"


def test_upgrade_of_an_empty_database_creates_the_tables(new_url, tmp_path):
    url = new_url()
    proc = run_latts("upgrade", "--storage", url, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == f"storage '{url}': created latts' tables at schema {HEAD}"
    assert _version(url) == [HEAD]


def test_a_newer_latts_database_is_refused(new_url, tmp_path):
    url = new_url()
    make_study(url, tmp_path).close()
    _set_version(url, NEWER)
    for command in (["status"], ["upgrade"]):
        proc = run_latts(*command, "--storage", url, cwd=tmp_path)
        assert proc.returncode == 2, (command, proc.stderr)
        line, = proc.stderr.strip().splitlines()
        assert line.startswith(f"error: storage '{url}' holds latts schema {NEWER}, which this latts does not know"), line
        assert "a newer latts wrote it; upgrade latts" in line
    assert _version(url) == [NEWER]


SECOND_REVISION = '''
"""a second revision, as the next engineer adds one"""

import sqlalchemy as sa
from alembic import op

revision = "0000000000b2"
down_revision = "{baseline}"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("latts_trials") as batch:
        batch.add_column(sa.Column("lease_owner", sa.Text(), nullable=True))
'''


@pytest.fixture
def second_revision(tmp_path, monkeypatch):
    """Makes this latts one with a revision more than the package ships (a column added to latts_trials)."""

    def install() -> str:
        location = tmp_path / "migrations"
        shutil.copytree(migrations.LOCATION, location, ignore=shutil.ignore_patterns("__pycache__"))
        (location / "versions" / "0000000000b2_second.py").write_text(textwrap.dedent(SECOND_REVISION.format(baseline=HEAD)))
        monkeypatch.setattr(migrations, "LOCATION", location)
        monkeypatch.setattr(migrations, "HEAD", "0000000000b2")
        return "0000000000b2"

    return install


def test_an_older_revision_is_refused_then_upgraded_with_rows_intact(new_url, tmp_path, second_revision):
    url = new_url()
    make_study(url, tmp_path).close()  # at the baseline
    second_revision = second_revision()
    with pytest.raises(StorageError) as refused:
        Repository(url)
    assert str(refused.value) == (
        f"storage '{url}' holds latts schema {HEAD}, this latts needs {second_revision}; "
        f"run `latts upgrade --storage {url}` (back it up first)"
    )
    assert upgrade(url) == (HEAD, second_revision)
    assert _version(url) == [second_revision]
    repo = Repository(url)
    assert [t.number for t in repo.trials("hand")] == [0, 1, 2, 3, 4]
    repo.close()
    engine = create_engine(url)
    with engine.connect() as conn:
        assert "lease_owner" in {c["name"] for c in inspect(conn).get_columns("latts_trials")}
    engine.dispose()


def test_a_fresh_database_runs_every_revision(new_url, second_revision):
    head = second_revision()
    url = new_url()
    Repository(url).close()
    assert _version(url) == [head]
