"""SQLAlchemy tables. Each table belongs to one service; the schema is migrated as one."""

from __future__ import annotations

import builtins
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import JSON, BigInteger, Boolean, DateTime, Integer, LargeBinary, String, Text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


def _now() -> datetime:
    return datetime.now(UTC)


class Base(DeclarativeBase):
    pass


class ApiKey(Base):
    """An API key of the gateway. Only a hash of the secret part is stored."""

    __tablename__ = "api_keys"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    key_id: Mapped[str] = mapped_column(String(64), unique=True, index=True)
    secret_hash: Mapped[str] = mapped_column(String(128))
    tenant: Mapped[str] = mapped_column(String(128), index=True)
    role: Mapped[str] = mapped_column(String(32))
    name: Mapped[str] = mapped_column(String(200), default="")
    rate_limit_rpm: Mapped[int | None] = mapped_column(Integer, nullable=True)
    revoked: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=_now)


class RegisteredModel(Base):
    """A model route of the inference router, added at run time beside deploy/models.yaml."""

    __tablename__ = "registered_models"

    id: Mapped[str] = mapped_column(String(200), primary_key=True)
    kind: Mapped[str] = mapped_column(String(32))
    pool: Mapped[str] = mapped_column(String(200))
    adapter: Mapped[str | None] = mapped_column(String(500), nullable=True)
    tenant: Mapped[str | None] = mapped_column(String(128), nullable=True)
    params: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=_now)


class AuditEntry(Base):
    """One link of a tenant's audit chain (audit service). Append-only: see migration 0002_audit.

    `payload` is the audit event as hashed; `action`, `actor`, `request_id`, `time` repeat
    fields of it for search, and verification checks that they still agree.
    """

    __tablename__ = "audit_entries"

    tenant: Mapped[str] = mapped_column(String(128), primary_key=True)
    seq: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    event_id: Mapped[str] = mapped_column(String(64), unique=True)
    kind: Mapped[str] = mapped_column(String(64))
    action: Mapped[str] = mapped_column(String(64))
    actor: Mapped[str] = mapped_column(String(200))
    request_id: Mapped[str] = mapped_column(String(200))
    time: Mapped[str] = mapped_column(String(32))
    prev_hash: Mapped[str] = mapped_column(String(64))
    hash: Mapped[str] = mapped_column(String(64))
    hmac: Mapped[str] = mapped_column(String(64))
    key_id: Mapped[str] = mapped_column(String(64))
    payload: Mapped[dict[str, Any]] = mapped_column(JSON)


class AuditCheckpoint(Base):
    """An Ed25519-signed statement: tenant's chain had `count` entries ending in `head_hash`."""

    __tablename__ = "audit_checkpoints"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    tenant: Mapped[str] = mapped_column(String(128), index=True)
    count: Mapped[int] = mapped_column(BigInteger)
    head_hash: Mapped[str] = mapped_column(String(64))
    time: Mapped[str] = mapped_column(String(32))
    key_id: Mapped[str] = mapped_column(String(64))
    signature: Mapped[str] = mapped_column(Text)


class StoredFile(Base):
    """A file uploaded through /v1/files (memory service). Deleted with its tenant."""

    __tablename__ = "memory_files"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    tenant: Mapped[str] = mapped_column(String(128), index=True)
    owner: Mapped[str] = mapped_column(String(200), default="")
    filename: Mapped[str] = mapped_column(String(500))
    purpose: Mapped[str] = mapped_column(String(64))
    bytes: Mapped[int] = mapped_column(Integer)
    content: Mapped[builtins.bytes] = mapped_column(LargeBinary)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=_now)


class VectorStore(Base):
    """An OpenAI-style vector store: a named set of files whose chunks are searchable."""

    __tablename__ = "memory_vector_stores"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    tenant: Mapped[str] = mapped_column(String(128), index=True)
    owner: Mapped[str] = mapped_column(String(200), default="")  # who may delete it (or an admin)
    name: Mapped[str] = mapped_column(String(500), default="")
    meta: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=_now)


class VectorStoreFile(Base):
    """A file in a vector store, with its ingestion status and attributes (ACL groups)."""

    __tablename__ = "memory_vector_store_files"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    tenant: Mapped[str] = mapped_column(String(128), index=True)
    vector_store_id: Mapped[str] = mapped_column(String(64), index=True)
    file_id: Mapped[str] = mapped_column(String(64), index=True)
    status: Mapped[str] = mapped_column(String(32), default="in_progress")
    chunks: Mapped[int] = mapped_column(Integer, default=0)
    usage_bytes: Mapped[int] = mapped_column(Integer, default=0)
    attributes: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    last_error: Mapped[str | None] = mapped_column(String(2000), nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=_now)


class AdapterVersion(Base):
    """A LoRA adapter version of the trainer: immutable, addressed by the digest of its files.

    Only `status` and `status_reason` ever change (promotion, rollback); triggers from
    migration 0005_trainer refuse updates of every other column.
    """

    __tablename__ = "trainer_adapters"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    tenant: Mapped[str] = mapped_column(String(128), index=True)
    base_model: Mapped[str] = mapped_column(String(200))
    version: Mapped[int] = mapped_column(Integer)
    digest: Mapped[str] = mapped_column(String(80), index=True)
    public_id: Mapped[str] = mapped_column(String(400), unique=True)
    job_id: Mapped[str] = mapped_column(String(64), default="")
    trained_by: Mapped[str] = mapped_column(String(200), default="")
    eval_report: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    meta: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    bundle_path: Mapped[str] = mapped_column(String(1000), default="")
    status: Mapped[str] = mapped_column(String(32), default="ready")
    status_reason: Mapped[str] = mapped_column(String(2000), default="")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=_now)


class FineTuningJobRecord(Base):
    """A fine-tuning job of the trainer: OpenAI's job object, its events and checkpoints."""

    __tablename__ = "trainer_jobs"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    tenant: Mapped[str] = mapped_column(String(128), index=True)
    status: Mapped[str] = mapped_column(String(32))
    job: Mapped[dict[str, Any]] = mapped_column(JSON)
    events: Mapped[list[Any]] = mapped_column(JSON, default=list)
    checkpoints: Mapped[list[Any]] = mapped_column(JSON, default=list)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=_now)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=_now)


class StoredResponse(Base):
    """A response of the Responses API (gateway): the `response` object as last shaped,
    and the conversation a `previous_response_id` continues (input and output, as chat
    messages, without the instructions)."""

    __tablename__ = "gateway_responses"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    tenant: Mapped[str] = mapped_column(String(128), index=True)
    status: Mapped[str] = mapped_column(String(32))
    body: Mapped[dict[str, Any]] = mapped_column(JSON)
    conversation: Mapped[list[Any]] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=_now)


# In a tenant record's `limits` JSON beside the limits: the model ids the tenant may use
# (absent or null: every model). The gateway's PUT /v1/admin/models writes it, the router
# enforces it.
ALLOWED_MODELS = "allowed_models"


class TenantRecord(Base):
    """A tenant as the admin API knows it: its own limits (services/gateway/quotas.Limits
    fields; absent ones are the settings'), and under `ALLOWED_MODELS` its model
    allow-list. Deleted with the tenant's data."""

    __tablename__ = "tenants"

    name: Mapped[str] = mapped_column(String(128), primary_key=True)
    display_name: Mapped[str] = mapped_column(String(200), default="")
    limits: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=_now)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=_now)


class TenantProviderRecord(Base):
    """An external provider (OpenAI-compatible upstream) an admin enabled for one tenant,
    with the models it may send there (libs.providers). `api_key` is sealed
    (libs.secret_box: `enc:v1:...`), never plain."""

    __tablename__ = "tenant_providers"

    tenant: Mapped[str] = mapped_column(String(128), primary_key=True)
    provider: Mapped[str] = mapped_column(String(64), primary_key=True)
    base_url: Mapped[str] = mapped_column(String(1000))
    api_key: Mapped[str] = mapped_column(Text, default="")
    models: Mapped[dict[str, str]] = mapped_column(JSON, default=dict)
    allowed_models: Mapped[list[str]] = mapped_column(JSON, default=list)
    enabled: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=_now)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=_now)


class EvalSetRecord(Base):
    """A tenant's eval set (services/trainer/evals.py), stored by name; `model` is the
    base model whose serving version the nightly run evaluates (None: not nightly)."""

    __tablename__ = "trainer_eval_sets"

    tenant: Mapped[str] = mapped_column(String(128), primary_key=True)
    name: Mapped[str] = mapped_column(String(200), primary_key=True)
    model: Mapped[str | None] = mapped_column(String(400), nullable=True)
    digest: Mapped[str] = mapped_column(String(80))
    body: Mapped[dict[str, Any]] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=_now)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=_now)


class EvalRunRecord(Base):
    """One run of an eval set on a model: the report (pass rate per task and overall, the
    serving version's and the deltas), kept and listed per tenant."""

    __tablename__ = "trainer_eval_runs"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    tenant: Mapped[str] = mapped_column(String(128), index=True)
    eval_set: Mapped[str] = mapped_column(String(200))
    eval_set_digest: Mapped[str] = mapped_column(String(80))
    model: Mapped[str] = mapped_column(String(400))
    # What answered: an adapter's digest or the base model's id (reports compare on it).
    model_key: Mapped[str] = mapped_column(String(400))
    status: Mapped[str] = mapped_column(String(32))
    trigger: Mapped[str] = mapped_column(String(32))
    created_by: Mapped[str] = mapped_column(String(200), default="")
    report: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    error: Mapped[str | None] = mapped_column(String(2000), nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=_now)
    completed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


class ScheduleClaim(Base):
    """A scheduled job's run on one day, claimed by the first trainer replica (the
    primary key makes the claim once per job and day)."""

    __tablename__ = "trainer_schedule"

    job: Mapped[str] = mapped_column(String(64), primary_key=True)
    day: Mapped[str] = mapped_column(String(10), primary_key=True)
    claimed_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=_now)


class LearningRecord(Base):
    """A tenant's settings of learning from feedback (services/trainer/learning.py) and
    the state of its scheduled learning (the last job submitted, the ratings it used)."""

    __tablename__ = "trainer_learning"

    tenant: Mapped[str] = mapped_column(String(128), primary_key=True)
    settings: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    state: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=_now)


class LoggedTurn(Base):
    """A finished turn of a tenant that opted in, as screened (placeholders, not real
    values); destroyed once past the tenant's retention."""

    __tablename__ = "trainer_turns"

    tenant: Mapped[str] = mapped_column(String(128), primary_key=True)
    completion_id: Mapped[str] = mapped_column(String(200), primary_key=True)
    kind: Mapped[str] = mapped_column(String(16))
    model: Mapped[str] = mapped_column(String(400))
    adapter: Mapped[str | None] = mapped_column(String(80), nullable=True)
    messages: Mapped[list[Any]] = mapped_column(JSON)
    answer: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=_now)


class TurnFeedback(Base):
    """A rating of a logged turn (up or down, an optional correction), by whom."""

    __tablename__ = "trainer_feedback"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    tenant: Mapped[str] = mapped_column(String(128))
    completion_id: Mapped[str] = mapped_column(String(200))
    rating: Mapped[str] = mapped_column(String(8))
    correction: Mapped[str | None] = mapped_column(Text, nullable=True)
    actor: Mapped[str] = mapped_column(String(200), default="")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=_now)


class TenantMcpServerRecord(Base):
    """An MCP server an admin registered for one tenant (libs.mcp_servers.McpServer):
    its transport (`stdio`: command and args; `streamable_http`: url), the tools offered,
    which calls wait for an approval, and whether it is enabled."""

    __tablename__ = "tenant_mcp_servers"

    tenant: Mapped[str] = mapped_column(String(128), primary_key=True)
    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    config: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    enabled: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=_now)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=_now)
