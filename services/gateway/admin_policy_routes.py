"""The admin API of a tenant's guardrail policy (docs/identity.md; MANAGE_POLICIES: admin).

- `GET /v1/admin/policy`: the tenant's own document (null where it has none), the merged
  policy it runs under (`effective`) and its `policy_version`.
- `PUT /v1/admin/policy`: a YAML or JSON document for the tenant (`level` and `tenant`
  may be left out). The guardrails check it with their own parser and merge rules (a
  tenant may only restrict the global policy, and its agents' documents must still hold
  under it): an invalid or relaxing document is a 400 naming the rule and the level
  (`invalid_policy`, `policy_relaxed`), and nothing is written. Otherwise written and in
  force for the next request.
- `DELETE /v1/admin/policy`: the tenant's document removed (the global policy alone).
- The same under `/v1/admin/policy/agents/{agent}` for an agent's document.

The gateway never reads the policy folder: every call is one `PolicyRequest` to the
guardrails (`guardrails.policies`). Every call is audited (`admin.policy.<op>`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import orjson
from fastapi import FastAPI, Request
from fastapi.responses import Response

from libs.audit import record_admin_action
from libs.errors import EnclaveError
from libs.events import PolicyDelete, PolicyGet, PolicyOperation, PolicyPut, PolicyReply
from libs.events import PolicyRequest as PolicyAsk
from services.gateway.policy import Action

if TYPE_CHECKING:
    from libs.context import RequestContext
    from services.gateway.bootstrap import Gateway


def _json(content: object, status: int = 200) -> Response:
    return Response(orjson.dumps(content), status_code=status, media_type="application/json")


def register(app: FastAPI, gw: Gateway) -> None:
    async def ask(ctx: RequestContext, operation: PolicyOperation, what: str) -> Response:
        bus = gw.bus
        reply = await bus.ask(
            bus.peers.guardrails_api,
            bus.subjects.guardrails_policies,
            PolicyAsk(ctx=ctx, operation=operation),
            PolicyReply,
            failed=lambda error: PolicyReply(error=error),
        )
        attrs: dict[str, str | bool | int] = {"agent": operation.agent or ""}
        if reply.error is not None:
            attrs["code"] = reply.error.code or ""
            attrs["rule"] = reply.error.param or ""
        else:
            attrs["policy_version"] = str(reply.body.get("policy_version", ""))
        await record_admin_action(
            gw.audit,
            ctx,
            f"policy.{what}",
            outcome="ok" if reply.error is None else "refused",
            attrs=attrs,
        )
        if reply.error is not None:
            raise EnclaveError.of(reply.error)
        return _json(reply.body, 201 if reply.body.get("created") else 200)

    async def document(request: Request) -> str:
        body = await request.body()
        try:
            return body.decode()
        except UnicodeDecodeError:
            raise EnclaveError(400, "A policy document is UTF-8 text.", "invalid_policy") from None

    @app.get("/v1/admin/policy", response_model=None)
    async def admin_get_policy(request: Request) -> Response:
        ctx = await gw.auth.check_request(request, Action.MANAGE_POLICIES)
        return await ask(ctx, PolicyGet(), "get")

    @app.put("/v1/admin/policy", response_model=None)
    async def admin_put_policy(request: Request) -> Response:
        ctx = await gw.auth.check_request(request, Action.MANAGE_POLICIES)
        return await ask(ctx, PolicyPut(document=await document(request)), "put")

    @app.delete("/v1/admin/policy", response_model=None)
    async def admin_delete_policy(request: Request) -> Response:
        ctx = await gw.auth.check_request(request, Action.MANAGE_POLICIES)
        return await ask(ctx, PolicyDelete(), "delete")

    @app.get("/v1/admin/policy/agents/{agent}", response_model=None)
    async def admin_get_agent_policy(agent: str, request: Request) -> Response:
        ctx = await gw.auth.check_request(request, Action.MANAGE_POLICIES)
        return await ask(ctx, PolicyGet(agent=agent), "get")

    @app.put("/v1/admin/policy/agents/{agent}", response_model=None)
    async def admin_put_agent_policy(agent: str, request: Request) -> Response:
        ctx = await gw.auth.check_request(request, Action.MANAGE_POLICIES)
        return await ask(ctx, PolicyPut(agent=agent, document=await document(request)), "put")

    @app.delete("/v1/admin/policy/agents/{agent}", response_model=None)
    async def admin_delete_agent_policy(agent: str, request: Request) -> Response:
        ctx = await gw.auth.check_request(request, Action.MANAGE_POLICIES)
        return await ask(ctx, PolicyDelete(agent=agent), "delete")
