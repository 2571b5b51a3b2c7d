"""Trainer: fine-tuning jobs and the adapter registry (immutable, digest-addressed versions).

Triggers refuse any UPDATE of an adapter version's identity and content (tenant, base
model, version, digest, public id, job, trainer, eval report, metadata, bundle path):
only its status and the reason for it may change.

Revision ID: 0005_trainer
Revises: 0004_memory
Create Date: 2026-11-29
"""

import sqlalchemy as sa
from alembic import op

revision = "0005_trainer"
down_revision = "0004_memory"
branch_labels = None
depends_on = None

FROZEN = (
    "tenant",
    "base_model",
    "version",
    "digest",
    "public_id",
    "job_id",
    "trained_by",
    "eval_report",
    "meta",
    "bundle_path",
)


def upgrade() -> None:
    op.create_table(
        "trainer_jobs",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("tenant", sa.String(128), nullable=False),
        sa.Column("status", sa.String(32), nullable=False),
        sa.Column("job", sa.JSON(), nullable=False),
        sa.Column("events", sa.JSON(), nullable=False),
        sa.Column("checkpoints", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_trainer_jobs_tenant", "trainer_jobs", ["tenant", "created_at"])
    op.create_table(
        "trainer_adapters",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("tenant", sa.String(128), nullable=False),
        sa.Column("base_model", sa.String(200), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("digest", sa.String(80), nullable=False),
        sa.Column("public_id", sa.String(400), nullable=False, unique=True),
        sa.Column("job_id", sa.String(64), nullable=False, server_default=""),
        sa.Column("trained_by", sa.String(200), nullable=False, server_default=""),
        sa.Column("eval_report", sa.JSON(), nullable=False),
        sa.Column("meta", sa.JSON(), nullable=False),
        sa.Column("bundle_path", sa.String(1000), nullable=False, server_default=""),
        sa.Column("status", sa.String(32), nullable=False),
        sa.Column("status_reason", sa.String(2000), nullable=False, server_default=""),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.UniqueConstraint("tenant", "base_model", "version", name="uq_trainer_adapters_version"),
    )
    op.create_index("ix_trainer_adapters_tenant", "trainer_adapters", ["tenant"])
    op.create_index("ix_trainer_adapters_digest", "trainer_adapters", ["digest"])

    if op.get_bind().dialect.name == "postgresql":
        # json has no equality operator in PostgreSQL: compare JSON columns as text.
        cast = {"eval_report": "::text", "meta": "::text"}
        changed = " OR ".join(
            f"NEW.{c}{cast.get(c, '')} IS DISTINCT FROM OLD.{c}{cast.get(c, '')}" for c in FROZEN
        )
        op.execute(
            f"""
            CREATE FUNCTION enclave_adapter_immutable() RETURNS trigger
            LANGUAGE plpgsql AS $$
            BEGIN
              IF {changed} THEN
                RAISE EXCEPTION 'an adapter version is immutable: only its status may change'
                  USING ERRCODE = 'insufficient_privilege';
              END IF;
              RETURN NEW;
            END $$
            """
        )
        op.execute(
            "CREATE TRIGGER trainer_adapters_immutable BEFORE UPDATE ON trainer_adapters "
            "FOR EACH ROW EXECUTE FUNCTION enclave_adapter_immutable()"
        )
    else:
        op.execute(
            f"CREATE TRIGGER trainer_adapters_immutable BEFORE UPDATE OF {', '.join(FROZEN)} "
            "ON trainer_adapters BEGIN "
            "SELECT RAISE(ABORT, 'an adapter version is immutable: only its status may change'); "
            "END"
        )


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP TRIGGER IF EXISTS trainer_adapters_immutable ON trainer_adapters")
        op.execute("DROP FUNCTION IF EXISTS enclave_adapter_immutable()")
    op.drop_table("trainer_adapters")
    op.drop_table("trainer_jobs")
