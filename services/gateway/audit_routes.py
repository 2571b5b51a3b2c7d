"""Audit: the gateway's audit events, and the auditor's API over the audit service.

Every inference request is recorded (action, model, request id, actor, SHA-256 of the
body: never the body). GET /v1/audit/entries, POST /v1/audit/verify and GET
/v1/audit/export serve the auditor and admin roles of the credential's own tenant; the
tenant never comes from the client. They ask the audit service over the bus.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

from fastapi import FastAPI, Request
from fastapi.responses import Response, StreamingResponse
from pydantic import BaseModel

from libs.audit import AuditPublisher, digest, export_lines
from libs.context import RequestContext
from libs.errors import EnclaveError
from libs.events import AuditExportRequest, AuditReply, AuditSearch, AuditVerifyRequest
from services.gateway.policy import Action

if TYPE_CHECKING:
    from services.gateway.bootstrap import Gateway


async def record_request(
    publisher: AuditPublisher, ctx: RequestContext, action: str, model: str, body: bytes, path: str
) -> None:
    """One inference request in the audit chain: a digest of its body, never the body."""
    await publisher.emit(
        action, ctx, model=model, digests={"request": digest(body)}, attrs={"path": path}
    )


async def audit_request(
    gw: Gateway, request: Request, ctx: RequestContext, action: str, model: str
) -> None:
    """Record one inference request; the body was read already (Starlette caches it)."""
    await record_request(gw.audit, ctx, action, model, await request.body(), request.url.path)


async def _ask(gw: Gateway, subject: str, event: BaseModel) -> AuditReply:
    reply = await gw.bus.ask(gw.bus.peers.audit, subject, event, AuditReply)
    if reply.error is not None:
        raise EnclaveError.of(reply.error)
    return reply


def _int(value: str | None, name: str, default: int) -> int:
    if value is None or value == "":
        return default
    try:
        return int(value)
    except ValueError:
        raise EnclaveError(400, f"`{name}` must be an integer.", "invalid_value", name) from None


def register(app: FastAPI, gw: Gateway) -> None:
    subjects = gw.bus.subjects

    @app.get("/v1/audit/entries", response_model=None)
    async def audit_entries(request: Request) -> Response:
        ctx = await gw.auth.check(request.headers.get("authorization"), Action.READ_AUDIT)
        q = request.query_params
        limit = _int(q.get("limit"), "limit", 100)
        if not 1 <= limit <= 500:
            raise EnclaveError(400, "`limit` must be within 1..500.", "invalid_value", "limit")
        reply = await _ask(
            gw,
            subjects.audit_api_search,
            AuditSearch(
                tenant=ctx.tenant,
                ctx=ctx,
                request_id=q.get("request_id"),
                actor=q.get("actor"),
                action=q.get("action"),
                since=q.get("since"),
                until=q.get("until"),
                after_seq=_int(q.get("after_seq"), "after_seq", 0),
                limit=limit,
            ),
        )
        return Response(
            AuditReply(
                entries=reply.entries, count=reply.count, next_after_seq=reply.next_after_seq
            ).model_dump_json(include={"entries", "count", "next_after_seq"}),
            media_type="application/json",
        )

    @app.post("/v1/audit/verify", response_model=None)
    async def audit_verify(request: Request) -> Response:
        ctx = await gw.auth.check(request.headers.get("authorization"), Action.READ_AUDIT)
        body = await gw.read_json(request) if await request.body() else {}
        if not isinstance(body, dict):
            raise EnclaveError(400, "The body must be a JSON object.", "invalid_value")
        from_seq = body.get("from_seq", 1)
        to_seq = body.get("to_seq")
        if not isinstance(from_seq, int) or from_seq < 1:
            raise EnclaveError(400, "`from_seq` must be >= 1.", "invalid_value", "from_seq")
        if to_seq is not None and not isinstance(to_seq, int):
            raise EnclaveError(400, "`to_seq` must be an integer.", "invalid_value", "to_seq")
        reply = await _ask(
            gw,
            subjects.audit_api_verify,
            AuditVerifyRequest(tenant=ctx.tenant, from_seq=from_seq, to_seq=to_seq, ctx=ctx),
        )
        return Response(
            reply.model_dump_json(include={"ok", "count", "first_bad_seq", "reason", "head_hash"}),
            media_type="application/json",
        )

    @app.get("/v1/audit/export", response_model=None)
    async def audit_export(request: Request) -> Response:
        ctx = await gw.auth.check(request.headers.get("authorization"), Action.READ_AUDIT)
        subject = subjects.audit_api_export

        async def ask(req: AuditExportRequest) -> AuditReply:
            return await _ask(gw, subject, req)

        # The first page is asked for before the response starts: its errors get a status.
        lines = export_lines(ask, ctx.tenant, ctx)
        first = await anext(lines)

        async def chunks() -> AsyncIterator[bytes]:
            yield first
            async for chunk in lines:
                yield chunk

        filename = f"audit-{ctx.tenant}.jsonl"
        return StreamingResponse(
            chunks(),
            media_type="application/x-ndjson",
            headers={"content-disposition": f'attachment; filename="{filename}"'},
        )
