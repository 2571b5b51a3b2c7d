"""The exact limits on the request path: two gateway replicas built by their bootstrap, each
with its own Redis connection, in front of a stand-in runtime on the real NATS; SQL keys.

- 200 concurrent chats over both replicas against a limit of 150 requests per minute:
  exactly 150 admitted (the clock frozen, as the limiter's own tests do, so no refill
  happens while the flood runs), the rest 429 in OpenAI's shape with Retry-After; a
  refused turn that was started ahead of its admission is cancelled on its runtime.
- 200 concurrent chats against a tenant concurrency limit of 20, the runtime holding every
  turn: exactly 20 are admitted and held (any other that reached the runtime was started
  ahead of its admission and is cancelled), then all 20 answer and the places come free.
- Tokens reserved from max_tokens and settled from the usage the turn reports (plain and
  streamed), the monthly budget, the day's usage per key and model.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Any

import httpx
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg

from libs.context import RUNTIME_HEADER
from libs.events import ChatRequested, Delta, EmbedReply, TurnCancelled, TurnEvent, Usage
from libs.settings import Settings
from services.gateway.adapters.sql_keys import create_key
from services.gateway.app import create_fastapi
from services.gateway.bootstrap import Gateway, build
from services.gateway.hot_path import HotPath

USAGE = Usage(prompt_tokens=4, completion_tokens=6)  # what the stand-in reports: 10


class Clock:
    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


def freeze(gws: list[Gateway]) -> Clock:
    """The limiters of every replica on one clock that stands still (no refill)."""
    clock = Clock()
    for gw in gws:
        gw.auth.quotas.clock = clock
    return clock


Hold = Callable[[ChatRequested], Awaitable[None]]


async def _no_hold(event: ChatRequested) -> None:
    return None


@asynccontextmanager
async def replicas(
    nc: NatsClient, settings: Settings, hold: Hold = _no_hold
) -> AsyncIterator[tuple[list[Gateway], list[HotPath], list[ChatRequested]]]:
    """Two gateways on one bus, one Redis and one database, and a stand-in runtime that
    answers each turn with its last message reversed and a usage of 10 tokens."""
    gws = [build(settings), build(settings)]
    apps = [HotPath(gw, create_fastapi(gw)) for gw in gws]
    for gw in gws:
        await gw.start()
    seen: list[ChatRequested] = []
    tasks: set[asyncio.Task[None]] = set()

    async def answer(event: ChatRequested) -> None:
        await hold(event)
        said = event.messages[-1].content or ""
        for ev in (
            TurnEvent(deltas=[Delta(content=said[::-1])]),
            TurnEvent(deltas=[Delta(content="", finish_reason="stop")], usage=USAGE, done=True),
        ):
            await nc.publish(
                event.reply_subject, ev.model_dump_json().encode(), headers={RUNTIME_HEADER: "rt"}
            )

    async def runtime(msg: Msg) -> None:
        event = ChatRequested.model_validate_json(msg.data)
        seen.append(event)
        await msg.ack()
        task = asyncio.ensure_future(answer(event))
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    sub = await nc.jetstream().subscribe(
        settings.subjects.chat_requested, durable="agent_runtime", cb=runtime, manual_ack=True
    )
    try:
        yield gws, apps, seen
    finally:
        await sub.unsubscribe()
        for gw in gws:
            await gw.stop()


@asynccontextmanager
async def cancelled_turns(nc: NatsClient, settings: Settings) -> AsyncIterator[list[TurnCancelled]]:
    """Every chat.cancel the gateways send while it is open."""
    cancels: list[TurnCancelled] = []

    async def cancelled(msg: Msg) -> None:
        cancels.append(TurnCancelled.model_validate_json(msg.data))

    sub = await nc.subscribe(settings.subjects.chat_cancel, cb=cancelled)
    try:
        yield cancels
    finally:
        await sub.unsubscribe()


def _clients(apps: list[HotPath]) -> list[httpx.AsyncClient]:
    return [
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gw")
        for app in apps
    ]


def _chat(**extra: Any) -> dict[str, Any]:
    return {"model": "m", "messages": [{"role": "user", "content": "hello"}], **extra}


async def _flood(
    clients: list[httpx.AsyncClient], headers: dict[str, str], n: int
) -> list[httpx.Response]:
    async def one(i: int) -> httpx.Response:
        return await clients[i % 2].post(
            "/v1/chat/completions", headers=headers, json=_chat(max_tokens=5)
        )

    return list(await asyncio.gather(*(one(i) for i in range(n))))


async def test_two_replicas_200_concurrent_never_pass_the_limit(
    nc: NatsClient, inprocess_settings: Settings
) -> None:
    settings = inprocess_settings.model_copy(update={"tenant_rpm": 150})
    tenant = "acme-" + secrets.token_hex(3)
    async with (
        cancelled_turns(nc, settings) as cancels,
        replicas(nc, settings) as (gws, apps, seen),
    ):
        freeze(gws)  # no refill while the flood runs
        _, key_a = await create_key(gws[0].db, tenant, "developer")
        _, key_b = await create_key(gws[0].db, tenant, "developer")
        clients = _clients(apps)
        try:
            # Two keys of one tenant, each far under its own 6000 rpm: the tenant's 150 binds.
            results = await _flood(clients[:1] * 2, {"Authorization": f"Bearer {key_a}"}, 100)
            results += await _flood(clients[1:] * 2, {"Authorization": f"Bearer {key_b}"}, 100)
            for _ in range(100):
                if len(cancels) >= len(seen) - 150:
                    break
                await asyncio.sleep(0.02)
        finally:
            for c in clients:
                await c.aclose()
    admitted = [r for r in results if r.status_code == 200]
    refused = [r for r in results if r.status_code == 429]
    assert len(admitted) + len(refused) == 200, {r.status_code for r in results}
    assert len(admitted) == 150  # never more, and not one short
    # A refused turn reaches a runtime only when it was started ahead of its admission
    # while room seemed left (quotas.Headroom): then it is cancelled there. Near the limit
    # that stops: at most half of the 50 refused get that far (0 to 2 in practice).
    assert len(seen) - 150 == len(cancels) <= 25
    assert {c.reason for c in cancels} <= {"not_admitted"}
    assert all(r.json()["choices"][0]["message"]["content"] == "olleh" for r in admitted)
    for r in refused:
        error = r.json()["error"]
        assert (error["code"], error["type"]) == ("rate_limit_exceeded", "rate_limit_error")
        assert "per tenant" in error["message"]
        assert r.headers["retry-after"] == "1"  # one request refills in 0.4 s


async def test_two_replicas_200_concurrent_and_the_tenant_concurrency_limit(
    nc: NatsClient, inprocess_settings: Settings
) -> None:
    settings = inprocess_settings.model_copy(update={"tenant_concurrency": 20})
    tenant = "acme-" + secrets.token_hex(3)
    release = asyncio.Event()

    async def hold(event: ChatRequested) -> None:
        await release.wait()

    async with (
        cancelled_turns(nc, settings) as cancels,
        replicas(nc, settings, hold) as (gws, apps, seen),
    ):
        _, key = await create_key(gws[0].db, tenant, "developer")
        clients = _clients(apps)
        try:
            headers = {"Authorization": f"Bearer {key}"}
            sent = [
                asyncio.ensure_future(
                    clients[i % 2].post(
                        "/v1/chat/completions", headers=headers, json=_chat(max_tokens=5)
                    )
                )
                for i in range(200)
            ]
            # Every request but the held ones answered (on a loaded machine the last of
            # the 200 reach admission seconds later): only then are the 20 released.
            for _ in range(1200):
                if sum(t.done() for t in sent) >= 180:
                    break
                await asyncio.sleep(0.05)
            await asyncio.sleep(0.3)  # late arrivals would show here
            # Besides the 20, only turns started ahead of their admission and refused
            # (quotas.Headroom) reached the runtime, each cancelled there: at most half of
            # the room (19) per replica, 1 to 5 in practice.
            assert {c.reason for c in cancels} <= {"not_admitted"}
            assert len(seen) - len(cancels) == 20 and len(cancels) <= 18
            assert await gws[0].auth.quotas.in_flight(tenant) == 20
            release.set()
            results = list(await asyncio.gather(*sent))
            assert await gws[1].auth.quotas.in_flight(tenant) == 0  # every place freed
            after = await clients[1].post(
                "/v1/chat/completions", headers={"Authorization": f"Bearer {key}"}, json=_chat()
            )
            assert after.status_code == 200
        finally:
            for c in clients:
                await c.aclose()
    assert sorted(r.status_code for r in results).count(200) == 20
    refused = [r for r in results if r.status_code != 200]
    assert len(refused) == 180
    assert all(r.status_code == 429 for r in refused)
    assert {r.json()["error"]["code"] for r in refused} == {"concurrency_limit_exceeded"}
    assert all(r.headers["retry-after"] == "1" for r in refused)


async def test_tokens_reserved_settled_budgeted_and_counted(
    nc: NatsClient, inprocess_settings: Settings
) -> None:
    settings = inprocess_settings.model_copy(
        update={"key_tpm": 1000, "tenant_monthly_tokens": 1000}
    )
    tenant = "acme-" + secrets.token_hex(3)
    async with replicas(nc, settings) as (gws, apps, _):
        clock = freeze(gws)
        stored, key = await create_key(gws[0].db, tenant, "developer")
        auth = {"Authorization": f"Bearer {key}"}
        clients = _clients(apps)
        try:
            # Each reserves 2 + 300 of the key's 1000 a minute; without the settlement
            # (10 used) the fourth would wait.
            for i in range(6):
                r = await clients[i % 2].post(
                    "/v1/chat/completions", headers=auth, json=_chat(max_tokens=300)
                )
                assert r.status_code == 200, r.text
            streamed = await clients[0].post(
                "/v1/chat/completions", headers=auth, json=_chat(max_tokens=300, stream=True)
            )
            assert streamed.text.rstrip().endswith("data: [DONE]")
            # A request bigger than the whole bucket: 400 on max_tokens, not a wait.
            big = await clients[1].post(
                "/v1/chat/completions", headers=auth, json=_chat(max_tokens=2000)
            )
            assert big.status_code == 400 and big.json()["error"]["param"] == "max_tokens"
            # 70 of the month's 1000 used: a reservation of 2 + 950 no longer fits.
            assert await gws[0].auth.quotas.used_this_month(tenant) == 70
            over = await clients[0].post(
                "/v1/chat/completions", headers=auth, json=_chat(max_tokens=950)
            )
            assert over.status_code == 429
            assert over.json()["error"]["code"] == "insufficient_quota"
            assert int(over.headers["retry-after"]) >= 1
            fits = await clients[1].post(
                "/v1/chat/completions", headers=auth, json=_chat(max_tokens=900)
            )
            assert fits.status_code == 200
            # Other routes take from the request buckets only: the budget does not bind.
            keys = await clients[0].get("/v1/models", headers=auth)
            assert keys.status_code == 503  # authorized; nobody serves models here

            # Embeddings are metered too: the tokens the model counted (a stand-in router).
            async def embed(msg: Msg) -> None:
                reply = EmbedReply(vectors=[[0.5, 0.5]], prompt_tokens=5)
                await msg.respond(reply.model_dump_json().encode())

            sub = await nc.subscribe(settings.subjects.inference_embed, cb=embed)
            emb = await clients[0].post(
                "/v1/embeddings", headers=auth, json={"model": "e", "input": "hello"}
            )
            await sub.unsubscribe()
            assert emb.status_code == 200, emb.text
            day = datetime.fromtimestamp(clock.now, UTC).strftime("%Y%m%d")
            rows = await gws[1].auth.quotas.usage(tenant, [day])
            assert [(r.key_id, r.model, r.tokens, r.requests) for r in rows] == [
                (stored.key_id, "e", 5, 1),
                (stored.key_id, "m", 80, 8),
            ]
        finally:
            for c in clients:
                await c.aclose()


async def test_responses_are_admitted_and_settled_like_chats(
    nc: NatsClient, inprocess_settings: Settings
) -> None:
    """POST /v1/responses starts a turn as the chat route does, so it is admitted by the
    same exact limits: its tokens reserved from max_output_tokens, settled from usage,
    counted in the month's budget and the day's usage."""
    settings = inprocess_settings.model_copy(update={"tenant_monthly_tokens": 100})
    tenant = "acme-" + secrets.token_hex(3)
    async with replicas(nc, settings) as (gws, apps, seen):
        stored, key = await create_key(gws[0].db, tenant, "developer")
        auth = {"Authorization": f"Bearer {key}"}
        clients = _clients(apps)
        try:
            body = {"model": "m", "input": "hello", "max_output_tokens": 20}
            r = await clients[0].post("/v1/responses", headers=auth, json=body)
            assert r.status_code == 200, r.text
            assert r.json()["output"][0]["content"][0]["text"] == "olleh"
            assert await gws[0].auth.quotas.used_this_month(tenant) == 10
            # 10 of the month's 100 used: a reservation of 2 + 95 no longer fits.
            over = await clients[1].post(
                "/v1/responses", headers=auth, json={**body, "max_output_tokens": 95}
            )
            assert over.status_code == 429, over.text
            assert over.json()["error"]["code"] == "insufficient_quota"
            assert len(seen) == 1  # the refused one never reached a runtime
            rows = await gws[1].auth.quotas.usage(tenant, [datetime.now(UTC).strftime("%Y%m%d")])
            assert [(r.key_id, r.model, r.tokens, r.requests) for r in rows] == [
                (stored.key_id, "m", 10, 1)
            ]
        finally:
            for c in clients:
                await c.aclose()


async def test_a_turn_started_ahead_of_its_admission_and_refused_is_cancelled(
    nc: NatsClient, inprocess_settings: Settings
) -> None:
    """With room left at its last admission, a replica starts a turn while the limits are
    asked (quotas.Headroom). When another replica took that room meanwhile, the turn is
    refused: 429 with nothing of it sent, cancelled on its runtime (`not_admitted`), and
    nothing of its reservation kept."""
    settings = inprocess_settings.model_copy(update={"tenant_rpm": 10, "tenant_concurrency": 50})
    tenant = "acme-" + secrets.token_hex(3)
    async with (
        cancelled_turns(nc, settings) as cancels,
        replicas(nc, settings) as (gws, apps, seen),
    ):
        freeze(gws)
        _, key = await create_key(gws[0].db, tenant, "developer")
        auth = {"Authorization": f"Bearer {key}"}
        clients = _clients(apps)
        try:
            first = await clients[0].post("/v1/chat/completions", headers=auth, json=_chat())
            assert first.status_code == 200  # no room known yet: admitted first, then run
            assert not gws[0].auth.headroom.start_ahead(tenant, "nobody", 1)
            # Room for 9 more is known now: this one starts ahead and is admitted.
            ahead = await clients[0].post(
                "/v1/chat/completions", headers=auth, json=_chat(stream=True)
            )
            assert ahead.status_code == 200 and "olleh" in ahead.text
            for _ in range(8):  # the other replica takes the rest of the minute
                r = await clients[1].post("/v1/chat/completions", headers=auth, json=_chat())
                assert r.status_code == 200
            refused = await clients[0].post(
                "/v1/chat/completions", headers=auth, json=_chat(stream=True)
            )
            assert refused.status_code == 429, refused.text
            assert refused.json()["error"]["code"] == "rate_limit_exceeded"
            assert refused.headers["retry-after"]
            # It reached a runtime (started ahead), and was cancelled there.
            assert len(seen) == 11
            for _ in range(100):
                if cancels:
                    break
                await asyncio.sleep(0.02)
            assert [(c.reason, c.ctx.request_id) for c in cancels] == [
                ("not_admitted", seen[-1].ctx.request_id)
            ]
            # The refusal is known: the next turn of the tenant waits for its admission.
            assert not gws[0].auth.headroom.start_ahead(tenant, "any key", 1)
            assert await gws[0].auth.quotas.in_flight(tenant) == 0  # nothing held
        finally:
            for c in clients:
                await c.aclose()
