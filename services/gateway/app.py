"""gateway wiring: the OpenAI-compatible HTTP API in front of the bus.

It authenticates (the tenant always comes from the credential), applies role and rate
limits, validates OpenAI request shapes, publishes chat.requested and streams the turn
back as server-sent events. Errors leave in OpenAI's error shape, never as 422. Every
route gets the `Gateway` that bootstrap.py built, typed.
"""

from __future__ import annotations

import base64
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import numpy as np
import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from pydantic import BaseModel
from sqlalchemy import text
from starlette.exceptions import HTTPException as StarletteHTTPException

from libs.asyncapi import render as asyncapi_json
from libs.errors import EnclaveError, ErrorInfo
from libs.events import EmbedReply, EmbedRequest, ModelsReply, ModelsRequest
from libs.rbac import TENANT_HEADER
from libs.settings import Settings
from services.gateway import (
    admin_model_routes,
    admin_policy_routes,
    admin_routes,
    approvals_routes,
    audit_routes,
    fine_tuning_routes,
    guardrails_routes,
    key_routes,
    mcp_routes,
    rag_routes,
    responses_routes,
    sandbox_routes,
    skills_routes,
)
from services.gateway.admission import AdmissionLayer
from services.gateway.approvals_routes import Decision
from services.gateway.bootstrap import Gateway, build
from services.gateway.hot_path import HotPath
from services.gateway.openai_shapes import (
    ChatCompletionRequest,
    CompletionRequest,
    EmbeddingRequest,
    validate,
)
from services.gateway.policy import Action
from services.gateway.quotas import error_headers, reservation_size
from services.gateway.responses_shapes import ResponsesRequest
from services.gateway.skills_routes import SkillUpload

log = logging.getLogger("enclave.gateway")


class JSON(Response):
    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content)


def error_response(info: ErrorInfo, headers: dict[str, str] | None = None) -> JSON:
    return JSON(info.body(), status_code=info.status, headers=headers)


def create_app(settings: Settings) -> AdmissionLayer:
    """The gateway as one ASGI app: the body limit and Retry-After on every route
    (admission.py), then the streamed routes plain, the rest FastAPI."""
    gw = build(settings)
    return AdmissionLayer(HotPath(gw, create_fastapi(gw)), gw.body_limit)


def create_fastapi(gw: Gateway) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await gw.start()
        await responses.start()
        try:
            yield
        finally:
            await gw.stop()

    app = FastAPI(
        title="Enclave",
        version="0.1.0",
        description="OpenAI-compatible API of the Enclave platform.",
        lifespan=lifespan,
    )
    subjects, peers = gw.bus.subjects, gw.bus.peers

    @app.exception_handler(EnclaveError)
    async def _enclave_error(request: Request, exc: EnclaveError) -> Response:
        return error_response(exc.info, error_headers(exc))

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
        log.error("%s %s failed", request.method, request.url.path, exc_info=exc)
        return error_response(
            ErrorInfo(status=500, message="Internal error.", code="internal_error")
        )

    rag_routes.register(app, gw)

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/asyncapi.json", include_in_schema=False)
    async def asyncapi() -> Response:
        """The bus's AsyncAPI document (libs/asyncapi.py; docs/asyncapi.json)."""
        return Response(asyncapi_json(), media_type="application/json")

    @app.get("/readyz")
    async def readyz() -> Response:
        checks = {"nats": gw.nc.is_connected}
        try:
            async with gw.db.connect() as conn:
                await conn.execute(text("SELECT 1"))
            checks["database"] = True
        except Exception:
            checks["database"] = False
        try:
            checks["redis"] = bool(await gw.redis.ping())
        except Exception:
            checks["redis"] = False
        ready = all(checks.values())
        return JSON(
            {"status": "ready" if ready else "not ready", "checks": checks},
            status_code=200 if ready else 503,
        )

    @app.post("/v1/embeddings", response_model=None)
    async def embeddings(request: Request) -> Response:
        headers = request.headers
        grant = await gw.auth.authorize(
            headers.get("authorization"), Action.INFER, headers.get(TENANT_HEADER)
        )
        ctx = grant.ctx
        req = validate(EmbeddingRequest, await gw.read_json(request))
        await audit_routes.audit_request(gw, request, ctx, "embeddings", req.model)
        try:
            inputs = req.inputs()
        except ValueError as exc:
            raise EnclaveError(400, str(exc), "invalid_value", "input") from None
        # The exact limits, as for chats: the inputs' estimate reserved, settled from the
        # tokens the model counted (services/gateway/quotas.py).
        reservation = await grant.admit(reservation_size(sum(len(t) for t in inputs), 0))
        used = 0
        try:
            reply = await gw.bus.ask(
                peers.embeddings,
                subjects.inference_embed,
                EmbedRequest(ctx=ctx, model=req.model, inputs=inputs),
                EmbedReply,
            )
            used = reply.prompt_tokens if reply.error is None else 0
        finally:
            await gw.auth.settle(reservation, used, req.model)
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
        ctx = await gw.auth.check_request(request, Action.LIST_MODELS)
        reply = await gw.bus.ask(
            peers.router,
            subjects.inference_models,
            ModelsRequest(tenant=ctx.tenant),
            ModelsReply,
            headers=ctx.headers(),
        )
        return [
            {"id": m.id, "object": "model", "created": m.created, "owned_by": m.owned_by}
            for m in reply.models
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

    key_routes.register(app, gw)
    admin_routes.register(app, gw)
    mcp_routes.register(app, gw)
    admin_policy_routes.register(app, gw)
    admin_model_routes.register(app, gw)

    _document_request_bodies(
        app,
        {
            "/v1/chat/completions": ChatCompletionRequest,
            "/v1/completions": CompletionRequest,
            "/v1/embeddings": EmbeddingRequest,
            "/v1/fine_tuning/jobs": fine_tuning_routes.CreateJob,
            "/v1/responses": ResponsesRequest,
            "/v1/skills": SkillUpload,
            "/v1/approvals/{approval_id}": Decision,
        },
    )
    audit_routes.register(app, gw)
    guardrails_routes.register(app, gw)
    sandbox_routes.register(app, gw)
    fine_tuning_routes.register(app, gw)
    responses = responses_routes.register(app, gw)
    approvals_routes.register(app, gw)
    skills_routes.register(app, gw)
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
