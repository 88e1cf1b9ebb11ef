"""Alembic's environment for latts' own tables (`latts_*`), beside Optuna's in the same database.

latts runs it itself (latts.storage.repository): on a database without latts' tables, and in
`latts upgrade`, on the connection that holds the schema lock. Every open compares the database's
row in `latts_alembic_version` with `HEAD` and refuses any other revision. Migrations go forward
only; `latts upgrade` tells users to back up first.

Adding a revision (after changing latts/storage/models.py), in this folder:

    alembic revision -m "what changes"

then write its `upgrade()`, and set `HEAD` in __init__.py to its id (tests/test_schema.py checks
both that and that the migrated tables match the models). Alembic drafts `upgrade()` from a
database at the previous head, which any latts command of the previous commit creates:

    latts status --storage sqlite:////tmp/head.db
    alembic -x storage=sqlite:////tmp/head.db revision --autogenerate -m "what changes"
"""

from alembic import context
from sqlalchemy import Connection, create_engine

from latts.storage.migrations import VERSION_TABLE
from latts.storage.models import Base


def _latts_only(name: str | None, type_: str, _parents: object) -> bool:
    # Autogenerate looks at latts' tables only: Optuna's share the database.
    return type_ != "table" or (name or "").startswith("latts_")


def run(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=Base.metadata,
        version_table=VERSION_TABLE,
        include_name=_latts_only,
        render_as_batch=True,  # SQLite alters most things by copying the table; batch operations do that
    )
    with context.begin_transaction():
        context.run_migrations()


connection = context.config.attributes.get("connection")
if connection is not None:
    run(connection)
else:
    storage = context.get_x_argument(as_dictionary=True).get("storage")
    if storage is None:
        raise SystemExit("give the database with -x storage=URL; users run `latts upgrade --storage URL` instead")
    with create_engine(storage).connect() as connection:
        run(connection)
