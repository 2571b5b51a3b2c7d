"""Approvals of agent tool calls: GET /v1/approvals, GET and POST /v1/approvals/{id}.

An agent whose definition lists a tool under `approvals` pauses its run at each call of it
(services/agent_runtime: the run's state goes into the JetStream KV bucket of approvals and
the turn's message is acked). A credential whose role has `approve_tools` lists what
waits, and approves or rejects a call: the record moves from `pending` by compare-and-set
(of two approvers, one wins; the other gets a 409), the decision is audited, and
`agent.resume` (JetStream) carries it to whichever runtime replica is up, now or after a
restart. The resumed run's answer lands in the record (`status: completed`, `output`).
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING

import orjson
from fastapi import FastAPI, Request
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field

from libs.approvals import ApprovalStore
from libs.bus import event_bytes
from libs.context import RequestContext
from libs.errors import EnclaveError
from libs.events import AgentResumeRequested, ApprovalRecord
from services.gateway.openai_shapes import validate
from services.gateway.policy import Action

if TYPE_CHECKING:
    from services.gateway.bootstrap import Gateway

PUBLISH_TIMEOUT_S = 5.0
POLL_S = 0.25


class Decision(BaseModel):
    """Approve or reject the call an agent waits on."""

    model_config = ConfigDict(extra="forbid")

    approve: bool
    reason: str | None = Field(default=None, max_length=2_000)


def _json(body: object) -> Response:
    return Response(orjson.dumps(body), media_type="application/json")


def _not_found(approval_id: str) -> EnclaveError:
    return EnclaveError(
        404, f"No approval with id '{approval_id}' found.", "not_found", "approval_id"
    )


def register(app: FastAPI, gw: Gateway) -> None:
    store = ApprovalStore(gw.nc, gw.bus.subjects, gw.settings.stream_replicas)

    @app.get("/v1/approvals", response_model=None)
    async def list_approvals(request: Request, status: str | None = None) -> Response:
        ctx = await gw.auth.check_request(request, Action.APPROVE_TOOLS)
        records = await store.list(ctx.tenant)
        data = [r.public() for r in records if status is None or r.status == status]
        return _json({"object": "list", "data": data})

    @app.get("/v1/approvals/{approval_id}", response_model=None)
    async def get_approval(approval_id: str, request: Request) -> Response:
        ctx = await gw.auth.check_request(request, Action.APPROVE_TOOLS)
        found = await store.get(ctx.tenant, approval_id)
        if found is None:
            raise _not_found(approval_id)
        return _json(found[0].public())

    @app.post("/v1/approvals/{approval_id}", response_model=None)
    async def decide_route(approval_id: str, request: Request) -> Response:
        ctx = await gw.auth.check_request(request, Action.APPROVE_TOOLS)
        decision = validate(Decision, await gw.read_json(request))
        record = await decide(gw, store, ctx, approval_id, decision)
        return _json(record.public())


async def decide(
    gw: Gateway, store: ApprovalStore, ctx: RequestContext, approval_id: str, decision: Decision
) -> ApprovalRecord:
    """Record an approver's decision (compare-and-set from `pending`), audit it, and publish
    `agent.resume`; the record as decided. The caller checked the role."""
    found = await store.get(ctx.tenant, approval_id)
    if found is None:
        raise _not_found(approval_id)
    record, revision = found
    if record.status != "pending":
        raise EnclaveError(
            409, f"The approval was decided already ({record.status}).", "already_decided"
        )
    record.status = "approved" if decision.approve else "rejected"
    record.decided_by, record.decided_at = ctx.actor, int(time.time())
    record.reason = decision.reason
    if not await store.update(record, revision):
        raise EnclaveError(409, "The approval was decided meanwhile.", "already_decided")
    await gw.audit.emit(
        "approval." + record.status,
        ctx,
        attrs={"approval": record.id, "tool": record.tool[:64], "agent": record.agent[:64]},
    )
    try:
        await gw.nc.jetstream().publish(
            gw.bus.subjects.agent_resume,
            event_bytes(AgentResumeRequested(ctx=ctx, approval_id=record.id)),
            headers=ctx.headers(),
            timeout=PUBLISH_TIMEOUT_S,
        )
    except Exception:
        # Back to pending, so that the decision can be made again.
        again = await store.get(ctx.tenant, approval_id)
        if again is not None:
            again[0].status, again[0].decided_by, again[0].decided_at = "pending", None, None
            await store.update(again[0], again[1])
        raise EnclaveError(
            503, "The request queue is not available; try again later.", "bus_unavailable"
        ) from None
    return record


async def wait_done(
    store: ApprovalStore, tenant: str, approval_id: str, timeout_s: float
) -> ApprovalRecord:
    """The record once its resumed run has ended (polled: decisions are rare)."""
    deadline = time.monotonic() + timeout_s
    while True:
        found = await store.get(tenant, approval_id)
        if found is not None and found[0].status in ("completed", "failed"):
            return found[0]
        if time.monotonic() > deadline:
            raise EnclaveError(
                504,
                f"The decision is recorded, but the run has not ended in {timeout_s:g}s; "
                f"see GET /v1/approvals/{approval_id}.",
                "upstream_timeout",
            )
        await asyncio.sleep(POLL_S)
