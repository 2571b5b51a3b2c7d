"""Turns the runtime does not simply run are in the audit chain: one redelivered by
JetStream (another runtime took it and did not ack) is recorded `turn.redelivered` with its
delivery count before it runs again; one it drops (unreadable, or its client long gone) is
recorded `turn.dropped` with the reason. Real NATS JetStream; stand-ins for the peers."""

from __future__ import annotations

import asyncio
import time

from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.js.api import ConsumerConfig

from libs.audit import PLATFORM_TENANT, digest
from libs.bus import ensure_streams, stream_configs
from libs.context import RequestContext
from libs.events import ChatMessage, ChatRequested, TurnEvent
from libs.rpc import ReplyRouter
from libs.service import running
from libs.settings import Settings
from services.agent_runtime.bootstrap import build
from tests.agent_runtime.test_runtime_inprocess import StandIns
from tests.infra import audit_events


async def test_redelivered_and_dropped_turns_are_audited(
    nc: NatsClient, inprocess_settings: Settings
) -> None:
    settings = inprocess_settings
    subjects = settings.subjects
    audited = (await audit_events(nc, subjects.audit_all)).events
    stand_ins = StandIns(nc, settings)
    await stand_ins.start()
    client = await ReplyRouter(nc, subjects.chat_stream("gw1", "")).start()
    inbox = client.open("redelivered")
    event = ChatRequested(
        ctx=RequestContext(tenant="acme", request_id="redelivered"),
        model="m",
        messages=[ChatMessage(role="user", content="hi")],
        reply_subject=inbox.subject,
    )

    # A runtime replica takes the turn from the shared consumer, then dies without an ack.
    await ensure_streams(nc, settings)
    js = nc.jetstream()
    first: asyncio.Queue[Msg] = asyncio.Queue()

    async def dying(msg: Msg) -> None:
        await first.put(msg)

    dead = await js.subscribe(
        subjects.chat_requested,
        queue="agent_runtime",
        durable="agent_runtime",
        stream=stream_configs(settings)[0].name,
        cb=dying,
        manual_ack=True,
        config=ConsumerConfig(ack_wait=300, max_ack_pending=10_000),
    )
    await js.publish(subjects.chat_requested, event.model_dump_json().encode())
    taken = await asyncio.wait_for(first.get(), 10)
    assert taken.metadata.num_delivered == 1
    await dead.unsubscribe()

    async with running(settings, "agent_runtime", build):
        # Handed back (as ack_wait would, sooner): the live replica gets delivery 2.
        await taken.nak()
        text = ""
        while True:
            got = await inbox.next(10.0)
            assert got is not None, "the redelivered turn did not finish"
            ev = TurnEvent.model_validate_json(got.data)
            text += "".join(d.content for d in ev.deltas)
            if ev.done:
                break
        assert text == "Hello, world"
        inbox.close()

        # Unreadable, and too old to answer: both dropped, and recorded.
        await js.publish(subjects.chat_requested, b"not a turn")
        stale = event.model_copy(
            update={
                "ctx": RequestContext(tenant="acme", request_id="stale"),
                "created": int(time.time()) - 10 * int(settings.gateway_timeout_s) - 10,
            }
        )
        await js.publish(subjects.chat_requested, stale.model_dump_json().encode())
        for _ in range(100):
            if len([e for e in audited if e.action == "turn.dropped"]) >= 2:
                break
            await asyncio.sleep(0.05)

    dropped = {e.attrs["reason"]: e for e in audited if e.action == "turn.dropped"}
    assert dropped["unreadable"].tenant == PLATFORM_TENANT
    assert dropped["unreadable"].digests["message"] == digest(b"not a turn")
    assert dropped["client_gone"].tenant == "acme"
    assert dropped["client_gone"].request_id == "stale"
    assert dropped["client_gone"].model == "m"
    redelivered = [e for e in audited if e.action == "turn.redelivered"]
    assert [(e.tenant, e.request_id, e.attrs["delivery"]) for e in redelivered] == [
        ("acme", "redelivered", 2)
    ]
    assert first.empty()  # the dead replica got nothing more
