"""The Responses API: POST /v1/responses, GET /v1/responses/{id}, POST .../{id}/cancel.

No second pipeline: a response is one turn, published as the `ChatRequested` a chat
completion would be (responses_shapes.py makes it) and read back through the same turn
client (`open_turn`, turn_client.py), so guardrails, memory, tool calling, agents
(`model: agent:<name>`) and audit are the chat turn's. What differs is the shape: the
`response` object, streamed as `response.*` events, and stored (SQL, the tenant's own) so
that it can be retrieved and continued with `previous_response_id`.

An `mcp_approval_response` input item (OpenAI's answer to an `mcp_approval_request`)
decides on the call an agent waits on, for a role with `approve_tools`
(approvals_routes.py), and the response is the resumed run's answer.

`background: true` runs the turn in a task of this replica and answers at once
(`queued`); GET reads its progress, and cancel marks it `cancelled` (only background
responses can be cancelled, as OpenAI's) and tells every replica on `responses.cancel`,
so the one running it stops reading the turn.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

import orjson
from fastapi import FastAPI, Request
from fastapi.responses import Response, StreamingResponse
from nats.aio.msg import Msg
from pydantic import ValidationError

from libs import rbac
from libs.approvals import ApprovalStore
from libs.context import RequestContext
from libs.errors import EnclaveError, ErrorInfo
from libs.events import ChatMessage, ChatRequested, Delta, ResponseCancelled, ToolStep, Usage
from services.gateway.adapters.sql_responses import SqlResponses
from services.gateway.approvals_routes import Decision, decide, wait_done
from services.gateway.audit_routes import record_request
from services.gateway.auth import Grant
from services.gateway.hot_path import open_turn
from services.gateway.metering import MeteredTurn
from services.gateway.openai_shapes import validate
from services.gateway.policy import Action
from services.gateway.quotas import event_reservation
from services.gateway.responses_shapes import (
    ApprovalAnswer,
    Builder,
    ResponsesRequest,
    Status,
    approval_answer,
    now,
    request_id_of,
    response_id,
    response_json,
    to_event,
)
from services.gateway.turn_client import TurnStream

if TYPE_CHECKING:
    from services.gateway.bootstrap import Gateway

log = logging.getLogger("enclave.gateway.responses")
ACTION = "responses"
PATH = "/v1/responses"
LIVE = {"queued", "in_progress"}


def _json(body: Any, status: int = 200, ctx: RequestContext | None = None) -> Response:
    headers = {"x-request-id": ctx.request_id} if ctx is not None else None
    return Response(orjson.dumps(body), status, headers=headers, media_type="application/json")


def _sse(event: dict[str, Any]) -> bytes:
    return b"event: " + event["type"].encode() + b"\ndata: " + orjson.dumps(event) + b"\n\n"


class Responses:
    """The stored responses, and the background ones this replica runs."""

    def __init__(self, gw: Gateway) -> None:
        self.gw = gw
        self.store = SqlResponses(gw.db)
        self.approvals = ApprovalStore(gw.nc, gw.bus.subjects, gw.settings.stream_replicas)
        self.running: dict[str, asyncio.Task[None]] = {}

    async def start(self) -> None:
        await self.gw.nc.subscribe(self.gw.bus.subjects.responses_cancel, cb=self._cancelled)

    async def _cancelled(self, msg: Msg) -> None:
        try:
            note = ResponseCancelled.model_validate_json(msg.data)
        except ValidationError:
            return
        task = self.running.get(note.response_id)
        if task is not None:
            task.cancel()

    async def history(self, ctx: RequestContext, previous: str | None) -> list[ChatMessage]:
        if previous is None:
            return []
        found = await self.store.get(ctx.tenant, previous)
        if found is None:
            raise EnclaveError(
                404,
                f"Previous response with id '{previous}' not found.",
                "previous_response_not_found",
                "previous_response_id",
            )
        return found[1]

    async def open(
        self, grant: Grant, event: ChatRequested, body: bytes
    ) -> tuple[TurnStream, list[Any]]:
        """Admit the turn by the exact limits (its tokens reserved, a place among the
        tenant's requests in flight), as the chat route does, and open it; the turn settles
        the reservation when it is closed."""
        gw, ctx = self.gw, grant.ctx
        reservation = await grant.admit(event_reservation(event))

        async def settle(used: int) -> None:
            await gw.auth.settle(reservation, used, event.model)

        try:
            opened, first = await open_turn(
                gw,
                event,
                lambda: record_request(gw.audit, ctx, ACTION, event.model, body, PATH),
            )
        except BaseException:
            await settle(0)
            raise
        return MeteredTurn(opened, first, settle), first

    async def save(
        self,
        ctx: RequestContext,
        req: ResponsesRequest,
        body: dict[str, Any],
        conversation: list[ChatMessage],
        builder: Builder | None,
    ) -> None:
        if not req.store and not req.background:
            return
        said = builder.conversation() if builder is not None else []
        await self.store.put(ctx.tenant, body, [*conversation, *said], LIVE)

    async def create(self, request: Request) -> Response:
        grant = await self.gw.auth.grant_request(request, Action.INFER)
        ctx = grant.ctx
        data = await self.gw.read_json(request)
        req = validate(ResponsesRequest, data)
        if req.background and req.stream:
            raise EnclaveError(
                400,
                "`stream` together with `background` is not supported; poll the response.",
                "unsupported_parameter",
                "background",
            )
        rid, created = response_id(ctx), now()
        raw = await request.body()
        answer = approval_answer(req.input)
        if answer is not None:
            await grant.within_limit()  # a decision, not a turn: one request
            return await self.approve(ctx, req, answer, raw, rid, created)
        event, conversation = to_event(req, ctx, await self.history(ctx, req.previous_response_id))
        self.gw.windows.check(event.model, req.max_output_tokens, "max_output_tokens")
        if req.background:
            queued = response_json(rid, req, created, "queued")
            await self.store.put(ctx.tenant, queued, conversation)
            task = asyncio.create_task(self._background(grant, req, event, conversation, raw, rid))
            self.running[rid] = task
            task.add_done_callback(lambda _: self.running.pop(rid, None))
            return _json(queued, ctx=ctx)
        turn, first = await self.open(grant, event, raw)
        if req.stream:
            return StreamingResponse(
                self._stream(ctx, req, conversation, turn, first, rid, created),
                media_type="text/event-stream",
                headers={"x-request-id": ctx.request_id, "cache-control": "no-cache"},
            )
        builder = Builder()
        usage = await self._collect(turn, first, builder)
        body = response_json(
            rid,
            req,
            created,
            "incomplete" if builder.incomplete() else "completed",
            builder.output,
            usage,
            incomplete=builder.incomplete(),
        )
        await self.save(ctx, req, body, conversation, builder)
        return _json(body, ctx=ctx)

    async def approve(
        self,
        ctx: RequestContext,
        req: ResponsesRequest,
        answer: ApprovalAnswer,
        raw: bytes,
        rid: str,
        created: float,
    ) -> Response:
        """Decide on the call an agent waits on; the response is the resumed run's answer
        (and the next call it waits on, if any)."""
        if not rbac.may([ctx.role], rbac.Permission.APPROVE_TOOLS):
            raise EnclaveError(
                403,
                f"The role `{ctx.role}` may not approve tool calls.",
                "insufficient_permissions",
            )
        if req.background:
            raise EnclaveError(
                400,
                "An approval response cannot run in the background.",
                "unsupported_parameter",
                "background",
            )
        history = await self.history(ctx, req.previous_response_id)
        await record_request(self.gw.audit, ctx, ACTION, req.model, raw, PATH)
        decision = Decision(approve=answer.approve, reason=answer.reason)
        await decide(self.gw, self.approvals, ctx, answer.approval_id, decision)
        done = await wait_done(
            self.approvals, ctx.tenant, answer.approval_id, self.gw.settings.gateway_timeout_s
        )
        builder = Builder()
        events = builder.add([Delta(content=done.output or "", finish_reason="stop")])
        following = (
            await self.approvals.get(ctx.tenant, done.next_approval) if done.next_approval else None
        )
        if following is not None:
            nxt = following[0]
            step = ToolStep(
                call_id=nxt.call_id,
                name=nxt.tool,
                arguments=nxt.arguments,
                outcome="awaiting_approval",
                approval_id=nxt.id,
            )
            events += builder.steps([step])
        events += builder.finish()
        if done.status == "failed":
            info = ErrorInfo(status=500, message=done.output or "The agent failed.")
            body = response_json(rid, req, created, "failed", builder.output, error=info)
        else:
            body = response_json(rid, req, created, "completed", builder.output, Usage())
        await self.save(ctx, req, body, history, builder)
        if not req.stream:
            return _json(body, ctx=ctx)
        start = response_json(rid, req, created, "in_progress")
        kind = "response.failed" if done.status == "failed" else "response.completed"
        head = [
            builder.event("response.created", response=start),
            builder.event("response.in_progress", response=start),
        ]
        # Sequence numbers in the order sent: the head first.
        ordered = [*head, *events, builder.event(kind, response=body)]
        for seq, ev in enumerate(ordered):
            ev["sequence_number"] = seq

        async def stream() -> AsyncIterator[bytes]:
            yield b"".join(_sse(e) for e in ordered)

        return StreamingResponse(
            stream(),
            media_type="text/event-stream",
            headers={"x-request-id": ctx.request_id, "cache-control": "no-cache"},
        )

    async def _collect(self, turn: TurnStream, first: list[Any], builder: Builder) -> Usage:
        """Read the turn to its end into `builder`; raises the turn's error."""
        usage = Usage()
        batch = first
        try:
            while True:
                done = False
                for ev in batch:
                    if ev.error is not None:
                        raise EnclaveError.of(ev.error)
                    builder.steps(ev.tool_steps)
                    builder.add(ev.deltas)
                    usage = ev.usage or usage
                    done = done or ev.done
                if done:
                    builder.finish()
                    return usage
                batch = await turn.next_batch()
        finally:
            await turn.close()

    async def _background(
        self,
        grant: Grant,
        req: ResponsesRequest,
        event: ChatRequested,
        conversation: list[ChatMessage],
        raw: bytes,
        rid: str,
    ) -> None:
        ctx = grant.ctx
        created = now()
        builder = Builder()
        try:
            running = response_json(rid, req, created, "in_progress")
            await self.store.put(ctx.tenant, running, conversation, LIVE)
            turn, first = await self.open(grant, event, raw)
            usage = await self._collect(turn, first, builder)
            incomplete = builder.incomplete()
            body = response_json(
                rid,
                req,
                created,
                "incomplete" if incomplete else "completed",
                builder.output,
                usage,
                incomplete=incomplete,
            )
        except asyncio.CancelledError:
            return  # cancelled: the store says so already
        except EnclaveError as exc:
            body = response_json(rid, req, created, "failed", builder.output, error=exc.info)
        except Exception:
            log.exception("background response %s failed", rid)
            info = ErrorInfo(status=500, message="Internal error.", code="server_error")
            body = response_json(rid, req, created, "failed", builder.output, error=info)
        await self.store.put(ctx.tenant, body, [*conversation, *builder.conversation()], LIVE)

    async def _stream(
        self,
        ctx: RequestContext,
        req: ResponsesRequest,
        conversation: list[ChatMessage],
        turn: TurnStream,
        first: list[Any],
        rid: str,
        created: float,
    ) -> AsyncIterator[bytes]:
        builder = Builder()
        usage = Usage()
        start = response_json(rid, req, created, "in_progress")
        head = [
            builder.event("response.created", response=start),
            builder.event("response.in_progress", response=start),
        ]
        yield b"".join(_sse(e) for e in head)
        batch = first
        try:
            while True:
                out: list[dict[str, Any]] = []
                done = False
                for ev in batch:
                    out += builder.steps(ev.tool_steps)
                    out += builder.add(ev.deltas)
                    usage = ev.usage or usage
                    if ev.error is not None:
                        out += builder.finish()
                        body = response_json(
                            rid, req, created, "failed", builder.output, usage, ev.error
                        )
                        out.append(builder.event("response.failed", response=body))
                        await self.save(ctx, req, body, conversation, builder)
                        done = True
                        break
                    if ev.done:
                        out += builder.finish()
                        incomplete = builder.incomplete()
                        status: Status = "incomplete" if incomplete else "completed"
                        body = response_json(
                            rid, req, created, status, builder.output, usage, incomplete=incomplete
                        )
                        kind = "response.incomplete" if incomplete else "response.completed"
                        out.append(builder.event(kind, response=body))
                        await self.save(ctx, req, body, conversation, builder)
                        done = True
                        break
                yield b"".join(_sse(e) for e in out)
                if done:
                    return
                try:
                    batch = await turn.next_batch()
                except EnclaveError as exc:
                    body = response_json(
                        rid, req, created, "failed", builder.output, usage, exc.info
                    )
                    await self.save(ctx, req, body, conversation, builder)
                    yield _sse(builder.event("response.failed", response=body))
                    return
        finally:
            await turn.close()

    async def retrieve(self, request: Request, rid: str) -> Response:
        ctx = await self.gw.auth.check_request(request, Action.INFER)
        found = await self.store.get(ctx.tenant, rid)
        if found is None:
            raise _not_found(rid)
        return _json(found[0], ctx=ctx)

    async def cancel(self, request: Request, rid: str) -> Response:
        ctx = await self.gw.auth.check_request(request, Action.INFER)
        found = await self.store.get(ctx.tenant, rid)
        if found is None:
            raise _not_found(rid)
        body = found[0]
        if not body.get("background"):
            raise EnclaveError(
                400,
                "Only responses created with background=true can be cancelled.",
                "invalid_request",
            )
        if body["status"] == "cancelled":
            return _json(body, ctx=ctx)
        if not await self.store.set_status(ctx.tenant, rid, "cancelled", LIVE):
            raise EnclaveError(
                400,
                f"The response is {body['status']} and cannot be cancelled.",
                "invalid_request",
            )
        await self.gw.nc.publish(
            self.gw.bus.subjects.responses_cancel,
            ResponseCancelled(tenant=ctx.tenant, response_id=rid, request_id=request_id_of(rid))
            .model_dump_json()
            .encode(),
        )
        task = self.running.get(rid)
        if task is not None:
            task.cancel()
        return _json({**body, "status": "cancelled"}, ctx=ctx)


def _not_found(rid: str) -> EnclaveError:
    return EnclaveError(404, f"No response with id '{rid}' found.", "not_found", "response_id")


def register(app: FastAPI, gw: Gateway) -> Responses:
    responses = Responses(gw)

    @app.post(PATH, response_model=None)
    async def create_response(request: Request) -> Response:
        return await responses.create(request)

    @app.get(PATH + "/{response_id}", response_model=None)
    async def retrieve_response(response_id: str, request: Request) -> Response:
        return await responses.retrieve(request, response_id)

    @app.post(PATH + "/{response_id}/cancel", response_model=None)
    async def cancel_response(response_id: str, request: Request) -> Response:
        return await responses.cancel(request, response_id)

    return responses
