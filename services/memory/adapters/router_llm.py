"""The platform's own inference router as the LLM for memory extraction and query
rewriting (over NATS)."""

from __future__ import annotations

import asyncio
import secrets

from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg

from libs.bus import event_bytes
from libs.context import RequestContext
from libs.events import ChatMessage, GenerateAccepted, GenerateRequest, GenerationParams, TurnEvent
from libs.subjects import Subjects


class RouterLLM:
    def __init__(self, nc: NatsClient, subjects: Subjects, model: str, timeout_s: float) -> None:
        self.nc = nc
        self.subjects = subjects
        self.model = model
        self.timeout_s = timeout_s

    async def complete(
        self,
        ctx: RequestContext,
        messages: list[dict[str, str]],
        response_format: dict[str, object] | None = None,
        max_tokens: int = 200,
        stop: list[str] | None = None,
    ) -> str:
        deltas = self.subjects.inference_deltas(ctx.request_id, "mem" + secrets.token_hex(3))
        queue: asyncio.Queue[bytes] = asyncio.Queue()

        async def on_msg(msg: Msg) -> None:
            queue.put_nowait(msg.data)

        sub = await self.nc.subscribe(deltas, cb=on_msg)
        try:
            request = GenerateRequest(
                ctx=ctx,
                model=self.model,
                messages=[ChatMessage(role=m["role"], content=m["content"]) for m in messages],
                params=GenerationParams(
                    temperature=0.0,
                    max_tokens=max_tokens,
                    stop=stop or [],
                    response_format=response_format,
                ),
                deltas_subject=deltas,
            )
            reply = await self.nc.request(
                self.subjects.inference_generate,
                event_bytes(request),
                timeout=10,
                headers=ctx.headers(),
            )
            accepted = GenerateAccepted.model_validate_json(reply.data)
            if not accepted.accepted:
                return ""
            text = ""
            while True:
                data = await asyncio.wait_for(queue.get(), self.timeout_s)
                ev = TurnEvent.model_validate_json(data)
                text += "".join(d.content for d in ev.deltas if d.index == 0)
                if ev.done or ev.error is not None:
                    return text
        finally:
            await sub.unsubscribe()
