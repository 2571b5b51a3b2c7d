"""Responses API: stored responses of the gateway (retrieve, previous_response_id, cancel).

Revision ID: 0006_responses
Revises: 0005_trainer
Create Date: 2026-11-29
"""

import sqlalchemy as sa
from alembic import op

revision = "0006_responses"
down_revision = "0005_trainer"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "gateway_responses",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("tenant", sa.String(128), nullable=False),
        sa.Column("status", sa.String(32), nullable=False),
        sa.Column("body", sa.JSON(), nullable=False),
        sa.Column("conversation", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_gateway_responses_tenant", "gateway_responses", ["tenant"])


def downgrade() -> None:
    op.drop_index("ix_gateway_responses_tenant", "gateway_responses")
    op.drop_table("gateway_responses")
