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
from fastapi.responses import Response, StreamingResponse
from nats.aio.client import Client as NatsClient
from redis.asyncio import Redis
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine
from starlette.exceptions import HTTPException as StarletteHTTPException

from libs.bus import ensure_streams, event_bytes
from libs.context import RequestContext, new_request_id
from libs.db.engine import make_engine, migrate_async
from libs.errors import EnclaveError, ErrorInfo
from libs.events import (
    ChatRequested,
    EmbedReply,
    EmbedRequest,
    ModelsReply,
    ModelsRequest,
    TurnEvent,
    Usage,
)
from libs.settings import Settings
from services.gateway import guardrails_routes, keys
from services.gateway.adapters.redis_limits import RedisRateLimiter
from services.gateway.adapters.sql_keys import StoredKey, create_key, find_key
from services.gateway.openai_shapes import (
    Accumulator,
    ChatCompletionRequest,
    ChatStreamShaper,
    CompletionRequest,
    EmbeddingRequest,
    chat_event,
    completion_event,
    parse_json,
    validate,
)
from services.gateway.policy import Action, may
from services.gateway.turn_client import TurnClient, TurnStream

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
        token = keys.bearer_token(request.headers.get("authorization"))
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
        rpm = stored.rate_limit_rpm or self.settings.rate_limit_rpm
        if not await self.limiter.allow(stored.key_id, rpm):
            raise EnclaveError(
                429,
                f"Rate limit reached for this key ({rpm} requests per minute).",
                "rate_limit_exceeded",
            )
        return RequestContext(
            tenant=stored.tenant, request_id=new_request_id(), actor=stored.key_id, role=stored.role
        )

    async def read_json(self, request: Request) -> Any:
        limit = self.settings.max_body_bytes
        declared = request.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > limit:
            raise _too_large(limit)
        body = await request.body()
        if len(body) > limit:
            raise _too_large(limit)
        return parse_json(body)

    async def bus_request(self, subject: str, event: Any, headers: dict[str, str]) -> bytes:
        try:
            msg = await self.nc.request(
                subject,
                event_bytes(event),
                timeout=self.settings.upstream_timeout_s,
                headers=headers,
            )
        except nats.errors.NoRespondersError:
            raise EnclaveError(
                503, "The inference router is not available; try again later.", "no_router"
            ) from None
        except nats.errors.TimeoutError:
            raise EnclaveError(504, "Upstream timeout.", "upstream_timeout") from None
        return bytes(msg.data)


def _too_large(limit: int) -> EnclaveError:
    return EnclaveError(413, f"The request body is larger than {limit} bytes.", "request_too_large")


async def turn_response(
    gw: Gateway, event: ChatRequested, stream: bool, include_usage: bool
) -> Response:
    turn = await gw.turns.start(event)
    headers = {"x-request-id": event.ctx.request_id}
    try:
        # Hold the status line until the turn produced output or failed, so that an error
        # before the first token (unknown model, no worker, timeout) gets its own status.
        first = await turn.next_batch()
        while not any(ev.deltas or ev.error or ev.done for ev in first):
            first += await turn.next_batch()
    except BaseException:
        await turn.close()
        raise
    for ev in first:
        if ev.error is not None and not any(e.deltas for e in first):
            await turn.close()
            raise EnclaveError.of(ev.error)
        for role, ident in (ev.served_by or {}).items():
            headers[f"x-enclave-{role}"] = ident
    if stream:
        headers["cache-control"] = "no-cache"
        return StreamingResponse(
            _sse(turn, first, ChatStreamShaper(event, include_usage)),
            media_type="text/event-stream",
            headers=headers,
        )
    try:
        acc = Accumulator(event.params.n)
        usage = Usage()
        batch = first
        while True:
            done = False
            for ev in batch:
                if ev.error is not None:
                    raise EnclaveError.of(ev.error)
                acc.add(ev.deltas)
                usage = ev.usage or usage
                done = done or ev.done
            if done:
                break
            batch = await turn.next_batch()
    finally:
        await turn.close()
    return JSON(acc.response(event, usage), headers=headers)


def _sse_line(obj: Any) -> bytes:
    return b"data: " + orjson.dumps(obj) + b"\n\n"


async def _sse(
    turn: TurnStream, first: list[TurnEvent], shaper: ChatStreamShaper
) -> AsyncIterator[bytes]:
    batch = first
    try:
        while True:
            out: list[bytes] = []
            done = False
            for ev in batch:
                out.extend(_sse_line(c) for c in shaper.chunks(ev.deltas))
                if ev.error is not None:
                    out.append(_sse_line(ev.error.body()))
                    done = True
                elif ev.done:
                    if shaper.include_usage:
                        out.append(_sse_line(shaper.usage_chunk(ev.usage or Usage())))
                    done = True
            if done:
                out.append(b"data: [DONE]\n\n")
            # One write per batch of events: fewer syscalls under load.
            yield b"".join(out)
            if done:
                return
            try:
                batch = await turn.next_batch()
            except EnclaveError as exc:
                yield _sse_line(exc.info.body()) + b"data: [DONE]\n\n"
                return
    finally:
        await turn.close()


def create_app(settings: Settings) -> FastAPI:
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
        )
        try:
            yield
        finally:
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

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

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

    @app.post("/v1/chat/completions", response_model=None)
    async def chat_completions(request: Request) -> Response:
        g = gw(request)
        ctx = await g.authenticate(request, Action.INFER)
        req = validate(ChatCompletionRequest, await g.read_json(request))
        event = chat_event(req, ctx)
        return await turn_response(g, event, req.stream, req.include_usage)

    @app.post("/v1/completions", response_model=None)
    async def completions(request: Request) -> Response:
        g = gw(request)
        ctx = await g.authenticate(request, Action.INFER)
        req = validate(CompletionRequest, await g.read_json(request))
        event = completion_event(req, ctx)
        return await turn_response(g, event, req.stream, req.include_usage)

    @app.post("/v1/embeddings", response_model=None)
    async def embeddings(request: Request) -> Response:
        g = gw(request)
        ctx = await g.authenticate(request, Action.INFER)
        req = validate(EmbeddingRequest, await g.read_json(request))
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

    guardrails_routes.register(app)
    return app
