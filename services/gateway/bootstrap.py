"""Builds the gateway: every dependency of every route, constructed before the app exists.

`build(settings)` makes them all (the NATS client is created here and connected by
`start`, which the app's lifespan runs before the first request); the routes receive the
`Gateway` itself, typed, in app.py.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import httpx
import yaml
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from opentelemetry.trace import Tracer
from pydantic import ValidationError
from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncEngine
from starlette.requests import Request

from libs.audit import AuditPublisher, outbox_dir, record_access_denied
from libs.bus import ensure_streams
from libs.context import RequestContext
from libs.db.engine import make_engine, migrate_async
from libs.errors import EnclaveError
from libs.events import KeyRevoked
from libs.metrics import StageMetrics
from libs.model_context import ContextWindows, context_windows
from libs.redis_pool import redis_client
from libs.rpc import Bus, settled
from libs.settings import Settings
from libs.telemetry import setup_tracing
from services.gateway.adapters.oidc_jwks import HttpJwks
from services.gateway.adapters.redis_quotas import RedisQuotas
from services.gateway.adapters.sql_tenants import get_tenant
from services.gateway.auth import Authorizer
from services.gateway.oidc import JwksCache, OidcConfig, OidcVerifier
from services.gateway.openai_shapes import parse_json
from services.gateway.quotas import Limits, tenant_limits
from services.gateway.turn_client import TurnClient

log = logging.getLogger(__name__)
UPLOAD_HEADROOM = 8192  # of the bus's message size: the upload's headers (ctx, filename)
MULTIPART_FRAMING = 16384  # boundaries, part headers and the `purpose` field of an upload


@dataclass
class Gateway:
    settings: Settings
    nc: NatsClient
    bus: Bus
    db: AsyncEngine
    redis: Redis
    auth: Authorizer
    turns: TurnClient
    audit: AuditPublisher
    tracer: Tracer
    metrics: StageMetrics = field(default_factory=lambda: StageMetrics("gateway"))
    # Each registry model's context window: the bound on what a request may ask it to write.
    windows: ContextWindows = field(default_factory=ContextWindows)

    async def start(self) -> None:
        settings = self.settings
        await migrate_async(settings)
        await self.nc.connect(
            settings.nats_url,
            name="enclave-gateway",
            max_reconnect_attempts=-1,
            reconnect_time_wait=1,
        )
        await ensure_streams(self.nc, settings)
        # Core NATS, no queue group: every replica hears every revocation.
        await self.nc.subscribe(settings.subjects.keys_revoked, cb=self._key_revoked)
        await self.turns.start()
        self.audit.start()
        # Ready only once the server has read these SUBs: a turn's first reply must find
        # its router (libs.rpc.settled).
        await settled(self.nc)

    async def _key_revoked(self, msg: Msg) -> None:
        try:
            revoked = KeyRevoked.model_validate_json(msg.data)
        except ValidationError:
            log.warning("unreadable keys.revoked message ignored")
            return
        self.auth.forget(revoked.key_id)

    async def stop(self) -> None:
        await self.audit.close()
        await self.nc.drain()
        await self.redis.aclose()
        await self.db.dispose()

    async def read_json(self, request: Request) -> Any:
        self.check_declared_size(request.headers.get("content-length"))
        body = await request.body()
        self.check_size(len(body))
        return parse_json(body)

    def upload_limit(self) -> int:
        """The largest file `POST /v1/files` takes: it travels to memory as one bus message."""
        return max(1024, self.nc.max_payload - UPLOAD_HEADROOM)

    def body_limit(self, method: str, path: str) -> int:
        """The most bytes a request's body may have (admission.py enforces it on every
        route): the upload route's file plus its multipart framing, else max_body_bytes."""
        if method == "POST" and path == "/v1/files":
            return self.upload_limit() + MULTIPART_FRAMING
        return self.settings.max_body_bytes

    def check_declared_size(self, declared: str | None) -> None:
        if declared and declared.isdigit():
            self.check_size(int(declared))

    def check_size(self, size: int) -> None:
        limit = self.settings.max_body_bytes
        if size > limit:
            raise EnclaveError(
                413, f"The request body is larger than {limit} bytes.", "request_too_large"
            )


def build_oidc(settings: Settings) -> OidcVerifier | None:
    """The OIDC verifier when an issuer is configured (docs/identity.md), else None."""
    if not settings.oidc_issuer:
        return None
    config = OidcConfig.from_settings(settings)
    source = HttpJwks(config.issuer, httpx.AsyncClient(timeout=10))
    return OidcVerifier(config, JwksCache(source, config.min_refresh_s))


def quota_prefix(settings: Settings) -> str:
    """The Redis keys of the limits; a bus prefix (a test's, a second platform's) apart."""
    return f"enclave:{settings.bus_prefix}:q" if settings.bus_prefix else "enclave:q"


def default_limits(settings: Settings) -> Limits:
    """Every tenant's limits unless its record (the admin API) sets its own."""
    return Limits(
        key_rpm=settings.rate_limit_rpm,
        tenant_rpm=settings.tenant_rpm,
        key_tpm=settings.key_tpm,
        tenant_tpm=settings.tenant_tpm,
        monthly_tokens=settings.tenant_monthly_tokens,
        concurrency=settings.tenant_concurrency,
    )


def load_windows(settings: Settings) -> ContextWindows:
    """The context windows of the registry's models (the file the router reads too); none
    when it cannot be read (then every model is bounded by MAX_TOKENS alone)."""
    try:
        registry = yaml.safe_load(settings.models_file.read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        log.warning("no context windows: %s unreadable (%s)", settings.models_file, exc)
        return ContextWindows()
    return context_windows(registry) if isinstance(registry, dict) else ContextWindows()


def build(settings: Settings) -> Gateway:
    nc = NatsClient()
    bus = Bus(nc, settings)
    db = make_engine(settings.sqlalchemy_url)
    redis = redis_client(settings)
    turns = TurnClient(bus, settings.gateway_timeout_s)
    audit = AuditPublisher(nc, settings.subjects, "gateway", outbox_dir(settings.home))

    async def denied(ctx: RequestContext, target: str, operation: str) -> object:
        return await record_access_denied(audit, ctx, target_tenant=target, operation=operation)

    defaults = default_limits(settings)

    async def own_limits(tenant: str) -> Limits | None:
        """The tenant's record's limits over the settings' (the admin API sets them)."""
        row = await get_tenant(db, tenant)
        return tenant_limits(defaults, row.limits) if row is not None else None

    return Gateway(
        settings=settings,
        nc=nc,
        bus=bus,
        db=db,
        redis=redis,
        auth=Authorizer(
            db,
            RedisQuotas(redis, quota_prefix(settings)),
            defaults,
            settings.key_cache_seconds,
            oidc=build_oidc(settings),
            denials=denied,
            tenant_limits=own_limits,
        ),
        turns=turns,
        audit=audit,
        tracer=setup_tracing("gateway", settings.trace_dir, settings.otlp_endpoint),
        metrics=StageMetrics("gateway"),
        windows=load_windows(settings),
    )
