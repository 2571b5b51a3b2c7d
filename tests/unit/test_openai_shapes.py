import pytest

from libs.context import RequestContext
from libs.errors import EnclaveError
from libs.events import Delta, Usage
from services.gateway.openai_shapes import (
    Accumulator,
    ChatCompletionRequest,
    ChatStreamShaper,
    CompletionRequest,
    EmbeddingRequest,
    chat_event,
    completion_event,
    parse_json,
    validate,
)

# A developer key: it may assert the end user (`user`); a user-role key is its own.
CTX = RequestContext(tenant="acme", request_id="req-1", actor="k1", role="developer")


def test_chat_request_maps_every_parameter() -> None:
    req = validate(
        ChatCompletionRequest,
        {
            "model": "m",
            "messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}],
            "temperature": 0.5,
            "top_p": 0.9,
            "max_tokens": 10,
            "max_completion_tokens": 7,
            "stop": "END",
            "seed": 3,
            "n": 2,
            "logprobs": True,
            "top_logprobs": 2,
            "user": "u1",
            "response_format": {"type": "json_object"},
        },
    )
    event = chat_event(req, CTX)
    p = event.params
    assert event.messages[0].content == "hi"
    assert (p.temperature, p.top_p, p.max_tokens, p.stop, p.seed, p.n) == (
        0.5,
        0.9,
        7,
        ["END"],
        3,
        2,
    )
    assert p.logprobs and p.top_logprobs == 2 and p.user == "u1"
    assert p.response_format == {"type": "json_object"}
    assert event.ctx.tenant == "acme"


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"messages": [{"role": "user", "content": "x"}]}, "model"),
        ({"model": "m", "messages": []}, "messages"),
        ({"model": "m", "messages": [{"role": "wizard", "content": "x"}]}, "messages.0.role"),
        ({"model": "m", "messages": [{"role": "user", "content": "x"}], "n": 0}, "n"),
        # Admission bounds (hostile inputs answered 400, never 500 or a runaway turn).
        ({"model": "m", "messages": [{"role": "user", "content": "x"}], "n": 1000}, "n"),
        (
            {"model": "m", "messages": [{"role": "user", "content": "x"}], "max_tokens": 10**9},
            "max_tokens",
        ),
        (
            {"model": "m", "messages": [{"role": "user"}], "max_completion_tokens": 10**9},
            "max_completion_tokens",
        ),
        (
            {"model": "m", "messages": [{"role": "user"}], "temperature": float("nan")},
            "temperature",
        ),
        ({"model": "m", "messages": [{"role": "user", "content": "x"}] * 10_000}, "messages"),
        ({"model": "m" * 1_000_000, "messages": [{"role": "user"}]}, "model"),
        ({"model": "m", "messages": [{"role": "user"}], "rag": {"top_k": 10**9}}, "rag.top_k"),
        ({"model": "m", "messages": [{"role": "user"}], "stop": ["x" * 1000]}, "stop"),
        (
            {"model": "m", "messages": [{"role": "user"}], "response_format": {"type": "xml"}},
            "response_format",
        ),
    ],
)
def test_invalid_requests_are_400_with_the_param(body: dict, param: str) -> None:
    with pytest.raises(EnclaveError) as exc:
        validate(ChatCompletionRequest, body)
    assert exc.value.info.status == 400
    assert exc.value.info.param == param


def test_embedding_inputs_are_bounded() -> None:
    req = validate(EmbeddingRequest, {"model": "e", "input": ["a"] * 3000})
    with pytest.raises(ValueError, match="at most"):
        req.inputs()


@pytest.mark.parametrize(
    "body", [b"[" * 100_000 + b"]" * 100_000, b'{"model": "\xff\xfe"}', b'{"a": NaN}']
)
def test_deeply_nested_invalid_utf8_and_nan_json_are_400(body: bytes) -> None:
    with pytest.raises(EnclaveError) as exc:
        parse_json(body)
    assert exc.value.info.status == 400


def test_malformed_json_is_400() -> None:
    with pytest.raises(EnclaveError) as exc:
        parse_json(b"{nope")
    assert exc.value.info.status == 400
    assert exc.value.info.code == "invalid_json"


def test_stream_chunks_start_with_role_and_end_with_usage() -> None:
    req = validate(
        ChatCompletionRequest, {"model": "m", "messages": [{"role": "user", "content": "x"}]}
    )
    shaper = ChatStreamShaper(chat_event(req, CTX), include_usage=True)
    first, second = shaper.chunks([Delta(content="He"), Delta(content="llo")])
    assert first["choices"][0]["delta"] == {"role": "assistant", "content": "He"}
    assert second["choices"][0]["delta"] == {"content": "llo"}
    assert first["usage"] is None and first["id"] == "chatcmpl-req-1"
    (last,) = shaper.chunks([Delta(finish_reason="stop")])
    assert last["choices"][0]["delta"] == {} and last["choices"][0]["finish_reason"] == "stop"
    usage = shaper.usage_chunk(Usage(prompt_tokens=3, completion_tokens=2))
    assert usage["choices"] == [] and usage["usage"]["total_tokens"] == 5


def test_completion_accumulates_into_text_completion() -> None:
    req = validate(CompletionRequest, {"model": "g", "prompt": "Once", "n": 2})
    event = completion_event(req, CTX)
    acc = Accumulator(2)
    acc.add([Delta(index=0, content="a"), Delta(index=1, content="b"), Delta(index=0, content="c")])
    acc.add([Delta(index=0, finish_reason="length"), Delta(index=1, finish_reason="stop")])
    body = acc.response(event, Usage(prompt_tokens=1, completion_tokens=3))
    assert body["object"] == "text_completion"
    assert [c["text"] for c in body["choices"]] == ["ac", "b"]
    assert [c["finish_reason"] for c in body["choices"]] == ["length", "stop"]
