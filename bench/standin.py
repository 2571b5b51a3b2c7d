"""The instant engine as an OpenAI-compatible HTTP server of its own (a peer's upstream).

Enclave's `instant` worker runs `InstantEngine` behind the bus; a proxy such as LiteLLM
needs an engine it can reach over HTTP. This serves the same engine, with the gateway's
own request validation and response shapes, on POST /v1/chat/completions (streamed as
SSE, one chunk per delta, or not) and GET /v1/models, as plain ASGI on uvicorn.

    python -m bench.standin --port 8011 [--tokens 16]
"""

from __future__ import annotations

import argparse
from collections.abc import Awaitable, Callable
from typing import Any

import orjson

from libs.context import RequestContext, new_request_id
from libs.errors import EnclaveError
from libs.events import Delta, GenerateRequest
from services.gateway.openai_shapes import (
    Accumulator,
    ChatCompletionRequest,
    ChatStreamShaper,
    chat_event,
    parse_json,
    validate,
)
from services.inference_router.adapters.instant import InstantEngine

MODEL = "enclave-instant"
Send = Callable[[dict[str, Any]], Awaitable[None]]
Receive = Callable[[], Awaitable[dict[str, Any]]]


def sse(obj: Any) -> bytes:
    return b"data: " + orjson.dumps(obj) + b"\n\n"


class StandIn:
    """The ASGI app: one InstantEngine, answering every model name it is asked for."""

    def __init__(self, tokens: int = 16) -> None:
        self.engine = InstantEngine(tokens=tokens)

    async def __call__(self, scope: dict[str, Any], receive: Receive, send: Send) -> None:
        path, method = scope.get("path", ""), scope.get("method", "")
        if path == "/v1/models" and method == "GET":
            listing = {"object": "list", "data": [{"id": MODEL, "object": "model"}]}
            await self._json(send, 200, listing)
        elif path == "/v1/chat/completions" and method == "POST":
            body = b""
            while True:
                message = await receive()
                body += message.get("body", b"")
                if not message.get("more_body"):
                    break
            try:
                await self._chat(send, body)
            except EnclaveError as exc:
                await self._json(send, exc.info.status, exc.info.body())
        else:
            error = EnclaveError(404, f"No route {method} {path}.", "not_found")
            await self._json(send, 404, error.info.body())

    async def _chat(self, send: Send, body: bytes) -> None:
        req = validate(ChatCompletionRequest, parse_json(body))
        event = chat_event(req, RequestContext(tenant="bench", request_id=new_request_id()))
        deltas: list[Delta] = []
        usage = self.engine.generate(
            GenerateRequest(
                ctx=event.ctx,
                model=event.model,
                messages=event.messages,
                params=event.params,
                deltas_subject="-",
            ),
            deltas.append,
        )
        if not req.stream:
            acc = Accumulator(event.params.n)
            acc.add(deltas)
            await self._json(send, 200, acc.response(event, usage))
            return
        shaper = ChatStreamShaper(event, req.include_usage)
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [
                    (b"content-type", b"text/event-stream"),
                    (b"cache-control", b"no-cache"),
                ],
            }
        )
        # One write per delta, as an engine emitting tokens does.
        for chunk in shaper.chunks(deltas):
            await send({"type": "http.response.body", "body": sse(chunk), "more_body": True})
        tail = sse(shaper.usage_chunk(usage)) if req.include_usage else b""
        await send({"type": "http.response.body", "body": tail + b"data: [DONE]\n\n"})

    @staticmethod
    async def _json(send: Send, status: int, obj: Any) -> None:
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [(b"content-type", b"application/json")],
            }
        )
        await send({"type": "http.response.body", "body": orjson.dumps(obj)})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--tokens", type=int, default=16)
    args = parser.parse_args()
    import uvicorn

    uvicorn.run(
        StandIn(args.tokens),
        host=args.host,
        port=args.port,
        loop="uvloop",
        http="httptools",
        log_level="warning",
        access_log=False,
        lifespan="off",
    )


if __name__ == "__main__":
    main()
