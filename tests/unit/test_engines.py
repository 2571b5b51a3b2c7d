"""Engine adapters by their contract: what they are asked, and what they emit."""

from libs.context import RequestContext
from libs.events import ChatMessage, Delta, GenerateRequest, GenerationParams
from services.inference_router.adapters.instant import InstantEngine
from services.inference_router.adapters.llamacpp import json_grammar
from services.inference_router.adapters.vllm import sampling_kwargs
from services.inference_router.engine import merged_params


def request(**params: object) -> GenerateRequest:
    return GenerateRequest(
        ctx=RequestContext(tenant="t", request_id="r"),
        model="m",
        messages=[ChatMessage(role="user", content="one two three")],
        params=GenerationParams(**params),  # type: ignore[arg-type]
        deltas_subject="x",
    )


def test_pool_defaults_apply_only_where_the_request_is_silent() -> None:
    merged = merged_params(request(temperature=0.1), {"temperature": 0.7, "max_tokens": 512})
    assert merged == {"temperature": 0.1, "max_tokens": 512}


def test_response_formats_become_grammars_that_admit_no_raw_control_characters() -> None:
    schema = {"type": "object", "properties": {"a": {"type": "integer"}, "b": {"type": "string"}}}
    fmt = {"type": "json_schema", "json_schema": {"name": "x", "schema": schema}}
    grammar = json_grammar(fmt)
    assert grammar is not None
    char = next(line for line in grammar.splitlines() if line.startswith("char ::="))
    assert r"\x00-\x1F" in char  # a string character is never a raw control character
    assert '"\\"b\\""' in grammar and "integer" in grammar
    assert r"\x00-\x1F" in (json_grammar({"type": "json_object"}) or "")
    assert json_grammar(None) is None
    assert json_grammar({"type": "text"}) is None


def test_vllm_sampling_params_follow_the_request() -> None:
    schema = {"type": "object"}
    kwargs = sampling_kwargs(
        request(
            temperature=0.3,
            top_p=0.8,
            max_tokens=9,
            stop=["\n"],
            seed=5,
            n=2,
            logprobs=True,
            top_logprobs=3,
            response_format={"type": "json_schema", "json_schema": {"schema": schema}},
        ),
        {"temperature": 0.7},
    )
    assert kwargs == {
        "n": 2,
        "temperature": 0.3,
        "top_p": 0.8,
        "max_tokens": 9,
        "stop": ["\n"],
        "seed": 5,
        "logprobs": 3,
        "json_schema": schema,
    }


def test_instant_engine_streams_every_choice_and_counts_usage() -> None:
    deltas: list[Delta] = []
    usage = InstantEngine(tokens=4).generate(request(n=2, max_tokens=3), deltas.append)
    assert [d.index for d in deltas] == [0, 0, 0, 0, 1, 1, 1, 1]
    assert [d.finish_reason for d in deltas if d.finish_reason] == ["length", "length"]
    assert usage.completion_tokens == 6 and usage.prompt_tokens == 3
