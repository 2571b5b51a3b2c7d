"""The gateway's outermost ASGI layer: what every request gets before any route runs.

- **A body limit on every route**, whatever the route and however the body comes. A
  declared Content-Length over the route's limit is answered 413 at once, before the body
  is read. A body without one (chunked) is counted as it arrives: the read that passes the
  limit raises `BodyTooLarge` (413, `request_too_large`) inside the route that reads it,
  multipart parsing included, so no route holds more than its limit. Before the 413 goes
  out, up to `DRAIN_BYTES` more of the body are read and dropped (at most `DRAIN_S`), so
  that a client that sends its whole body before it reads (most SDKs) gets the 413
  instead of a reset connection; past that the server closes the connection after the
  answer, and only a client that reads while it sends (curl) sees the 413. What a route
  never reads is never buffered (the server stops reading the socket).
- **Retry-After on every 429 and 503** that does not carry one already: a full platform
  (a worker's queue, a limit, a peer not answering) says when to come back, in seconds.

Errors leave in OpenAI's shape. The limits themselves come from the gateway
(`Gateway.body_limit`: the upload route's follows the bus's message size).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import orjson
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from libs.errors import EnclaveError

# (method, path) -> the most bytes a request's body may have.
BodyLimit = Callable[[str, str], int]
RETRY_AFTER_S = 1  # when the refusing stage named no wait of its own
RETRY_STATUSES = (429, 503)
# What is read and dropped of a refused body before the 413 is sent.
DRAIN_BYTES = 16 * 1024 * 1024
DRAIN_S = 10.0


class BodyTooLarge(EnclaveError):
    def __init__(self, limit: int) -> None:
        super().__init__(
            413, f"The request body is larger than {limit} bytes.", "request_too_large"
        )


class AdmissionLayer:
    def __init__(
        self, app: ASGIApp, body_limit: BodyLimit, retry_after_s: int = RETRY_AFTER_S
    ) -> None:
        self.app = app
        self.body_limit = body_limit
        self.retry_after = str(retry_after_s).encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.body_limit(scope["method"], scope["path"])
        started = False
        received = 0
        body_done = False  # the whole body was read (or the client left)

        async def sending(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                if received > limit and not body_done:
                    await _drain(receive)
                if message["status"] in RETRY_STATUSES and not any(
                    k.lower() == b"retry-after" for k, _ in message.get("headers", ())
                ):
                    headers = [*message.get("headers", ()), (b"retry-after", self.retry_after)]
                    message = {**message, "headers": headers}
            await send(message)

        declared = _content_length(scope)
        if declared is not None and declared > limit:
            if declared <= DRAIN_BYTES:
                await _drain(receive)
            await _refuse(send, BodyTooLarge(limit))
            return

        async def counted() -> Message:
            nonlocal received, body_done
            if received > limit:
                raise BodyTooLarge(limit)
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                body_done = not message.get("more_body", False)
                if received > limit:
                    raise BodyTooLarge(limit)
            else:
                body_done = True
            return message

        try:
            await self.app(scope, counted, sending)
        except BodyTooLarge as exc:  # a route that let it through unhandled
            if started:
                raise
            await _refuse(sending, exc)


async def _drain(receive: Receive) -> None:
    """Read and drop what is left of a refused body, up to DRAIN_BYTES and DRAIN_S."""
    dropped = 0
    try:
        async with asyncio.timeout(DRAIN_S):
            while dropped <= DRAIN_BYTES:
                message = await receive()
                if message["type"] != "http.request":
                    return
                dropped += len(message.get("body", b""))
                if not message.get("more_body", False):
                    return
    except TimeoutError:
        return


def _content_length(scope: Scope) -> int | None:
    for key, value in scope["headers"]:
        if key.lower() == b"content-length":
            return int(value) if value.isdigit() else None
    return None


async def _refuse(send: Send, exc: EnclaveError) -> None:
    """The error in OpenAI's shape; the connection closes (its body is left unread)."""
    body = orjson.dumps(exc.info.body())
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        (b"connection", b"close"),
    ]
    await send({"type": "http.response.start", "status": exc.info.status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
