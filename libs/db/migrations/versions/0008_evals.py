"""Trainer: a tenant's eval sets (by name), the reports of eval runs, and the claims of
scheduled jobs (one replica runs each daily job).

Revision ID: 0008_evals
Revises: 0007_identity
Create Date: 2026-11-29
"""

import sqlalchemy as sa
from alembic import op

revision = "0008_evals"
down_revision = "0007_identity"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "trainer_eval_sets",
        sa.Column("tenant", sa.String(128), primary_key=True),
        sa.Column("name", sa.String(200), primary_key=True),
        sa.Column("model", sa.String(400), nullable=True),
        sa.Column("digest", sa.String(80), nullable=False),
        sa.Column("body", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_table(
        "trainer_eval_runs",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("tenant", sa.String(128), nullable=False),
        sa.Column("eval_set", sa.String(200), nullable=False),
        sa.Column("eval_set_digest", sa.String(80), nullable=False),
        sa.Column("model", sa.String(400), nullable=False),
        sa.Column("model_key", sa.String(400), nullable=False),
        sa.Column("status", sa.String(32), nullable=False),
        sa.Column("trigger", sa.String(32), nullable=False),
        sa.Column("created_by", sa.String(200), nullable=False, server_default=""),
        sa.Column("report", sa.JSON(), nullable=False),
        sa.Column("error", sa.String(2000), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("completed_at", sa.DateTime(timezone=True), nullable=True),
    )
    op.create_index("ix_trainer_eval_runs_tenant", "trainer_eval_runs", ["tenant", "created_at"])
    op.create_table(
        "trainer_schedule",
        sa.Column("job", sa.String(64), primary_key=True),
        sa.Column("day", sa.String(10), primary_key=True),
        sa.Column("claimed_at", sa.DateTime(timezone=True), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("trainer_schedule")
    op.drop_index("ix_trainer_eval_runs_tenant", "trainer_eval_runs")
    op.drop_table("trainer_eval_runs")
    op.drop_table("trainer_eval_sets")
