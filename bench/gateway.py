"""The platform's added latency and throughput (issue 2's benchmark).

1. llama.cpp directly (in process) vs the same prompts through gateway, NATS, runtime,
   router and worker: time to first token and total, P50/P99.
2. The instant stand-in engine through the whole platform: what the platform itself
   costs, at one client (added time to first token) and at ten (streamed requests/s).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import yaml

from bench.loadgen import Result, run_clients
from libs.context import RequestContext
from libs.events import ChatMessage, GenerateRequest, GenerationParams
from services.guardrails.adapters.policy_files import PACKAGED_OPEN
from tests.infra import REPO, Platform, free_port, infra, platform_env

PROMPTS = [
    "What is the capital of France?",
    "Name a primary colour.",
    "Say hello to Alice.",
    "What is two plus two?",
    "Give me a synonym for happy.",
]
REQUESTS = int(os.environ.get("BENCH_REQUESTS", "100"))
MAX_TOKENS = 16


def direct_llama() -> Result:
    from libs.settings import Settings
    from services.inference_router.adapters.llamacpp import LlamaCppEngine, resolve_model_file
    from services.inference_router.registry import load_registry

    settings = Settings()
    pool = load_registry(settings.models_file).pools["smollm2"]
    engine = LlamaCppEngine(resolve_model_file(pool["model"], settings.home), n_ctx=2048)
    engine.warm_up()
    result = Result()
    start_all = time.perf_counter()
    for i in range(REQUESTS):
        request = GenerateRequest(
            ctx=RequestContext(tenant="bench", request_id=f"b{i}"),
            model="smollm2-135m-instruct",
            messages=[ChatMessage(role="user", content=PROMPTS[i % len(PROMPTS)])],
            params=GenerationParams(max_tokens=MAX_TOKENS, temperature=0.0),
            deltas_subject="-",
        )
        start = time.perf_counter()
        first = [0.0]

        def emit(delta: object, first: list[float] = first, start: float = start) -> None:
            if not first[0]:
                first[0] = time.perf_counter() - start

        engine.generate(request, emit)
        from bench.loadgen import Sample

        result.samples.append(Sample(ttft=first[0], total=time.perf_counter() - start))
    result.elapsed = time.perf_counter() - start_all
    return result


def chat_body(model: str, i: int = 0) -> dict[str, object]:
    return {
        "model": model,
        "messages": [{"role": "user", "content": PROMPTS[i % len(PROMPTS)]}],
        "stream": True,
        "max_tokens": MAX_TOKENS,
        "temperature": 0.0,
    }


def row(name: str, r: Result) -> str:
    return (
        f"| {name:<44} | {len(r.samples):>5} | {r.errors:>3} | {r.pct('ttft', 0.5):>8.2f} | "
        f"{r.pct('ttft', 0.99):>8.2f} | {r.pct('total', 0.5):>8.2f} | {r.pct('total', 0.99):>8.2f} "
        f"| {r.rps:>8.1f} |"
    )


# A global policy that screens nothing: the platform's own cost, without the guardrails'
# models. The default policy (services/guardrails/policies/global.yaml) screens everything.
OPEN_POLICY = yaml.safe_load(PACKAGED_OPEN.read_text())


def set_global_policy(plat: Platform, policy: dict[str, object] | None) -> None:
    path = plat.home / "guardrails" / "global.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    if policy is None:
        path.unlink(missing_ok=True)
    else:
        path.write_text(yaml.safe_dump(policy))
    time.sleep(1.5)  # the guardrails reload a policy file when its mtime changes


# The services a streamed chat with the instant engine goes through.
INSTANT_SERVICES: tuple[tuple[str, str, str | None], ...] = (
    ("router", "inference_router", None),
    ("worker-instant", "worker", "instant"),
    ("guardrails", "guardrails", None),
    ("runtime", "agent_runtime", None),
    ("gateway", "gateway", None),
)


@contextlib.contextmanager
def running_platform(
    extra: tuple[tuple[str, str, str | None], ...] = (),
    models: tuple[str, ...] = (),
    registry: dict[str, Any] | None = None,
    prepare: Callable[[Path], None] | None = None,
) -> Iterator[tuple[Platform, int]]:
    """The platform's processes (the instant path plus `extra`) on the real bus, with an
    admin key, the open policy, and `enclave-instant` plus `models` served; its port.
    `registry`: pools and models added to deploy/models.yaml (`{"pools": {...},
    "models": [...]}`); `prepare(home)` runs before any process starts."""
    with infra() as found, tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp)
        port = free_port()
        # The load sends one prompt again and again, which in a deployment would be new
        # messages each time: the guardrails screen every one in full (no MessageMemo).
        env = platform_env(
            found, home, port, ENCLAVE_RUNTIME_CONCURRENCY="256", ENCLAVE_GUARD_MEMO_SIZE="0"
        )
        if registry:
            doc = yaml.safe_load((REPO / "deploy" / "models.yaml").read_text())
            doc["pools"].update(registry.get("pools") or {})
            doc["models"].extend(registry.get("models") or [])
            (home / "models.yaml").write_text(yaml.safe_dump(doc))
            env["ENCLAVE_MODELS_FILE"] = str(home / "models.yaml")
        plat = Platform(env=env, home=home, base_url=f"http://127.0.0.1:{port}")
        plat.cli("migrate")
        plat.admin_key = plat.create_key("bench", "admin", rpm=100_000_000)
        set_global_policy(plat, OPEN_POLICY)
        if prepare is not None:
            prepare(home)
        try:
            for name, service, pool in INSTANT_SERVICES[:2] + extra + INSTANT_SERVICES[2:]:
                plat.start(name, service, pool)
            plat.wait_ready()
            for model in ("enclave-instant", *models):
                plat.wait_model(model)
            yield plat, port
        finally:
            plat.stop_all()


def main() -> None:
    smollm2 = (("worker-smollm2", "worker", "smollm2"),)
    with running_platform(smollm2, ("smollm2-135m-instruct",)) as (plat, port):
        key = plat.admin_key

        async def through(model: str, clients: int, **kw: object) -> Result:
            # The prompts in turn, as llama.cpp direct gets them.
            bodies = [chat_body(model, i) for i in range(len(PROMPTS))]
            return await run_clients("127.0.0.1", port, key, bodies, clients, **kw)  # type: ignore[arg-type]

        # Warm-up: connections, caches and consumers settle.
        asyncio.run(through("enclave-instant", 2, requests=200))
        instant_1 = asyncio.run(through("enclave-instant", 1, requests=max(REQUESTS, 2000)))
        instant_10 = asyncio.run(through("enclave-instant", 10, seconds=8.0))
        set_global_policy(plat, None)
        asyncio.run(through("enclave-instant", 1, requests=20))
        guarded_1 = asyncio.run(through("enclave-instant", 1, requests=REQUESTS))
        guarded_10 = asyncio.run(through("enclave-instant", 10, seconds=8.0))
        plat.stop("worker-instant")
        gw_llama = asyncio.run(through("smollm2-135m-instruct", 1, requests=REQUESTS))
    rows = []
    direct = direct_llama()
    rows.append(row("llama.cpp direct, in process (1 client)", direct))
    rows.append(row("llama.cpp, platform, default guardrails (1)", gw_llama))
    rows.append(row("instant, platform, screening off (1 client)", instant_1))
    rows.append(row("instant, platform, screening off (10 clients)", instant_10))
    rows.append(row("instant, platform, default guardrails (1)", guarded_1))
    rows.append(row("instant, platform, default guardrails (10)", guarded_10))
    print()
    print("## Platform latency and throughput (ms; req/s)")
    print(
        "| path                                         |     n | err | TTFT p50 | TTFT p99 |"
        "  tot p50 |  tot p99 |    req/s |"
    )
    print("|" + "---|" * 8)
    print("\n".join(rows))
    added_llama = gw_llama.pct("ttft", 0.5) - direct.pct("ttft", 0.5)
    print()
    print(f"added TTFT P50, llama.cpp, default guardrails: {added_llama:.2f} ms")
    print(
        f"added TTFT P50, instant engine, 1 client, screening off: "
        f"{instant_1.pct('ttft', 0.5):.2f} ms (target <= 2 ms)"
    )
    print(f"streamed requests/s, 10 clients, screening off: {instant_10.rps:.0f} (target >= 570)")


if __name__ == "__main__":
    main()
