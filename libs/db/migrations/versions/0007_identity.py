"""Identity: the owner of a vector store, tenant records (their own limits), and the
external providers an admin enabled for a tenant (API key sealed by libs.secret_box).

Revision ID: 0007_identity
Revises: 0006_responses
Create Date: 2026-11-29
"""

import sqlalchemy as sa
from alembic import op

revision = "0007_identity"
down_revision = "0006_responses"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("memory_vector_stores") as batch:
        batch.add_column(sa.Column("owner", sa.String(200), nullable=False, server_default=""))
    op.create_table(
        "tenants",
        sa.Column("name", sa.String(128), primary_key=True),
        sa.Column("display_name", sa.String(200), nullable=False, server_default=""),
        sa.Column("limits", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_table(
        "tenant_providers",
        sa.Column("tenant", sa.String(128), primary_key=True),
        sa.Column("provider", sa.String(64), primary_key=True),
        sa.Column("base_url", sa.String(1000), nullable=False),
        sa.Column("api_key", sa.Text(), nullable=False, server_default=""),
        sa.Column("models", sa.JSON(), nullable=False),
        sa.Column("allowed_models", sa.JSON(), nullable=False),
        sa.Column("enabled", sa.Boolean(), nullable=False, server_default=sa.false()),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("tenant_providers")
    op.drop_table("tenants")
    with op.batch_alter_table("memory_vector_stores") as batch:
        batch.drop_column("owner")
