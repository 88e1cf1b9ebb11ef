"""latts' schema migrations (Alembic), shipped inside the package.

`HEAD` is the revision this latts writes and reads; `Repository` compares a database's version row
with it on every open, without loading Alembic. env.py says how to add a revision.
"""

from pathlib import Path

LOCATION = Path(__file__).parent
# Alembic's bookkeeping table for latts' own tables; Optuna keeps `alembic_version` in the same database.
VERSION_TABLE = "latts_alembic_version"
HEAD = "3d0c5e7a1b94"  # the newest file in versions/; tests/test_schema.py fails when it is not
