"""Embeddings through the gateway, router and the MiniLM worker; both encodings."""

from __future__ import annotations

import base64

import httpx
import numpy as np
import openai

from tests.infra import Platform


def test_batch_embeddings_are_384_dims_and_meaningful(platform: Platform) -> None:
    # The SDK asks for base64 by default and decodes it; its strict mode validates the
    # body before decoding, so the strict client asks for floats and the default one
    # (which checks our base64) validates nothing.
    strict = openai.OpenAI(
        base_url=platform.base_url + "/v1",
        api_key=platform.admin_key,
        _strict_response_validation=True,
        max_retries=0,
    )
    default = openai.OpenAI(base_url=platform.base_url + "/v1", api_key=platform.admin_key)
    texts = [
        "The cat sat on the mat.",
        "A kitten was sitting on the rug.",
        "Quarterly tax filings are due in April.",
    ]
    reply = strict.embeddings.create(model="all-minilm-l6-v2", input=texts, encoding_format="float")
    decoded = default.embeddings.create(model="all-minilm-l6-v2", input=texts)
    np.testing.assert_allclose(
        np.array([d.embedding for d in decoded.data]),
        np.array([d.embedding for d in reply.data]),
        rtol=1e-5,
        atol=1e-6,
    )
    vectors = np.array([d.embedding for d in reply.data])
    assert vectors.shape == (3, 384)
    assert [d.index for d in reply.data] == [0, 1, 2]
    assert reply.usage.prompt_tokens > 0
    sim = (
        vectors
        @ vectors.T
        / np.outer(np.linalg.norm(vectors, axis=1), np.linalg.norm(vectors, axis=1))
    )
    assert sim[0, 1] > sim[0, 2] + 0.2
    assert sim[0, 1] > sim[1, 2] + 0.2


def test_float_and_base64_encodings_agree(platform: Platform) -> None:
    headers = {"Authorization": f"Bearer {platform.admin_key}"}
    body = {"model": "all-minilm-l6-v2", "input": ["hello world"]}
    as_float = httpx.post(
        platform.base_url + "/v1/embeddings",
        headers=headers,
        json={**body, "encoding_format": "float"},
        timeout=30,
    ).json()
    as_b64 = httpx.post(
        platform.base_url + "/v1/embeddings",
        headers=headers,
        json={**body, "encoding_format": "base64"},
        timeout=30,
    ).json()
    floats = np.array(as_float["data"][0]["embedding"], dtype=np.float32)
    decoded = np.frombuffer(base64.b64decode(as_b64["data"][0]["embedding"]), dtype="<f4")
    assert decoded.shape == (384,)
    np.testing.assert_allclose(decoded, floats, rtol=1e-6)
