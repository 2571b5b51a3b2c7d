"""The grounding check and a model's retrieval default, through the real platform.

The echo pool repeats the user's message as the answer, so the answer's sentences are
known: one the handbook states, one it does not."""

from __future__ import annotations

from typing import Any

import httpx

from tests.infra import Platform
from tests.memory.test_memory_e2e import _store_with_handbook, auth, sdk, streamed_chunks

SUPPORTED = "The badge office is on floor 3 of the Zephyr building."
INVENTED = "The cafeteria serves free sushi to visitors every Friday."
ANSWER = f"{SUPPORTED} {INVENTED}"


def _post(platform: Platform, key: str, body: dict[str, Any]) -> httpx.Response:
    return httpx.post(
        platform.base_url + "/v1/chat/completions", headers=auth(key), json=body, timeout=60
    )


def test_grounding_flags_the_sentence_no_chunk_supports(platform: Platform) -> None:
    key = platform.create_key("ground-a", "developer")
    _store_with_handbook(platform, key, "kb")
    body: dict[str, Any] = {
        "model": "enclave-echo",
        "messages": [{"role": "user", "content": ANSWER}],
        "rag": {"collection": "kb", "grounding": True},
    }
    r = _post(platform, key, body)
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["choices"][0]["message"]["content"] == ANSWER
    verdicts = {g["text"]: g for g in out["grounding"]}
    assert set(verdicts) == {SUPPORTED, INVENTED}
    assert verdicts[SUPPORTED]["supported"] is True
    # It names the [n] of the chunk that supports it.
    cited = {c["index"] for c in out["citations"]}
    assert verdicts[SUPPORTED]["citation"] in cited
    assert verdicts[INVENTED]["supported"] is False and verdicts[INVENTED]["citation"] is None

    # Off unless asked for.
    plain = _post(platform, key, {**body, "rag": {"collection": "kb"}}).json()
    assert "grounding" not in plain and plain["citations"]

    # Streamed: it arrives once, after the answer's deltas, and the SDK keeps it.
    stream = sdk(platform, key).chat.completions.create(
        model="enclave-echo",
        messages=[{"role": "user", "content": ANSWER}],
        stream=True,
        stream_options={"include_usage": True},
        extra_body={"rag": {"collection": "kb", "grounding": True}},
    )
    chunks = list(stream)
    carrying = [i for i, c in enumerate(chunks) if c.model_extra.get("grounding")]
    assert len(carrying) == 1
    last_content = max(i for i, c in enumerate(chunks) if c.choices and c.choices[0].delta.content)
    assert carrying[0] > last_content
    streamed = chunks[carrying[0]].model_extra["grounding"]
    assert [g["supported"] for g in streamed] == [True, False]
    assert chunks[-1].usage is not None


def test_a_models_rag_default_applies_unless_the_chat_opts_out(platform: Platform) -> None:
    key = platform.create_key("ground-default", "developer")
    vs_id = _store_with_handbook(platform, key, "kb-default")
    body: dict[str, Any] = {
        "model": "enclave-echo-kb",
        "messages": [{"role": "user", "content": ANSWER}],
    }
    out = _post(platform, key, body).json()
    # No `rag` in the request: the model's default store, with its grounding check.
    assert out["citations"] and out["citations"][0]["vector_store_id"] == vs_id
    assert [g["supported"] for g in out["grounding"]] == [True, False]

    off = _post(platform, key, {**body, "rag": {"enabled": False}}).json()
    assert "citations" not in off and "grounding" not in off

    # The default names a store of the caller's own tenant: another tenant without one
    # gets a clear 404, never the first tenant's store.
    other = platform.create_key("ground-other", "developer")
    r = _post(platform, other, body)
    assert r.status_code == 404, r.text
    assert "kb-default" in r.json()["error"]["message"]
    lines = streamed_chunks(platform, key, body)
    assert lines[0]["citations"][0]["vector_store_id"] == vs_id
