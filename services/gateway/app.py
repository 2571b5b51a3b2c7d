"""gateway wiring: the OpenAI-compatible HTTP API in front of the bus.

It authenticates (the tenant always comes from the credential), applies role and rate
limits, validates OpenAI request shapes, publishes chat.requested and streams the turn
back as server-sent events. Errors leave in OpenAI's error shape, never as 422.
"""

from __future__ import annotations

import base64
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import nats
import numpy as np
import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from nats.aio.client import Client as NatsClient
from opentelemetry.trace import Tracer
from pydantic import BaseModel
from redis.asyncio import Redis
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine
from starlette.exceptions import HTTPException as StarletteHTTPException

from libs.asyncapi import render as asyncapi_json
from libs.bus import ensure_streams, event_bytes
from libs.context import RequestContext, new_request_id
from libs.db.engine import make_engine, migrate_async
from libs.errors import EnclaveError, ErrorInfo
from libs.events import (
    EmbedReply,
    EmbedRequest,
    ModelsReply,
    ModelsRequest,
)
from libs.settings import Settings
from libs.telemetry import setup_tracing
from services.gateway import audit_routes, guardrails_routes, keys, rag_routes, sandbox_routes
from services.gateway.adapters.redis_limits import RedisRateLimiter
from services.gateway.adapters.sql_keys import StoredKey, create_key, find_key
from services.gateway.hot_path import HotPath
from services.gateway.openai_shapes import (
    ChatCompletionRequest,
    CompletionRequest,
    EmbeddingRequest,
    parse_json,
    validate,
)
from services.gateway.policy import Action, may
from services.gateway.turn_client import TurnClient

BUS_REQUEST_TIMEOUT_S = 5.0


class JSON(Response):
    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content)


def error_response(info: ErrorInfo) -> JSON:
    return JSON(info.body(), status_code=info.status)


@dataclass
class Gateway:
    settings: Settings
    nc: NatsClient
    db: AsyncEngine
    redis: Redis
    turns: TurnClient
    limiter: RedisRateLimiter
    tracer: Tracer
    key_cache: dict[str, tuple[StoredKey, float]] = field(default_factory=dict)

    async def lookup(self, key_id: str) -> StoredKey | None:
        now = time.monotonic()
        cached = self.key_cache.get(key_id)
        if cached and cached[1] > now:
            return cached[0]
        stored = await find_key(self.db, key_id)
        if stored is not None:
            self.key_cache[key_id] = (stored, now + self.settings.key_cache_seconds)
        return stored

    async def authenticate(self, request: Request, action: Action) -> RequestContext:
        return await self.authenticate_header(request.headers.get("authorization"), action)

    async def authenticate_header(
        self, authorization: str | None, action: Action
    ) -> RequestContext:
        ctx, stored = await self.identify(authorization, action)
        await self.enforce_rate_limit(stored)
        return ctx

    async def identify(
        self, authorization: str | None, action: Action
    ) -> tuple[RequestContext, StoredKey]:
        """Who is asking (the tenant comes from the credential) and may they do this."""
        token = keys.bearer_token(authorization)
        if token is None:
            raise EnclaveError(
                401,
                "You didn't provide an API key. Provide it in the Authorization header "
                "(Authorization: Bearer YOUR_KEY).",
                "missing_api_key",
            )
        parsed = keys.parse(token)
        stored = await self.lookup(parsed[0]) if parsed else None
        if (
            parsed is None
            or stored is None
            or stored.revoked
            or not keys.matches(parsed[0], parsed[1], stored.secret_hash)
        ):
            raise EnclaveError(401, "Incorrect API key provided.", "invalid_api_key")
        if not may(stored.role, action):
            raise EnclaveError(
                403,
                f"The role `{stored.role}` may not perform `{action.value}`.",
                "insufficient_permissions",
            )
        ctx = RequestContext(
            tenant=stored.tenant, request_id=new_request_id(), actor=stored.key_id, role=stored.role
        )
        return ctx, stored

    async def enforce_rate_limit(self, stored: StoredKey) -> None:
        rpm = stored.rate_limit_rpm or self.settings.rate_limit_rpm
        if not await self.limiter.allow(stored.key_id, rpm):
            raise EnclaveError(
                429,
                f"Rate limit reached for this key ({rpm} requests per minute).",
                "rate_limit_exceeded",
            )

    async def read_json(self, request: Request) -> Any:
        self.check_declared_size(request.headers.get("content-length"))
        body = await request.body()
        self.check_size(len(body))
        return parse_json(body)

    def check_declared_size(self, declared: str | None) -> None:
        if declared and declared.isdigit():
            self.check_size(int(declared))

    def check_size(self, size: int) -> None:
        limit = self.settings.max_body_bytes
        if size > limit:
            raise EnclaveError(
                413, f"The request body is larger than {limit} bytes.", "request_too_large"
            )

    async def bus_request(
        self,
        subject: str,
        event: Any,
        headers: dict[str, str] | None = None,
        *,
        service: str = "inference router",
        code: str = "no_router",
        timeout: float | None = None,
    ) -> bytes:
        """Request/reply to another service; nobody listening is a 503, silence a 504."""
        payload = event if isinstance(event, bytes) else event_bytes(event)
        try:
            msg = await self.nc.request(
                subject,
                payload,
                timeout=timeout or self.settings.upstream_timeout_s,
                headers=headers,
            )
        except nats.errors.NoRespondersError:
            raise EnclaveError(
                503, f"The {service} is not available; try again later.", code
            ) from None
        except nats.errors.TimeoutError:
            raise EnclaveError(504, f"Upstream timeout: {service}.", "upstream_timeout") from None
        return bytes(msg.data)


def create_app(settings: Settings) -> HotPath:
    """The gateway as one ASGI app: the streamed routes plain, the rest FastAPI."""
    return HotPath(create_fastapi(settings))


def create_fastapi(settings: Settings) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await migrate_async(settings)
        nc = await nats.connect(
            settings.nats_url,
            name="enclave-gateway",
            max_reconnect_attempts=-1,
            reconnect_time_wait=1,
        )
        await ensure_streams(nc, settings)
        db = make_engine(settings.sqlalchemy_url)
        redis = Redis.from_url(settings.redis_url)
        app.state.gw = Gateway(
            settings=settings,
            nc=nc,
            db=db,
            redis=redis,
            turns=TurnClient(nc, settings.subjects, settings.gateway_timeout_s),
            limiter=RedisRateLimiter(redis),
            tracer=setup_tracing("gateway", settings.trace_dir),
        )
        await app.state.gw.turns.subscribe()
        app.state.audit = audit_routes.start_publisher(settings, nc)
        try:
            yield
        finally:
            await app.state.audit.close()
            await nc.drain()
            await redis.aclose()
            await db.dispose()

    app = FastAPI(
        title="Enclave",
        version="0.1.0",
        description="OpenAI-compatible API of the Enclave platform.",
        lifespan=lifespan,
    )

    def gw(request: Request) -> Gateway:
        return request.app.state.gw  # type: ignore[no-any-return]

    @app.exception_handler(EnclaveError)
    async def _enclave_error(request: Request, exc: EnclaveError) -> Response:
        return error_response(exc.info)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> Response:
        err = exc.errors()[0] if exc.errors() else {"loc": (), "msg": "invalid request"}
        param = ".".join(str(p) for p in err["loc"][1:]) or None
        return error_response(
            ErrorInfo(status=400, message=err["msg"], code="invalid_value", param=param)
        )

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> Response:
        return error_response(ErrorInfo(status=exc.status_code, message=str(exc.detail)))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> Response:
        return error_response(
            ErrorInfo(status=500, message="Internal error.", code="internal_error")
        )

    rag_routes.register(app)

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/asyncapi.json", include_in_schema=False)
    async def asyncapi() -> Response:
        """The bus's AsyncAPI document (libs/asyncapi.py; docs/asyncapi.json)."""
        return Response(asyncapi_json(), media_type="application/json")

    @app.get("/readyz")
    async def readyz(request: Request) -> Response:
        g = gw(request)
        checks = {"nats": g.nc.is_connected}
        try:
            async with g.db.connect() as conn:
                await conn.execute(text("SELECT 1"))
            checks["database"] = True
        except Exception:
            checks["database"] = False
        try:
            checks["redis"] = bool(await g.redis.ping())
        except Exception:
            checks["redis"] = False
        ready = all(checks.values())
        return JSON(
            {"status": "ready" if ready else "not ready", "checks": checks},
            status_code=200 if ready else 503,
        )

    @app.post("/v1/embeddings", response_model=None)
    async def embeddings(request: Request) -> Response:
        g = gw(request)
        ctx = await g.authenticate(request, Action.INFER)
        req = validate(EmbeddingRequest, await g.read_json(request))
        await audit_routes.audit_request(request, ctx, "embeddings", req.model)
        try:
            inputs = req.inputs()
        except ValueError as exc:
            raise EnclaveError(400, str(exc), "invalid_value", "input") from None
        raw = await g.bus_request(
            settings.subjects.inference_embed,
            EmbedRequest(ctx=ctx, model=req.model, inputs=inputs),
            ctx.headers(),
        )
        reply = EmbedReply.model_validate_json(raw)
        if reply.error is not None:
            raise EnclaveError.of(reply.error)
        if req.dimensions is not None and reply.vectors and req.dimensions != len(reply.vectors[0]):
            raise EnclaveError(
                400,
                f"The model `{req.model}` does not support dimensions={req.dimensions}.",
                "invalid_value",
                "dimensions",
            )
        data = []
        for i, vec in enumerate(reply.vectors):
            embedding: Any = vec
            if req.encoding_format == "base64":
                embedding = base64.b64encode(np.asarray(vec, dtype="<f4").tobytes()).decode()
            data.append({"object": "embedding", "index": i, "embedding": embedding})
        usage = {"prompt_tokens": reply.prompt_tokens, "total_tokens": reply.prompt_tokens}
        return JSON({"object": "list", "data": data, "model": req.model, "usage": usage})

    async def _models(request: Request) -> list[dict[str, Any]]:
        g = gw(request)
        ctx = await g.authenticate(request, Action.LIST_MODELS)
        raw = await g.bus_request(
            settings.subjects.inference_models, ModelsRequest(tenant=ctx.tenant), ctx.headers()
        )
        return [
            {"id": m.id, "object": "model", "created": m.created, "owned_by": m.owned_by}
            for m in ModelsReply.model_validate_json(raw).models
        ]

    @app.get("/v1/models", response_model=None)
    async def list_models(request: Request) -> Response:
        return JSON({"object": "list", "data": await _models(request)})

    @app.get("/v1/models/{model_id:path}", response_model=None)
    async def get_model(model_id: str, request: Request) -> Response:
        for m in await _models(request):
            if m["id"] == model_id:
                return JSON(m)
        raise EnclaveError(
            404, f"The model `{model_id}` does not exist.", "model_not_found", "model"
        )

    @app.post("/v1/admin/keys", response_model=None)
    async def admin_create_key(request: Request) -> Response:
        g = gw(request)
        ctx = await g.authenticate(request, Action.MANAGE_KEYS)
        body = await g.read_json(request)
        if not isinstance(body, dict) or body.get("role") not in keys.ROLES:
            raise EnclaveError(
                400, f"`role` must be one of {', '.join(keys.ROLES)}.", "invalid_value", "role"
            )
        stored, plaintext = await create_key(
            g.db, ctx.tenant, body["role"], str(body.get("name", "")), body.get("rate_limit_rpm")
        )
        return JSON(
            {
                "key": plaintext,
                "key_id": stored.key_id,
                "tenant": stored.tenant,
                "role": stored.role,
            },
            status_code=201,
        )

    _document_request_bodies(
        app,
        {
            "/v1/chat/completions": ChatCompletionRequest,
            "/v1/completions": CompletionRequest,
            "/v1/embeddings": EmbeddingRequest,
        },
    )
    audit_routes.register(app)
    guardrails_routes.register(app)
    sandbox_routes.register(app)
    return app


def _document_request_bodies(app: FastAPI, bodies: dict[str, type[BaseModel]]) -> None:
    """Put the request models in /openapi.json: these routes parse bodies themselves (orjson,
    OpenAI's 400 instead of FastAPI's 422), and the two streamed ones are plain ASGI, so
    FastAPI sees none of them."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema:
            return app.openapi_schema
        doc = build()
        schemas = doc.setdefault("components", {}).setdefault("schemas", {})
        for path, model in bodies.items():
            schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
            schemas.update(schema.pop("$defs", {}))
            schemas[model.__name__] = schema
            ref = {"$ref": f"#/components/schemas/{model.__name__}"}
            operation = (
                doc["paths"]
                .setdefault(path, {})
                .setdefault(
                    "post",
                    {
                        "summary": model.__doc__ or path,
                        "responses": {
                            "200": {
                                "description": "The OpenAI object; with stream=true, a "
                                "text/event-stream of chunks ending in `data: [DONE]`."
                            }
                        },
                    },
                )
            )
            operation["requestBody"] = {
                "required": True,
                "content": {"application/json": {"schema": ref}},
            }
        app.openapi_schema = doc
        return doc

    app.openapi = openapi  # type: ignore[method-assign]
