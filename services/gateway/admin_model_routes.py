"""The admin API of a tenant's models (docs/identity.md; MANAGE_MODELS: admin, operator).

- `GET /v1/admin/models`: every model the tenant could use (the registry's, the SQL
  rows', its own fine-tuned ones), each with its kind, pool, engine, external provider,
  whether a worker serves its pool now (`serving`: probed by the router) and whether the
  tenant's allow-list lets it through; and the allow-list itself (`allowed`, null: every
  model).
- `PUT /v1/admin/models` `{"allowed": ["model-id", ...] | null}`: set the allow-list
  (stored in the tenant's record). A model id the tenant cannot see is a 400. The router
  enforces it where a model is resolved (chat, completions, embeddings, responses):
  another model is a 403 `model_not_allowed`, and /v1/models lists the allowed ones
  only. A fine-tuned id `tenant/base:ft[-vN]` goes with its base model. The change is
  announced (`models.changed`, kind `access`) so that cached routes end at once.

Every call is audited (`admin.models.<op>`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import orjson
from fastapi import FastAPI, Request
from fastapi.responses import Response
from pydantic import BaseModel, Field, StrictStr

from libs.audit import record_admin_action
from libs.bus import event_bytes
from libs.errors import EnclaveError
from libs.events import ModelInfo, ModelsChanged, ModelsReply, ModelsRequest
from services.gateway.adapters.sql_tenants import allowed_models, get_tenant, put_allowed_models
from services.gateway.openai_shapes import validate
from services.gateway.policy import Action

if TYPE_CHECKING:
    from services.gateway.bootstrap import Gateway

MAX_ALLOWED = 1000


class AllowedModelsBody(BaseModel):
    """PUT /v1/admin/models: the model ids the tenant may use; null: every model."""

    allowed: list[StrictStr] | None = Field(max_length=MAX_ALLOWED)


def _json(content: object, status: int = 200) -> Response:
    return Response(orjson.dumps(content), status_code=status, media_type="application/json")


def _model(m: ModelInfo) -> dict[str, Any]:
    return {
        "object": "model",
        "id": m.id,
        "kind": m.kind,
        "pool": m.pool,
        "engine": m.engine,
        "serving": m.serving,
        "external": m.provider is not None,
        "provider": m.provider,
        "owned_by": m.owned_by,
        "fine_tuned": m.owned_by != "enclave",
        "allowed": m.allowed,
        "created": m.created,
    }


def register(app: FastAPI, gw: Gateway) -> None:
    async def every_model(tenant: str, headers: dict[str, str]) -> list[ModelInfo]:
        bus = gw.bus
        reply = await bus.ask(
            bus.peers.router,
            bus.subjects.inference_models,
            ModelsRequest(tenant=tenant, admin=True),
            ModelsReply,
            headers=headers,
        )
        return reply.models

    @app.get("/v1/admin/models", response_model=None)
    async def admin_list_models(request: Request) -> Response:
        ctx = await gw.auth.check_request(request, Action.MANAGE_MODELS)
        models = await every_model(ctx.tenant, ctx.headers())
        allowed = allowed_models(await get_tenant(gw.db, ctx.tenant))
        await record_admin_action(gw.audit, ctx, "models.list", attrs={"models": len(models)})
        return _json({"object": "list", "allowed": allowed, "data": [_model(m) for m in models]})

    @app.put("/v1/admin/models", response_model=None)
    async def admin_put_models(request: Request) -> Response:
        ctx = await gw.auth.check_request(request, Action.MANAGE_MODELS)
        body = validate(AllowedModelsBody, await gw.read_json(request))
        allowed = None if body.allowed is None else list(dict.fromkeys(body.allowed))
        if allowed is not None:
            known = {m.id for m in await every_model(ctx.tenant, ctx.headers())}
            unknown = [m for m in allowed if m not in known]
            if unknown:
                raise EnclaveError(
                    400,
                    f"`allowed` names models this tenant cannot use: {', '.join(unknown)}",
                    "model_not_found",
                    "allowed",
                )
        await put_allowed_models(gw.db, ctx.tenant, allowed)
        event = ModelsChanged(
            kind="access", tenant=ctx.tenant, base_model="", public_id="", digest=""
        )
        await gw.nc.publish(gw.settings.subjects.models_changed, event_bytes(event))
        await record_admin_action(
            gw.audit,
            ctx,
            "models.put",
            attrs={"every_model": allowed is None, "allowed": len(allowed or [])},
        )
        return _json({"object": "model_access", "tenant": ctx.tenant, "allowed": allowed})
