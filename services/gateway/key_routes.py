"""The admin's API over the tenant's API keys: create, list, revoke.

POST /v1/admin/keys creates a key (the body validated by `NewKeyBody`: a wrong role, a
name over 128 characters or a `rate_limit_rpm` that is not an integer in 1..1,000,000 is a
400 naming the field); GET /v1/admin/keys lists the credential's tenant's keys (never a
hash or a plaintext); DELETE /v1/admin/keys/{key_id} revokes one of them (another
tenant's key is a 404, as is an unknown one) and announces it on `keys.revoked`, so every
replica drops it from its cache at once. Admin role only; each is audited (libs.audit).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

import orjson
from fastapi import FastAPI, Request
from fastapi.responses import Response
from pydantic import BaseModel, Field, StrictInt, StrictStr

from libs.audit import record_admin_action, record_key_created, record_key_revoked
from libs.errors import EnclaveError
from libs.events import KeyRevoked
from services.gateway.adapters.sql_keys import create_key, find_key, list_keys, revoke_key
from services.gateway.openai_shapes import validate
from services.gateway.policy import Action

if TYPE_CHECKING:
    from services.gateway.bootstrap import Gateway

MAX_NAME = 128
MAX_RPM = 1_000_000


class NewKeyBody(BaseModel):
    """POST /v1/admin/keys: the new key's role, a name, and its own rate limit (or the
    gateway's default when absent). Other fields (a `tenant`, say) are ignored: the
    tenant is the credential's."""

    role: Literal["admin", "developer", "auditor", "user"]
    name: StrictStr = Field("", max_length=MAX_NAME)
    rate_limit_rpm: StrictInt | None = Field(None, ge=1, le=MAX_RPM)


def _json(content: object, status: int = 200) -> Response:
    return Response(orjson.dumps(content), status_code=status, media_type="application/json")


def register(app: FastAPI, gw: Gateway) -> None:
    @app.post("/v1/admin/keys", response_model=None)
    async def admin_create_key(request: Request) -> Response:
        ctx = await gw.auth.check_request(request, Action.MANAGE_KEYS)
        body = validate(NewKeyBody, await gw.read_json(request))
        stored, plaintext = await create_key(
            gw.db, ctx.tenant, body.role, body.name, body.rate_limit_rpm
        )
        await record_key_created(
            gw.audit,
            ctx,
            key_id=stored.key_id,
            tenant=ctx.tenant,
            role=stored.role,
            rate_limit_rpm=stored.rate_limit_rpm,
        )
        return _json(
            {
                "key": plaintext,
                "key_id": stored.key_id,
                "tenant": stored.tenant,
                "role": stored.role,
            },
            201,
        )

    @app.get("/v1/admin/keys", response_model=None)
    async def admin_list_keys(request: Request) -> Response:
        ctx = await gw.auth.check_request(request, Action.MANAGE_KEYS)
        found = await list_keys(gw.db, ctx.tenant)
        await record_admin_action(gw.audit, ctx, "keys.list", attrs={"keys": len(found)})
        data = [
            {
                "object": "api_key",
                "key_id": k.key_id,
                "tenant": k.tenant,
                "role": k.role,
                "name": k.name,
                "rate_limit_rpm": k.rate_limit_rpm,
                "revoked": k.revoked,
                "created_at": k.created_at,
            }
            for k in found
        ]
        return _json({"object": "list", "data": data})

    @app.delete("/v1/admin/keys/{key_id}", response_model=None)
    async def admin_revoke_key(key_id: str, request: Request) -> Response:
        ctx = await gw.auth.check_request(request, Action.MANAGE_KEYS)
        stored = await find_key(gw.db, key_id)
        done = stored is not None and stored.tenant == ctx.tenant
        if done:
            done = await revoke_key(gw.db, key_id, ctx.tenant)
        await record_key_revoked(gw.audit, ctx, key_id=key_id, tenant=ctx.tenant, found=done)
        if not done:
            raise EnclaveError(404, f"No key `{key_id}` in this tenant.", "key_not_found", "key_id")
        gw.auth.forget(key_id)
        await gw.nc.publish(
            gw.settings.subjects.keys_revoked,
            KeyRevoked(key_id=key_id, tenant=ctx.tenant).model_dump_json().encode(),
        )
        return _json({"object": "api_key.revoked", "key_id": key_id, "revoked": True})
