"""baseline: the latts_ tables of releases before schema versions

The tables exactly as latts.storage.models declared them when schema versions began (0.1.0),
written out here so that later model changes never change what this revision creates. A database
an earlier latts wrote holds these tables without a version row; `latts upgrade` stamps it here.

Revision ID: 92be9c63e316
Revises:
Create Date: 2026-11-30 02:27:08.137165
"""

import sqlalchemy as sa
from alembic import op

revision = "92be9c63e316"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "latts_hardware",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=512), nullable=False),
        sa.Column("detected", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("name"),
    )
    op.create_table(
        "latts_studies",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=512), nullable=False),
        sa.Column("hardware_id", sa.Integer(), nullable=False),
        sa.Column("model", sa.Text(), nullable=False),
        sa.Column("benchmark", sa.Text(), nullable=False),
        sa.Column("spec", sa.JSON(), nullable=False),
        sa.Column("budgets_s", sa.JSON(), nullable=True),
        sa.Column("reference_s", sa.Double(), nullable=True),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.ForeignKeyConstraint(["hardware_id"], ["latts_hardware.id"]),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("name"),
    )
    op.create_index(op.f("ix_latts_studies_hardware_id"), "latts_studies", ["hardware_id"], unique=False)
    op.create_table(
        "latts_generations",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("study_id", sa.Integer(), nullable=False),
        sa.Column("key", sa.String(length=2048), nullable=False),
        sa.Column("generation", sa.JSON(), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("fail_reason", sa.Text(), nullable=True),
        sa.Column("worker", sa.Text(), nullable=True),
        sa.Column("engine_start_s", sa.Double(), nullable=True),
        sa.Column("engine_starts", sa.Integer(), nullable=True),
        sa.Column("warmup_s", sa.Double(), nullable=True),
        sa.Column("generated_tokens", sa.Integer(), nullable=True),
        sa.Column("drafted_tokens", sa.Integer(), nullable=True),
        sa.Column("accepted_tokens", sa.Integer(), nullable=True),
        sa.Column("num_drafts", sa.Integer(), nullable=True),
        sa.Column("vllm_cpu_fix", sa.String(length=16), nullable=True),
        sa.Column("lossless_verdict", sa.String(length=16), nullable=True),
        sa.Column("lossless_p_value", sa.Double(), nullable=True),
        sa.Column("lossless_baseline", sa.Integer(), nullable=True),
        sa.Column("started_at", sa.DateTime(), nullable=False),
        sa.Column("finished_at", sa.DateTime(), nullable=True),
        sa.CheckConstraint("lossless_verdict IS NULL OR lossless_verdict IN ('lossless', 'lossy', 'untested')", name="ck_latts_generations_lossless"),
        sa.CheckConstraint("state IN ('RUNNING', 'COMPLETE', 'FAILED')", name="ck_latts_generations_state"),
        sa.ForeignKeyConstraint(["study_id"], ["latts_studies.id"]),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index(op.f("ix_latts_generations_study_id"), "latts_generations", ["study_id"], unique=False)
    op.create_index(
        "uq_latts_generations_study_key",
        "latts_generations",
        ["study_id", "key"],
        unique=True,
        sqlite_where=sa.text("state != 'FAILED'"),
        postgresql_where=sa.text("state != 'FAILED'"),
    )
    op.create_table(
        "latts_pool_samples",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("pool", sa.String(length=2048), nullable=False),
        sa.Column("prompt_sha", sa.String(length=64), nullable=False),
        sa.Column("seed", sa.BigInteger(), nullable=False),
        sa.Column("branch", sa.Integer(), nullable=False),
        sa.Column("text", sa.Text(), nullable=False),
        sa.Column("answer", sa.Text(), nullable=True),
        sa.Column("n_tokens", sa.Integer(), nullable=False),
        sa.Column("token_logprobs", sa.JSON(), nullable=False),
        sa.Column("generation_id", sa.Integer(), nullable=True),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.ForeignKeyConstraint(["generation_id"], ["latts_generations.id"], ondelete="SET NULL"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("pool", "prompt_sha", "seed", "branch", name="uq_latts_pool_samples_draw"),
    )
    op.create_index("ix_latts_pool_samples_prompt", "latts_pool_samples", ["pool", "prompt_sha"], unique=False)
    op.create_table(
        "latts_timed_problems",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("generation_id", sa.Integer(), nullable=False),
        sa.Column("round", sa.Integer(), nullable=False),
        sa.Column("problem_index", sa.Integer(), nullable=False),
        sa.Column("branches", sa.JSON(), nullable=False),
        sa.Column("latency_s", sa.Double(), nullable=False),
        sa.Column("aggregation_s", sa.JSON(), nullable=False),
        sa.Column("answers", sa.JSON(), nullable=False),
        sa.ForeignKeyConstraint(["generation_id"], ["latts_generations.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("generation_id", "round", "problem_index", name="uq_latts_timed_problems_index"),
    )
    op.create_table(
        "latts_trials",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("study_id", sa.Integer(), nullable=False),
        sa.Column("number", sa.Integer(), nullable=False),
        sa.Column("config", sa.JSON(), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("fail_reason", sa.Text(), nullable=True),
        sa.Column("generation_id", sa.Integer(), nullable=True),
        sa.Column("accuracy", sa.Double(), nullable=True),
        sa.Column("accuracy_lo", sa.Double(), nullable=True),
        sa.Column("accuracy_hi", sa.Double(), nullable=True),
        sa.Column("accuracy_source", sa.String(length=16), nullable=True),
        sa.Column("n_problems", sa.Integer(), nullable=True),
        sa.Column("latency_mean", sa.Double(), nullable=True),
        sa.Column("latency_p50", sa.Double(), nullable=True),
        sa.Column("latency_p90", sa.Double(), nullable=True),
        sa.Column("latency_p99", sa.Double(), nullable=True),
        sa.Column("latency_ci", sa.JSON(), nullable=True),
        sa.Column("n_latency_problems", sa.Integer(), nullable=True),
        sa.Column("started_at", sa.DateTime(), nullable=False),
        sa.Column("finished_at", sa.DateTime(), nullable=True),
        sa.CheckConstraint("accuracy_source IS NULL OR accuracy_source IN ('measured', 'pool')", name="ck_latts_trials_source"),
        sa.CheckConstraint("state IN ('RUNNING', 'COMPLETE', 'FAILED')", name="ck_latts_trials_state"),
        sa.CheckConstraint("accuracy IS NULL OR (accuracy >= 0 AND accuracy <= 1)", name="ck_latts_trials_accuracy"),
        sa.ForeignKeyConstraint(["generation_id"], ["latts_generations.id"]),
        sa.ForeignKeyConstraint(["study_id"], ["latts_studies.id"]),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("study_id", "number", name="uq_latts_trials_study_number"),
    )
    op.create_index(op.f("ix_latts_trials_generation_id"), "latts_trials", ["generation_id"], unique=False)
    op.create_table(
        "latts_budget_answers",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("study_id", sa.Integer(), nullable=False),
        sa.Column("budget_s", sa.Double(), nullable=False),
        sa.Column("trial_id", sa.Integer(), nullable=True),
        sa.Column("runner_up_id", sa.Integer(), nullable=True),
        sa.Column("fits_confidently", sa.Boolean(), nullable=False),
        sa.Column("margin", sa.Double(), nullable=True),
        sa.Column("margin_lo", sa.Double(), nullable=True),
        sa.Column("margin_hi", sa.Double(), nullable=True),
        sa.Column("verdict", sa.String(length=16), nullable=False),
        sa.Column("rounds", sa.Integer(), nullable=False),
        sa.Column("finalists", sa.JSON(), nullable=False),
        sa.Column("raced_at", sa.DateTime(), nullable=False),
        sa.CheckConstraint("verdict IN ('beats', 'tied', 'alone', 'nothing-fits')", name="ck_latts_budget_answers_verdict"),
        sa.ForeignKeyConstraint(["runner_up_id"], ["latts_trials.id"]),
        sa.ForeignKeyConstraint(["study_id"], ["latts_studies.id"]),
        sa.ForeignKeyConstraint(["trial_id"], ["latts_trials.id"]),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("study_id", "budget_s", name="uq_latts_budget_answers_budget"),
    )
    op.create_index(op.f("ix_latts_budget_answers_study_id"), "latts_budget_answers", ["study_id"], unique=False)
    op.create_table(
        "latts_pool_scores",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("sample_id", sa.Integer(), nullable=False),
        sa.Column("verifier", sa.String(length=2048), nullable=False),
        sa.Column("score", sa.Double(), nullable=False),
        sa.ForeignKeyConstraint(["sample_id"], ["latts_pool_samples.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("sample_id", "verifier", name="uq_latts_pool_scores_sample_verifier"),
    )
