"""The adapter digest reaches the client as `system_fingerprint` (streamed and whole)."""

from __future__ import annotations

from libs.context import RequestContext
from libs.events import ChatRequested, Delta, Usage
from services.gateway.openai_shapes import (
    Accumulator,
    ChatCompletionRequest,
    ChatStreamShaper,
    chat_event,
    validate,
)

CTX = RequestContext(tenant="acme", request_id="req-1")
DIGEST = "sha256:" + "ab" * 32


def _event() -> ChatRequested:
    req = validate(
        ChatCompletionRequest,
        {"model": "acme/smollm2-135m-instruct:ft", "messages": [{"role": "user", "content": "x"}]},
    )
    return chat_event(req, CTX)


def test_stream_chunks_name_the_adapter_digest_from_the_first_delta_on() -> None:
    event = _event()
    shaper = ChatStreamShaper(event, include_usage=False)
    first, second = shaper.chunks([Delta(content="He", adapter_digest=DIGEST), Delta(content="y")])
    assert first["system_fingerprint"] == second["system_fingerprint"] == DIGEST
    base = ChatStreamShaper(event, include_usage=False)
    assert base.chunks([Delta(content="He")])[0]["system_fingerprint"] is None


def test_a_whole_response_names_the_digest_from_usage() -> None:
    acc = Accumulator(1)
    acc.add([Delta(content="Hi", adapter_digest=DIGEST)])
    body = acc.response(_event(), Usage(completion_tokens=1, adapter_digest=DIGEST))
    assert body["system_fingerprint"] == DIGEST
    assert set(body["usage"]) == {"prompt_tokens", "completion_tokens", "total_tokens"}
    assert acc.response(_event(), Usage())["system_fingerprint"] is None
