"""The memory service in process, built by its bootstrap, on a real NATS: typed memory-API
requests answered with OpenAI's objects, refusals as the bus's error replies (one policy),
and the grounding check; the whole platform's use of it runs in test_memory_e2e."""

from __future__ import annotations

from typing import Any

import pytest
from nats.aio.client import Client as NatsClient

from libs.context import RequestContext
from libs.errors import EnclaveError
from libs.events import (
    FilesList,
    GroundReply,
    GroundRequest,
    MemoryOperation,
    RagReply,
    RagRequest,
    RetrieveReply,
    RetrieveRequest,
    TenantDataDelete,
    VectorStoreBodyOp,
    VectorStoreOp,
    VectorStoresList,
)
from libs.rpc import Bus
from libs.service import running
from libs.settings import Settings
from services.memory.bootstrap import build


async def test_memory_api_from_its_bootstrap(nc: NatsClient, inprocess_settings: Settings) -> None:
    settings = inprocess_settings
    bus = Bus(nc, settings)
    subject = settings.subjects.memory_rag
    ctx = RequestContext(tenant="acme", request_id="r1", actor="k1", role="user")

    async def ask(operation: MemoryOperation) -> dict[str, Any]:
        request = RagRequest(ctx=ctx, operation=operation)
        return (await bus.ask(bus.peers.memory_api, subject, request, RagReply)).body

    async with running(settings, "memory", build):
        assert (await ask(FilesList()))["data"] == []
        made = await ask(VectorStoreBodyOp(op="vector_stores.create", body={"name": "kb"}))
        assert made["object"] == "vector_store" and made["name"] == "kb"
        listed = await ask(VectorStoresList())
        assert [s["id"] for s in listed["data"]] == [made["id"]]

        with pytest.raises(EnclaveError) as missing:
            await ask(VectorStoreOp(op="vector_stores.get", vector_store_id="vs_nope"))
        assert missing.value.info.status == 404
        with pytest.raises(EnclaveError) as bad:
            await ask(VectorStoreBodyOp(op="vector_stores.create", body={"metadata": "x"}))
        assert bad.value.info.status == 400 and bad.value.info.param == "metadata"
        with pytest.raises(EnclaveError) as forbidden:
            await ask(TenantDataDelete())  # a user key may not
        assert forbidden.value.info.status == 403

        grounded = await bus.ask(
            bus.peers.memory,
            settings.subjects.memory_ground,
            GroundRequest(
                ctx=ctx,
                answers={0: "Paris is the capital of France."},
                chunks=["Paris is the capital and largest city of France."],
            ),
            GroundReply,
        )
        assert grounded.error is None and grounded.sentences
        # A turn with no text asks no memories (mem0 refuses an empty query: it was a 500).
        empty = await bus.ask(
            bus.peers.memory,
            settings.subjects.memory_retrieve,
            RetrieveRequest(ctx=ctx, user="u1", query="  ", memories=True),
            RetrieveReply,
        )
        assert empty.error is None and empty.memories == []
        assert grounded.sentences[0].supported
