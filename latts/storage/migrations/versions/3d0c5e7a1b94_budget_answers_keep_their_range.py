"""budget answers keep where their budget may lie, and what answers it there

A relative budget moves with its reference's latency: each raced answer stores the range its budget
spans over the reference's fastest and slowest timing rounds (an absolute budget's range is itself),
and the finalists that answer the budget elsewhere in that range (`edge`, trial numbers). Answers
raced before this revision have neither (NULL).

Revision ID: 3d0c5e7a1b94
Revises: fb5f247bac59
Create Date: 2026-11-30 21:20:00.000000
"""

import sqlalchemy as sa
from alembic import op

revision = "3d0c5e7a1b94"
down_revision = "fb5f247bac59"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("latts_budget_answers") as batch_op:
        batch_op.add_column(sa.Column("budget_lo_s", sa.Double(), nullable=True))
        batch_op.add_column(sa.Column("budget_hi_s", sa.Double(), nullable=True))
        batch_op.add_column(sa.Column("edge", sa.JSON(), nullable=True))
