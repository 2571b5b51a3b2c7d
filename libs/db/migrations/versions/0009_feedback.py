"""Trainer: learning from feedback. A tenant's settings (opt-in, retention), its turns as
screened, and the ratings of them.

Revision ID: 0009_feedback
Revises: 0008_evals
Create Date: 2026-11-29
"""

import sqlalchemy as sa
from alembic import op

revision = "0009_feedback"
down_revision = "0008_evals"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "trainer_learning",
        sa.Column("tenant", sa.String(128), primary_key=True),
        sa.Column("settings", sa.JSON(), nullable=False),
        sa.Column("state", sa.JSON(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_table(
        "trainer_turns",
        sa.Column("tenant", sa.String(128), primary_key=True),
        sa.Column("completion_id", sa.String(200), primary_key=True),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("model", sa.String(400), nullable=False),
        sa.Column("adapter", sa.String(80), nullable=True),
        sa.Column("messages", sa.JSON(), nullable=False),
        sa.Column("answer", sa.Text(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_trainer_turns_created", "trainer_turns", ["tenant", "created_at"])
    op.create_table(
        "trainer_feedback",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("tenant", sa.String(128), nullable=False),
        sa.Column("completion_id", sa.String(200), nullable=False),
        sa.Column("rating", sa.String(8), nullable=False),
        sa.Column("correction", sa.Text(), nullable=True),
        sa.Column("actor", sa.String(200), nullable=False, server_default=""),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index(
        "ix_trainer_feedback_turn", "trainer_feedback", ["tenant", "completion_id", "created_at"]
    )


def downgrade() -> None:
    op.drop_index("ix_trainer_feedback_turn", "trainer_feedback")
    op.drop_table("trainer_feedback")
    op.drop_index("ix_trainer_turns_created", "trainer_turns")
    op.drop_table("trainer_turns")
    op.drop_table("trainer_learning")
