"""MCP servers an admin registered per tenant (libs.mcp_servers).

Revision ID: 0010_mcp_servers
Revises: 0009_feedback
Create Date: 2026-11-29
"""

import sqlalchemy as sa
from alembic import op

revision = "0010_mcp_servers"
down_revision = "0009_feedback"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "tenant_mcp_servers",
        sa.Column("tenant", sa.String(128), primary_key=True),
        sa.Column("name", sa.String(64), primary_key=True),
        sa.Column("config", sa.JSON(), nullable=False),
        sa.Column("enabled", sa.Boolean(), nullable=False, server_default=sa.false()),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("tenant_mcp_servers")
