"""The admin API of tenants, external providers and usage (docs/identity.md).

- `GET /v1/admin/tenant` (admin, auditor, operator): the tenant's record, the limits in
  force (its own over the settings'), the month's tokens and the requests in flight.
- `PUT /v1/admin/tenant` (platform operator, naming the tenant in `OpenAI-Tenant`):
  create or replace the tenant's record and its limits (`TenantBody`).
- `DELETE /v1/admin/tenant` (platform operator): erase the tenant: its memories,
  documents and conversation buffers (the memory service), its fine-tuning jobs, adapter
  versions and bundles (the trainer), its keys (revoked on every replica at once), its
  providers, its record and its counters in Redis. Its audit entries stay (the README
  explains crypto-shredding); the erasure itself is audited.
- `GET/PUT/DELETE /v1/admin/providers[/{name}]` (admin, operator): the external providers
  enabled for the tenant (libs.providers), each with its allow-list of models; the API key
  is sealed at rest (libs.secret_box) and never shown again. The tenant's base_url, key
  and model names are what its requests use (libs.providers.tenant_upstream).
- `GET /v1/admin/usage?start=YYYY-MM-DD&end=YYYY-MM-DD` (admin, auditor, operator): tokens
  and requests per day, key and model, as settled by the limits (services/gateway/quotas.py).

Every call is audited (`admin.<what>`).
"""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from typing import TYPE_CHECKING, Any

import orjson
from fastapi import FastAPI, Request
from fastapi.responses import Response
from pydantic import BaseModel, Field, StrictBool, StrictInt, StrictStr

from libs.audit import record_admin_action
from libs.errors import EnclaveError
from libs.events import (
    KeyRevoked,
    RagReply,
    RagRequest,
    TenantDataDelete,
    TenantErase,
    TrainerReply,
)
from libs.events import TrainerRequest as TrainerAsk
from libs.providers import Provider, url_allowed
from libs.secret_box import SecretBox
from services.gateway.adapters.sql_tenants import (
    delete_provider,
    erase_tenant_rows,
    get_tenant,
    list_providers,
    own_limits,
    put_provider,
    put_tenant,
)
from services.gateway.openai_shapes import validate
from services.gateway.policy import Action
from services.gateway.quotas import LIMIT_FIELDS, tenant_limits

if TYPE_CHECKING:
    from services.gateway.bootstrap import Gateway

MAX_USAGE_DAYS = 92


class TenantLimitsBody(BaseModel):
    """A tenant's own limits; an absent one is the gateway's setting, 0 is none."""

    key_rpm: StrictInt | None = Field(None, ge=1, le=10_000_000)  # keys without their own
    tenant_rpm: StrictInt | None = Field(None, ge=0, le=10_000_000)
    key_tpm: StrictInt | None = Field(None, ge=0, le=10_000_000_000)
    tenant_tpm: StrictInt | None = Field(None, ge=0, le=10_000_000_000)
    monthly_tokens: StrictInt | None = Field(None, ge=0, le=10**15)
    concurrency: StrictInt | None = Field(None, ge=0, le=100_000)


class TenantBody(BaseModel):
    display_name: StrictStr = Field("", max_length=200)
    limits: TenantLimitsBody = Field(default_factory=TenantLimitsBody)


class ProviderBody(BaseModel):
    """PUT /v1/admin/providers/{name}: an OpenAI-compatible upstream for this tenant."""

    # Where this tenant's requests to the provider go (its own account or deployment);
    # empty: the platform's pools of the provider, with their key unless `api_key` is set.
    base_url: StrictStr = Field("", pattern=r"^(https?://.+)?$", max_length=1000)
    # Plain here, sealed before it is stored (and on the bus, opened by the worker that
    # sends it); absent: the stored key stays. A tenant's base_url gets only its own key.
    api_key: StrictStr | None = Field(None, max_length=4096)
    # The platform's model name -> the upstream's (libs.providers.Provider.models).
    models: dict[str, str] = Field(default_factory=dict)
    allowed_models: list[StrictStr] = Field(default_factory=list)  # may be sent there
    enabled: StrictBool = False


def _json(content: object, status: int = 200) -> Response:
    return Response(orjson.dumps(content), status_code=status, media_type="application/json")


def _day(value: str | None, default: date, param: str) -> date:
    if not value:
        return default
    try:
        return date.fromisoformat(value)
    except ValueError:
        raise EnclaveError(
            400, f"`{param}` must be a date (YYYY-MM-DD).", "invalid_value", param
        ) from None


def usage_days(start: str | None, end: str | None, today: date) -> list[str]:
    """The days asked for (default: this month to today), as the usage counters name them."""
    last = _day(end, today, "end")
    first = _day(start, last.replace(day=1), "start")
    if first > last:
        raise EnclaveError(400, "`start` is after `end`.", "invalid_value", "start")
    if (last - first).days >= MAX_USAGE_DAYS:
        raise EnclaveError(400, f"At most {MAX_USAGE_DAYS} days at once.", "invalid_value", "start")
    return [(first + timedelta(days=i)).strftime("%Y%m%d") for i in range((last - first).days + 1)]


def _provider_object(row: Any) -> dict[str, Any]:
    return {
        "object": "provider",
        "name": row.provider,
        "base_url": row.base_url,
        "api_key_set": bool(row.api_key),  # never the key
        "models": row.models,
        "allowed_models": row.allowed_models,
        "enabled": row.enabled,
    }


def register(app: FastAPI, gw: Gateway) -> None:
    @app.get("/v1/admin/tenant", response_model=None)
    async def admin_get_tenant(request: Request) -> Response:
        ctx = await gw.auth.check_request(request, Action.READ_USAGE)
        row = await get_tenant(gw.db, ctx.tenant)
        limits = tenant_limits(gw.auth.defaults, own_limits(row))
        await record_admin_action(gw.audit, ctx, "tenant.get")
        quotas = gw.auth.quotas
        return _json(
            {
                "object": "tenant",
                "name": ctx.tenant,
                "display_name": row.display_name if row else "",
                "own_limits": own_limits(row),
                "limits": {f: getattr(limits, f) for f in LIMIT_FIELDS},
                "tokens_this_month": await quotas.used_this_month(ctx.tenant),
                "in_flight": await quotas.in_flight(ctx.tenant),
            }
        )

    @app.put("/v1/admin/tenant", response_model=None)
    async def admin_put_tenant(request: Request) -> Response:
        ctx = await gw.auth.check_request(request, Action.MANAGE_TENANT)
        body = validate(TenantBody, await gw.read_json(request))
        own = body.limits.model_dump(exclude_none=True)
        _, created = await put_tenant(gw.db, ctx.tenant, body.display_name, own)
        gw.auth.forget_tenant(ctx.tenant)  # other replicas: within the key cache's time
        await record_admin_action(gw.audit, ctx, "tenant.put", attrs={"created": created, **own})
        return _json(
            {"object": "tenant", "name": ctx.tenant, "own_limits": own, "created": created},
            201 if created else 200,
        )

    @app.delete("/v1/admin/tenant", response_model=None)
    async def admin_erase_tenant(request: Request) -> Response:
        ctx = await gw.auth.check_request(request, Action.MANAGE_TENANT)
        bus = gw.bus
        # The other services' data first: a failure there leaves the keys, so the
        # operator can retry (each step is idempotent).
        memory = await bus.ask(
            bus.peers.memory_api,
            bus.subjects.memory_rag,
            RagRequest(ctx=ctx, operation=TenantDataDelete()),
            RagReply,
            headers=ctx.headers(),
        )
        trainer = await bus.ask(
            bus.peers.trainer,
            bus.subjects.trainer_api,
            TrainerAsk(ctx=ctx, operation=TenantErase()),
            TrainerReply,
            headers=ctx.headers(),
        )
        if trainer.error is not None:
            raise EnclaveError.of(trainer.error)
        rows = await erase_tenant_rows(gw.db, ctx.tenant)
        key_ids = rows["keys"]
        assert isinstance(key_ids, list)
        for key_id in key_ids:
            gw.auth.forget(key_id)
            await gw.nc.publish(
                gw.settings.subjects.keys_revoked,
                KeyRevoked(key_id=key_id, tenant=ctx.tenant).model_dump_json().encode(),
            )
        gw.auth.forget_tenant(ctx.tenant)
        counters = await gw.auth.quotas.forget_tenant(ctx.tenant)
        trained = trainer.body or {}
        summary: dict[str, Any] = {
            "keys": len(key_ids),
            "providers": rows["providers"],
            "mcp_servers": rows["mcp_servers"],
            "tenant_record": rows["tenant_record"],
            "memory": bool(memory.body.get("deleted")) if isinstance(memory.body, dict) else False,
            "fine_tuning_jobs": int(trained.get("jobs", 0)),
            "adapters": int(trained.get("adapters", 0)),
            "adapter_bundles": int(trained.get("bundles", 0)),
            "counters": counters,
        }
        await record_admin_action(gw.audit, ctx, "tenant.erase", attrs=summary)
        return _json({"object": "tenant.erased", "tenant": ctx.tenant, "deleted": summary})

    @app.get("/v1/admin/providers", response_model=None)
    async def admin_list_providers(request: Request) -> Response:
        ctx = await gw.auth.check_request(request, Action.MANAGE_PROVIDERS)
        rows = await list_providers(gw.db, ctx.tenant)
        await record_admin_action(gw.audit, ctx, "providers.list", attrs={"providers": len(rows)})
        return _json({"object": "list", "data": [_provider_object(r) for r in rows]})

    @app.put("/v1/admin/providers/{name}", response_model=None)
    async def admin_put_provider(name: str, request: Request) -> Response:
        ctx = await gw.auth.check_request(request, Action.MANAGE_PROVIDERS)
        body = validate(ProviderBody, await gw.read_json(request))
        try:
            Provider(name=name, base_url=body.base_url, models=body.models)
        except ValueError:
            raise EnclaveError(
                400, "A provider's name is 1-64 of a-z, 0-9, _ and -.", "invalid_value", "name"
            ) from None
        if body.base_url and not url_allowed(body.base_url, gw.settings.provider_url_prefixes):
            raise EnclaveError(
                400,
                "The platform does not allow this address for a provider "
                "(ENCLAVE_PROVIDER_URL_PREFIXES).",
                "invalid_value",
                "base_url",
            )
        unknown = sorted(set(body.allowed_models) - set(body.models))
        if unknown:
            raise EnclaveError(
                400,
                f"allowed_models names models the provider does not list: {', '.join(unknown)}",
                "invalid_value",
                "allowed_models",
            )
        fields: dict[str, Any] = {
            "base_url": body.base_url,
            "models": body.models,
            "allowed_models": body.allowed_models,
            "enabled": body.enabled,
        }
        if body.api_key is not None:
            box = SecretBox.at(gw.settings.home)
            fields["api_key"] = box.seal(body.api_key) if body.api_key else ""
        created = await put_provider(gw.db, ctx.tenant, name, **fields)
        await record_admin_action(
            gw.audit,
            ctx,
            "providers.put",
            attrs={
                "provider": name,
                "enabled": body.enabled,
                "allowed_models": len(body.allowed_models),
                "api_key_changed": body.api_key is not None,
            },
        )
        [row] = [r for r in await list_providers(gw.db, ctx.tenant) if r.provider == name]
        return _json(_provider_object(row), 201 if created else 200)

    @app.delete("/v1/admin/providers/{name}", response_model=None)
    async def admin_delete_provider(name: str, request: Request) -> Response:
        ctx = await gw.auth.check_request(request, Action.MANAGE_PROVIDERS)
        done = await delete_provider(gw.db, ctx.tenant, name)
        await record_admin_action(
            gw.audit,
            ctx,
            "providers.delete",
            outcome="ok" if done else "not_found",
            attrs={"provider": name},
        )
        if not done:
            raise EnclaveError(
                404, f"No provider `{name}` in this tenant.", "provider_not_found", "name"
            )
        return _json({"object": "provider.deleted", "name": name, "deleted": True})

    @app.get("/v1/admin/usage", response_model=None)
    async def admin_usage(request: Request) -> Response:
        ctx = await gw.auth.check_request(request, Action.READ_USAGE)
        query = request.query_params
        days = usage_days(query.get("start"), query.get("end"), datetime.now(UTC).date())
        rows = await gw.auth.quotas.usage(ctx.tenant, days)
        await record_admin_action(gw.audit, ctx, "usage.get", attrs={"days": len(days)})
        return _json(
            {
                "object": "list",
                "tenant": ctx.tenant,
                "start": days[0],
                "end": days[-1],
                "data": [
                    {
                        "object": "usage",
                        "day": r.day,
                        "key_id": r.key_id,
                        "model": r.model,
                        "tokens": r.tokens,
                        "requests": r.requests,
                    }
                    for r in rows
                ],
                "total_tokens": sum(r.tokens for r in rows),
                "total_requests": sum(r.requests for r in rows),
            }
        )
