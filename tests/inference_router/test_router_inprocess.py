"""The router and an instant worker in process, each built by its bootstrap, on a real
NATS: the route, a generation through the shared generation client, the router's own
`inference.generate`, the model list, and the errors (unknown model, a pool without
workers)."""

from __future__ import annotations

import secrets
from pathlib import Path

import pytest
import yaml
from nats.aio.client import Client as NatsClient

from libs.context import RequestContext
from libs.events import (
    ChatMessage,
    GenerateAccepted,
    GenerateRequest,
    GenerationParams,
    ModelsReply,
    ModelsRequest,
)
from libs.generation import GenerationClient, GenerationFailed, RouteCache
from libs.rpc import Bus, ReplyRouter
from libs.service import running
from libs.settings import REPO_ROOT, Settings
from services.inference_router.bootstrap import build as build_router
from services.inference_router.workers.bootstrap import builder


async def test_router_and_worker_from_their_bootstraps(
    nc: NatsClient, inprocess_settings: Settings, tmp_path: Path
) -> None:
    registry = yaml.safe_load((REPO_ROOT / "deploy" / "models.yaml").read_text())
    registry["pools"]["unserved"] = {"engine": "instant"}
    registry["models"].append({"id": "enclave-unserved", "kind": "chat", "pool": "unserved"})
    (tmp_path / "models.yaml").write_text(yaml.safe_dump(registry))
    settings = inprocess_settings.model_copy(update={"models_file": tmp_path / "models.yaml"})
    bus = Bus(nc, settings)
    deltas = await ReplyRouter(nc, settings.subjects.inference_deltas("mem1", "")).start()
    client = GenerationClient(bus, deltas, RouteCache(2.0), 10.0)
    ctx = RequestContext(tenant="acme", request_id="r" + secrets.token_hex(3))
    said = [ChatMessage(role="user", content="hi")]
    async with (
        running(settings, "inference_router", build_router),
        running(settings, "worker-instant", builder(settings, "instant")),
    ):
        route = await client.route(ctx, "enclave-instant", "chat")
        assert route.pool == "instant" and route.error is None
        text = await client.complete(ctx, "enclave-instant", said, GenerationParams())
        assert text  # the instant engine's answer

        # The router's own inference.generate hands the request to the pool.
        inbox = deltas.open("direct")
        accepted = await bus.ask(
            bus.peers.router,
            settings.subjects.inference_generate,
            GenerateRequest(ctx=ctx, model="enclave-instant", deltas_subject=inbox.subject),
            GenerateAccepted,
        )
        assert accepted.accepted and accepted.worker
        assert await inbox.next(5.0) is not None
        inbox.close()

        listed = await bus.ask(
            bus.peers.router,
            settings.subjects.inference_models,
            ModelsRequest(tenant="acme"),
            ModelsReply,
        )
        assert "enclave-instant" in {m.id for m in listed.models}

        with pytest.raises(GenerationFailed) as unknown:
            await client.complete(ctx, "no-such-model", said, GenerationParams())
        assert unknown.value.info.status == 404
        with pytest.raises(GenerationFailed) as unserved:
            await client.complete(ctx, "enclave-unserved", said, GenerationParams())
        assert unserved.value.info.status == 503
        assert unserved.value.info.code == "no_worker_available"
