"""The streamed routes, /v1/chat/completions and /v1/completions, served as plain ASGI.

On the chat route FastAPI's request and response classes cost about half the gateway's
CPU (shared/DEPENDENCIES.md), so these two routes bypass them; every other route is
FastAPI's. Each batch of events that arrived together leaves in one write.

Once the body is read, the connection is watched: a client that disconnects (while its
turn is queued, generating or streaming) stops the request at once, and closing its turn
cancels it on the runtime and the worker (turn_client.py). A stream that fails after its
first byte ends with an OpenAI error event and `data: [DONE]`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncGenerator, Awaitable, Callable
from typing import Any

import orjson
from fastapi import FastAPI
from opentelemetry import propagate
from opentelemetry.trace import SpanKind
from starlette.types import Message, Receive, Scope, Send

from libs.context import RequestContext
from libs.errors import EnclaveError, ErrorInfo
from libs.events import ChatRequested, TurnEvent, Usage
from libs.telemetry import attributes, with_span
from services.gateway.audit_routes import record_request
from services.gateway.auth import Grant
from services.gateway.bootstrap import Gateway
from services.gateway.metering import MeteredTurn
from services.gateway.openai_shapes import (
    Accumulator,
    ChatCompletionRequest,
    ChatStreamShaper,
    CompletionRequest,
    chat_event,
    completion_event,
    context_extras,
    output_param,
    parse_json,
    validate,
)
from services.gateway.policy import Action
from services.gateway.quotas import error_headers, event_reservation
from services.gateway.turn_client import TurnStream

ROUTES = {
    "/v1/chat/completions": "chat",
    "/v1/completions": "completion",
}
ROUTE_PATHS = {kind: path for path, kind in ROUTES.items()}
AUDIT_ACTIONS = {"chat": "chat.completions", "completion": "completions"}
JSON_HEADERS = [(b"content-type", b"application/json")]
log = logging.getLogger("enclave.gateway")
SSE_HEADERS = [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache")]


def _sse_line(obj: Any) -> bytes:
    return b"data: " + orjson.dumps(obj) + b"\n\n"


class ClientWatch:
    """Watches the connection once the request's body is read: a client that disconnects
    cancels the task serving it (uvicorn drops writes to a closed connection silently, so
    a stream would otherwise run to its end for nobody)."""

    def __init__(self, receive: Receive) -> None:
        self.receive = receive
        self.gone = False
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        owner = asyncio.current_task()

        async def watch() -> None:
            while True:
                message = await self.receive()
                if message["type"] == "http.disconnect":
                    if self._task is not None and owner is not None:  # still serving
                        self.gone = True
                        owner.cancel()
                    return

        self._task = asyncio.ensure_future(watch())

    def stop(self) -> None:
        """The response is complete (or failed): a disconnect now cancels nothing."""
        if self._task is not None:
            self._task.cancel()
            self._task = None


async def open_turn(
    gw: Gateway,
    event: ChatRequested,
    audit: Callable[[], Awaitable[Any]],
    admitted: Awaitable[Any] | None = None,
) -> tuple[TurnStream, list[TurnEvent]]:
    """Publish the turn and hold the status line until it produced output or failed, so
    that an error before the first token (unknown model, no worker, timeout) gets its own
    status. The request's audit record is written while the turn runs (before the publish
    it would delay it) and is durable before any status goes out. `admitted`: the limits'
    answer to a turn started ahead of it (quotas.Headroom), awaited before anything of
    the turn is read; a refusal cancels the turn and is raised."""
    try:
        turn = await gw.turns.start_turn(event)
    except BaseException:
        await audit()
        raise
    audited = asyncio.ensure_future(audit())
    try:
        if admitted is not None:
            try:  # shielded: a client gone meanwhile must not cancel an applied admission
                await asyncio.shield(admitted)
            except Exception:
                turn.why = "not_admitted"
                raise
        first = await turn.next_batch()
        while not any(ev.deltas or ev.error or ev.done for ev in first):
            first += await turn.next_batch()
    except BaseException:
        await turn.close()
        raise
    finally:
        await audited
    if not any(ev.deltas for ev in first):
        for ev in first:
            if ev.error is not None:
                await turn.close()
                raise EnclaveError.of(ev.error)
    return turn, first


async def collect(turn: TurnStream, first: list[TurnEvent], event: ChatRequested) -> bytes:
    try:
        acc = Accumulator(event.params.n)
        usage = Usage()
        batch = first
        while True:
            done = False
            for ev in batch:
                if ev.error is not None:
                    raise EnclaveError.of(ev.error)
                acc.extras.update(context_extras(ev))
                acc.add(ev.deltas)
                usage = ev.usage or usage
                done = done or ev.done
            if done:
                return orjson.dumps(acc.response(event, usage))
            batch = await turn.next_batch()
    finally:
        await turn.close()


async def stream(
    turn: TurnStream, first: list[TurnEvent], shaper: ChatStreamShaper
) -> AsyncGenerator[bytes, None]:
    batch = first
    try:
        while True:
            out: list[bytes] = []
            done = False
            for ev in batch:
                shaper.extras.update(context_extras(ev))
                out.extend(_sse_line(c) for c in shaper.chunks(ev.deltas))
                if ev.error is not None:
                    out.append(_sse_line(ev.error.body()))
                    done = True
                elif ev.done:
                    leftover = shaper.extras_chunk()
                    if leftover is not None:
                        out.append(_sse_line(leftover))
                    if shaper.include_usage:
                        out.append(_sse_line(shaper.usage_chunk(ev.usage or Usage())))
                    done = True
            if done:
                out.append(b"data: [DONE]\n\n")
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


class Streaming:
    """A streamed answer that closes its turn when closed, even if the client left before
    its first chunk: a generator that never started would never run its own `finally`, and
    the turn would stay open on its runtime and its reservation unsettled."""

    def __init__(self, turn: TurnStream, chunks: AsyncGenerator[bytes, None]) -> None:
        self.turn = turn
        self.chunks = chunks

    def __aiter__(self) -> Streaming:
        return self

    async def __anext__(self) -> bytes:
        return await self.chunks.__anext__()

    async def aclose(self) -> None:
        try:
            await self.chunks.aclose()
        finally:
            await self.turn.close()


class HotPath:
    """ASGI wrapper: the streamed routes here, everything else to the FastAPI app."""

    def __init__(self, gw: Gateway, app: FastAPI) -> None:
        self.gw = gw
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        kind = ROUTES.get(scope.get("path", ""))
        if kind is None or scope["method"] != "POST":
            await self._other(scope, receive, send)
            return
        with self.gw.metrics.request(AUDIT_ACTIONS[kind]) as outcome:
            outcome.code = await self._streamed(kind, scope, receive, send)

    async def _other(self, scope: Scope, receive: Receive, send: Send) -> None:
        """A FastAPI route, counted by its route's template (not its path: no ids in labels)."""
        status = 500
        started = time.perf_counter()

        async def sending(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, sending)
        finally:
            route = getattr(scope.get("route"), "path", None)
            operation = f"{scope['method']} {route}" if route else "unrouted"
            self.gw.metrics.observe_request(operation, status, time.perf_counter() - started)

    async def _streamed(self, kind: str, scope: Scope, receive: Receive, send: Send) -> int:
        """A streamed route; returns its status (200 once a stream started, 499 when the
        client went away first)."""
        watch = ClientWatch(receive)
        try:
            return await self._respond(kind, scope, watch, send)
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if not watch.gone or task is None:
                raise
            task.uncancel()  # the client left: the turn was closed and cancelled
            return 499
        finally:
            watch.stop()

    async def _respond(self, kind: str, scope: Scope, watch: ClientWatch, send: Send) -> int:
        headers = {k.lower(): v for k, v in scope["headers"]}
        try:
            status, extra, payload = await self._handle(kind, headers, watch)
        except EnclaveError as exc:
            status, payload = exc.info.status, orjson.dumps(exc.info.body())
            extra = [(k.encode(), v.encode()) for k, v in error_headers(exc).items()]
            if status >= 500 and status != 503:  # 503s are load shed; the rest say a stage failed
                log.warning("%s answered %d %s", ROUTE_PATHS[kind], status, exc.info.code)
        except Exception:
            log.exception("%s failed", ROUTE_PATHS[kind])
            info = ErrorInfo(status=500, message="Internal error.", code="internal_error")
            status, extra, payload = 500, [], orjson.dumps(info.body())
        if isinstance(payload, bytes):
            watch.stop()  # the answer is complete
            await send(
                {
                    "type": "http.response.start",
                    "status": status,
                    "headers": JSON_HEADERS + extra,
                }
            )
            await send({"type": "http.response.body", "body": payload})
            return status
        await send({"type": "http.response.start", "status": 200, "headers": SSE_HEADERS + extra})
        try:
            async for chunk in payload:
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": b""})
            watch.stop()
        finally:
            await payload.aclose()
        return 200

    async def _handle(
        self, kind: str, headers: dict[bytes, bytes], watch: ClientWatch
    ) -> tuple[int, list[tuple[bytes, bytes]], bytes | Streaming]:
        gw = self.gw
        auth = headers.get(b"authorization")
        tenant = headers.get(b"openai-tenant")
        grant = await gw.auth.authorize(
            auth.decode("latin-1") if auth else None,
            Action.INFER,
            tenant.decode("latin-1") if tenant else None,
        )
        ctx = grant.ctx
        incoming = headers.get(b"traceparent")
        parent = propagate.extract({"traceparent": incoming.decode()}) if incoming else None
        with gw.tracer.start_as_current_span(
            f"POST {ROUTE_PATHS[kind]}",
            context=parent,
            kind=SpanKind.SERVER,
            attributes=attributes(ctx),
        ) as span:
            return await self._turn(kind, gw, with_span(ctx, span), grant, headers, watch)

    async def _turn(
        self,
        kind: str,
        gw: Gateway,
        ctx: RequestContext,
        grant: Grant,
        headers: dict[bytes, bytes],
        watch: ClientWatch,
    ) -> tuple[int, list[tuple[bytes, bytes]], bytes | Streaming]:
        declared = headers.get(b"content-length")
        gw.check_declared_size(declared.decode() if declared else None)
        body = await _read_body(watch.receive, gw)
        watch.start()
        if kind == "chat":
            chat = validate(ChatCompletionRequest, parse_json(body))
            event, wants_stream, usage = chat_event(chat, ctx), chat.stream, chat.include_usage
            param = output_param(chat)
        else:
            completion = validate(CompletionRequest, parse_json(body))
            event = completion_event(completion, ctx)
            wants_stream, usage = completion.stream, completion.include_usage
            param = output_param(completion)
        gw.windows.check(event.model, event.params.max_tokens, param)
        # The exact limits (services/gateway/quotas.py): settled when the turn ends. With
        # room left under every limit the turn starts while they are asked (quotas.Headroom).
        reserve = event_reservation(event)
        ahead = grant.start_ahead(reserve)
        admitting = asyncio.ensure_future(grant.admit(reserve, ahead))

        async def settle(used: int) -> None:
            try:  # shielded: a refusal has nothing to settle, a cancel must not lose it
                reservation = await asyncio.shield(admitting)
            except Exception:
                return
            await gw.auth.settle(reservation, used, event.model)

        try:
            if not ahead:
                await asyncio.shield(admitting)
            opened, first = await open_turn(
                gw,
                event,
                lambda: record_request(
                    gw.audit, ctx, AUDIT_ACTIONS[kind], event.model, body, ROUTE_PATHS[kind]
                ),
                admitting if ahead else None,
            )
        except BaseException:
            await settle(0)
            raise
        turn = MeteredTurn(opened, first, settle)
        extra = [(b"x-request-id", ctx.request_id.encode())]
        extra += [(f"x-enclave-{k}".encode(), v.encode()) for k, v in turn.served_by.items()]
        if wants_stream:
            return 200, extra, Streaming(turn, stream(turn, first, ChatStreamShaper(event, usage)))
        return 200, extra, await collect(turn, first, event)


async def _read_body(receive: Receive, gw: Gateway) -> bytes:
    parts: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise EnclaveError(400, "The client closed the request.", "client_disconnected")
        chunk = message.get("body", b"")
        size += len(chunk)
        gw.check_size(size)
        parts.append(chunk)
        if not message.get("more_body"):
            return b"".join(parts)
