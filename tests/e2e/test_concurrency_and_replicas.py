"""Concurrent streams, and scaling: replicas share the load and survive losing one."""

from __future__ import annotations

import asyncio
import signal
from collections import Counter

import httpx
import openai

from tests.infra import Platform


async def test_ten_concurrent_streams_complete_with_distinct_ids(platform: Platform) -> None:
    client = openai.AsyncOpenAI(
        base_url=platform.base_url + "/v1",
        api_key=platform.admin_key,
        _strict_response_validation=True,
        max_retries=0,
    )

    async def one(i: int) -> tuple[str, set[str], str]:
        async with client.chat.completions.with_streaming_response.create(
            model="smollm2-135m-instruct",
            messages=[{"role": "user", "content": f"Write the number {i} in words."}],
            stream=True,
            max_tokens=8,
        ) as response:
            header_id = response.headers["x-request-id"]
            ids, text = set(), ""
            async for chunk in await response.parse():
                ids.add(chunk.id)
                text += chunk.choices[0].delta.content or "" if chunk.choices else ""
        return header_id, ids, text

    results = await asyncio.gather(*(one(i) for i in range(10)))
    header_ids = [r[0] for r in results]
    assert len(set(header_ids)) == 10
    for header_id, chunk_ids, text in results:
        assert chunk_ids == {"chatcmpl-" + header_id}
        assert text.strip()


def _served_by(platform: Platform, count: int) -> list[tuple[str, str]]:
    headers = {"Authorization": f"Bearer {platform.admin_key}"}
    body = {"model": "enclave-instant", "messages": [{"role": "user", "content": "hi"}]}
    out = []
    with httpx.Client(timeout=30) as http:
        for _ in range(count):
            r = http.post(platform.base_url + "/v1/chat/completions", headers=headers, json=body)
            assert r.status_code == 200, r.text
            out.append((r.headers["x-enclave-runtime"], r.headers["x-enclave-worker"]))
    return out


def test_replicas_share_the_load_and_losing_one_fails_nothing(platform: Platform) -> None:
    platform.start("runtime-2", "agent_runtime")
    platform.start("worker-instant-2", "worker", "instant")
    try:
        # Let both new replicas subscribe before counting.
        seen: Counter[tuple[str, str]] = Counter()
        for _ in range(60):
            seen.update(_served_by(platform, 10))
            runtimes = {r for r, _ in seen}
            workers = {w for _, w in seen}
            if len(runtimes) == 2 and len(workers) == 2:
                break
        assert len({r for r, _ in seen}) == 2, seen
        assert len({w for _, w in seen}) == 2, seen
        # A balanced share, not one replica taking nearly everything.
        batch = Counter(r for r, _ in _served_by(platform, 60))
        assert min(batch.values()) >= 10, batch

        platform.stop("runtime-2", signal.SIGKILL)
        platform.stop("worker-instant-2", signal.SIGKILL)
        after = _served_by(platform, 30)
        assert len({r for r, _ in after}) == 1
        assert len({w for _, w in after}) == 1
    finally:
        for name in ("runtime-2", "worker-instant-2"):
            if name in platform.procs:
                platform.stop(name)
