"""A worker's bounded queue, on a real NATS: a full worker leaves its pool's queue group
(what still reached it is refused at once, `worker_busy`), so the pool's other workers
take the requests; when every worker is full the caller gets a 503 at once, never a wait;
a worker with a free slot again takes requests again."""

from __future__ import annotations

import asyncio
import secrets
import time
from pathlib import Path

import yaml
from nats.aio.client import Client as NatsClient

from libs.context import RequestContext
from libs.events import ChatMessage, GenerateAccepted, GenerateRequest, RouteReply
from libs.generation import hand_to_pool
from libs.rpc import Bus
from libs.service import running
from libs.settings import Settings
from services.inference_router.workers.bootstrap import builder

# One slot and one place in the queue: two generations held, each about 0.6 s long.
HELD = {"engine": "instant", "tokens": 3, "delay_ms": 200, "queue": 1}


def offer(settings: Settings) -> GenerateRequest:
    ctx = RequestContext(tenant="acme", request_id="r" + secrets.token_hex(4))
    return GenerateRequest(
        ctx=ctx,
        model="held",
        messages=[ChatMessage(role="user", content="hi")],
        deltas_subject=settings.subjects.inference_deltas("nobody", ctx.request_id),
    )


async def test_full_workers_refuse_at_once_and_the_pool_shares(
    nc: NatsClient, inprocess_settings: Settings, tmp_path: Path
) -> None:
    (tmp_path / "models.yaml").write_text(
        yaml.safe_dump({"version": 1, "pools": {"held": HELD}, "models": []})
    )
    # A pool that does not answer would hold each request this long: a refusal comes first.
    settings = inprocess_settings.model_copy(
        update={"models_file": tmp_path / "models.yaml", "worker_accept_timeout_s": 60.0}
    )
    bus = Bus(nc, settings)
    route = RouteReply(pool="held", timeout_s=5.0)

    async def hand() -> GenerateAccepted:
        return await hand_to_pool(bus, offer(settings), route)

    async with (
        running(settings, "worker-a", builder(settings, "held")) as a,
        running(settings, "worker-b", builder(settings, "held")) as b,
    ):
        assert a.capacity == b.capacity == 2  # type: ignore[attr-defined]
        # Four generations fit the pool (two workers, two each); the fifth does not.
        taken = [await hand() for _ in range(4)]
        assert all(t.accepted for t in taken), taken
        assert len(a.running) == len(b.running) == 2  # type: ignore[attr-defined]
        refused = await asyncio.wait_for(hand(), 20)  # at once, not after the 60 s
        assert not refused.accepted and refused.error is not None
        assert refused.error.status == 503
        assert refused.error.code in ("worker_busy", "no_worker_available")

        # A finished generation frees a slot: the worker takes requests again.
        deadline = time.monotonic() + 20
        while True:
            again = await hand()
            if again.accepted or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.05)
        assert again.accepted, again
