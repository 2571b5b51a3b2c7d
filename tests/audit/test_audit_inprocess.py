"""The audit service in process, built by its bootstrap, on a real NATS: an event
published by a service joins its tenant's chain, and the gateway's API (search, verify)
answers through the bus client."""

from __future__ import annotations

import asyncio

import nats

from libs.audit import AuditPublisher, outbox_dir
from libs.context import RequestContext
from libs.events import AuditReply, AuditSearch, AuditVerifyRequest
from libs.rpc import Bus
from libs.service import running
from libs.settings import Settings
from services.audit.bootstrap import build


async def test_audit_from_its_bootstrap(bus_settings: Settings) -> None:
    settings = bus_settings
    nc = await nats.connect(settings.nats_url)
    bus = Bus(nc, settings)
    # Started, as every service starts it: an event whose ack came late (a loaded CI
    # machine) waits in the outbox and is sent from there, as it would be in production.
    publisher = AuditPublisher(nc, settings.subjects, "gateway", outbox_dir(settings.home))
    publisher.start()
    try:
        async with running(settings, "audit", build):
            ctx = RequestContext(tenant="acme", request_id="r1", actor="k1")
            await publisher.emit("chat.completions", ctx, model="m")
            found = AuditReply()
            for _ in range(300):
                found = await bus.ask(
                    bus.peers.audit,
                    settings.subjects.audit_api_search,
                    AuditSearch(tenant="acme", action="chat.completions"),
                    AuditReply,
                )
                if found.count:
                    break
                await asyncio.sleep(0.1)
            assert found.count == 1
            assert found.entries[0]["event"]["action"] == "chat.completions"
            verified = await bus.ask(
                bus.peers.audit,
                settings.subjects.audit_api_verify,
                AuditVerifyRequest(tenant="acme"),
                AuditReply,
            )
            # The searches themselves are in the chain too (audit.read, who asked).
            assert verified.ok and verified.count >= 2
    finally:
        await publisher.close()
        await nc.close()
