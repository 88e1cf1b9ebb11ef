"""controllers lease generations; a config once per study

Several `latts tune` processes may share a study: `latts_controllers` holds each with its heartbeat,
a generation names the controller that runs it, and a trial carries its config's key so that the
database refuses a second live trial of one config in a study.

Revision ID: fb5f247bac59
Revises: 92be9c63e316
Create Date: 2026-11-30 03:27:16.010836
"""

import json

import sqlalchemy as sa
from alembic import op

revision = "fb5f247bac59"
down_revision = "92be9c63e316"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "latts_controllers",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=512), nullable=False),
        sa.Column("study_id", sa.Integer(), nullable=False),
        sa.Column("host", sa.String(length=512), nullable=False),
        sa.Column("pid", sa.Integer(), nullable=False),
        sa.Column("started_at", sa.DateTime(), nullable=False),
        sa.Column("heartbeat_at", sa.DateTime(), nullable=False),
        sa.Column("stopped_at", sa.DateTime(), nullable=True),
        sa.ForeignKeyConstraint(["study_id"], ["latts_studies.id"]),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("name"),
    )
    op.create_index(op.f("ix_latts_controllers_study_id"), "latts_controllers", ["study_id"], unique=False)
    with op.batch_alter_table("latts_generations") as batch_op:
        batch_op.add_column(sa.Column("controller_id", sa.Integer(), nullable=True))
        batch_op.create_foreign_key("fk_latts_generations_controller_id", "latts_controllers", ["controller_id"], ["id"])

    # The key of each stored config: records.TTSConfig.key() is its dict (stored as `config`) as canonical JSON.
    with op.batch_alter_table("latts_trials") as batch_op:
        batch_op.add_column(sa.Column("key", sa.String(length=2048), nullable=True))
    trials = sa.table("latts_trials", sa.column("id", sa.Integer()), sa.column("config", sa.JSON()), sa.column("key", sa.String()))
    connection = op.get_bind()
    for trial_id, config in connection.execute(sa.select(trials.c.id, trials.c.config)).all():
        connection.execute(sa.update(trials).where(trials.c.id == trial_id).values(key=json.dumps(config, sort_keys=True)))
    with op.batch_alter_table("latts_trials") as batch_op:
        batch_op.alter_column("key", existing_type=sa.String(length=2048), nullable=False)
        batch_op.create_index(
            "uq_latts_trials_study_key",
            ["study_id", "key"],
            unique=True,
            sqlite_where=sa.text("state != 'FAILED'"),
            postgresql_where=sa.text("state != 'FAILED'"),
        )
