"""The openai_compat engine against stand-in providers on 127.0.0.1, failover between
them, the sealed API key, the per-tenant enablement, and a tenant's own settings (its
address, key and model name) on the route and in the engine."""

from __future__ import annotations

import asyncio
import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from libs.context import RequestContext
from libs.errors import EnclaveError
from libs.events import ChatMessage, Delta, GenerateRequest, GenerationParams, Upstream, Usage
from libs.failover import AttemptFailed, Breakers, NoPoolAnswered, run_with_failover
from libs.providers import (
    Provider,
    TenantProvider,
    external_allowed,
    tenant_upstream,
    url_allowed,
)
from libs.secret_box import SecretBox, key_path
from services.inference_router.adapters.openai_compat import OpenAICompatEngine
from tests.identity.standin_provider import StandinProvider


def _request(
    text: str = "Summarise [REDACTED_PERSON]'s letter", **params: object
) -> GenerateRequest:
    return GenerateRequest(
        ctx=RequestContext(tenant="acme", request_id="req-1", actor="key-1"),
        model="gpt-x",
        messages=[ChatMessage(role="user", content=text)],
        params=GenerationParams(max_tokens=20, **params),
        deltas_subject="unused",
    )


@pytest.fixture
def home(tmp_path: Path) -> Path:
    return tmp_path


@pytest.fixture
def good() -> Iterator[StandinProvider]:
    with StandinProvider("b") as provider:
        yield provider


def _engine(provider: StandinProvider, home: Path, name: str = "") -> OpenAICompatEngine:
    sealed = SecretBox.at(home).seal("sk-test-123")
    return OpenAICompatEngine(
        "upstream-model", provider.url, api_key=sealed, home=home, timeout_s=5, name=name
    )


def test_streams_passes_usage_and_sends_only_what_it_was_given(
    good: StandinProvider, home: Path
) -> None:
    deltas: list[Delta] = []
    usage = _engine(good, home).generate(_request(), deltas.append)
    assert "".join(d.content for d in deltas) == "Hello from b"
    assert deltas[-1].finish_reason == "stop"
    assert usage == Usage(prompt_tokens=7, completion_tokens=3)
    [seen] = good.received
    assert seen["path"] == "/v1/chat/completions"
    assert seen["headers"]["authorization"] == "Bearer sk-test-123"
    assert not [h for h in seen["headers"] if h.lower().startswith(("enclave", "traceparent"))]
    assert seen["body"] == {
        "model": "upstream-model",
        "stream": True,
        "stream_options": {"include_usage": True},
        "max_tokens": 20,
        "messages": [{"role": "user", "content": "Summarise [REDACTED_PERSON]'s letter"}],
    }


async def test_the_async_path_streams_the_same(good: StandinProvider, home: Path) -> None:
    deltas: list[Delta] = []
    request = _request().model_copy(update={"kind": "completion", "prompt": "Once", "messages": []})
    usage = await _engine(good, home).agenerate(request, deltas.append)
    assert "".join(d.content for d in deltas) == "Hello from b"
    assert usage.total_tokens == 10
    assert good.received[0]["path"] == "/v1/completions"
    assert good.received[0]["body"]["prompt"] == "Once"


@pytest.mark.parametrize("mode", ["500", "die", "gone"])
async def test_failover_before_the_first_token_gives_one_clean_answer(
    mode: str, good: StandinProvider, home: Path
) -> None:
    with StandinProvider("a", "500" if mode == "gone" else mode) as bad:
        if mode == "gone":  # nothing listens on its port any more
            bad.server.shutdown()
            bad.server.server_close()
        engines = {"a": _engine(bad, home, "a"), "b": _engine(good, home, "b")}
        seen: list[Delta] = []  # what the client would see

        async def attempt(pool: str) -> Usage:
            return await asyncio.to_thread(engines[pool].generate, _request(), seen.append)

        answered = await run_with_failover(["a", "b"], attempt, Breakers())
    assert answered.pool == "b"
    assert "".join(d.content for d in seen) == "Hello from b"
    assert [f.pool for f in answered.failures] == ["a"]
    assert len(bad.received) == (0 if mode == "gone" else 1)
    assert len(good.received) == 1


async def test_a_provider_cut_mid_stream_is_not_retried(good: StandinProvider, home: Path) -> None:
    with StandinProvider("a", "cut") as cut:
        engines = {"a": _engine(cut, home, "a"), "b": _engine(good, home, "b")}

        async def attempt(pool: str) -> Usage:
            return await asyncio.to_thread(engines[pool].generate, _request(), lambda d: None)

        with pytest.raises(AttemptFailed) as caught:
            await run_with_failover(["a", "b"], attempt, Breakers())
    assert caught.value.started and caught.value.pool == "a"
    assert good.received == []


async def test_both_down_is_no_answer(home: Path) -> None:
    with StandinProvider("a", "500") as a, StandinProvider("c", "die") as c:
        engines = {"a": _engine(a, home, "a"), "c": _engine(c, home, "c")}

        async def attempt(pool: str) -> Usage:
            return await asyncio.to_thread(engines[pool].generate, _request(), lambda d: None)

        with pytest.raises(NoPoolAnswered) as caught:
            await run_with_failover(["a", "c"], attempt, Breakers())
    assert [f.pool for f in caught.value.failures] == ["a", "c"]
    assert "HTTP 500" in str(caught.value)


def test_the_api_key_is_sealed_at_rest(home: Path) -> None:
    box = SecretBox.at(home)
    sealed = box.seal("sk-live-secret")
    assert "sk-live-secret" not in sealed and sealed.startswith("enc:v1:")
    assert stat.S_IMODE(key_path(home).stat().st_mode) == 0o600
    assert stat.S_IMODE(key_path(home).parent.stat().st_mode) == 0o700
    assert SecretBox.at(home).open(sealed) == "sk-live-secret"  # the same key, read back
    other = home / "other"
    with pytest.raises(ValueError, match="another key"):
        SecretBox.at(other).open(sealed)
    with pytest.raises(ValueError, match="must be sealed"):
        OpenAICompatEngine("m", "http://127.0.0.1:1/v1", api_key="sk-plain", home=home)
    os.chmod(key_path(home), 0o644)
    with pytest.raises(PermissionError):
        SecretBox.at(home)


def test_providers_are_off_until_enabled_per_tenant_with_an_allow_list() -> None:
    provider = Provider(
        name="openai-eu",
        base_url="https://example.invalid/v1",
        models={"gpt-4o-mini": "gpt-4o-mini-2024-07-18", "gpt-4o": "gpt-4o"},
    )
    grants = [
        TenantProvider(
            tenant="acme", provider="openai-eu", enabled=True, allowed_models=["gpt-4o-mini"]
        ),
        TenantProvider(
            tenant="globex", provider="openai-eu", enabled=False, allowed_models=["gpt-4o"]
        ),
    ]
    assert external_allowed(grants, "acme", provider, "gpt-4o-mini") == "gpt-4o-mini-2024-07-18"
    for tenant, model, code in [
        ("acme", "gpt-4o", "model_not_allowed"),
        ("globex", "gpt-4o", "provider_not_enabled"),
        ("initech", "gpt-4o-mini", "provider_not_enabled"),
    ]:
        with pytest.raises(EnclaveError) as caught:
            external_allowed(grants, tenant, provider, model)
        assert caught.value.info.status == 403 and caught.value.info.code == code


def test_a_registry_pool_builds_the_engine(good: StandinProvider, home: Path) -> None:
    from libs.settings import Settings
    from services.inference_router.workers.bootstrap import make_engine

    pool = {
        "engine": "openai_compat",
        "model": "upstream-model",
        "base_url": good.url,
        "api_key": SecretBox.at(home).seal("sk-pool"),
        "timeout_s": 5,
    }
    engine = make_engine(Settings(home=home), pool)
    deltas: list[Delta] = []
    assert engine.generate(_request(), deltas.append).completion_tokens == 3
    assert "".join(d.content for d in deltas) == "Hello from b"
    assert good.received[0]["headers"]["authorization"] == "Bearer sk-pool"


def test_a_tenants_own_settings_make_its_upstream() -> None:
    grant = TenantProvider(tenant="acme", provider="p", enabled=True, allowed_models=["m"])
    pool_url, pool_model = "https://pool.example/v1", "pool-model"
    assert tenant_upstream(grant, pool_url, pool_model, "m") is None  # the pool's own
    named = grant.model_copy(update={"models": {"m": "m-2025"}})
    assert tenant_upstream(named, pool_url, pool_model, "m") == Upstream(
        base_url="", model="m-2025"
    )
    keyed = grant.model_copy(update={"api_key": "enc:v1:x"})
    assert tenant_upstream(keyed, pool_url, pool_model, "m") == Upstream(
        base_url=pool_url, api_key="enc:v1:x", model=pool_model
    )
    # Its own address gets its own key or none: never the pool's.
    own = grant.model_copy(update={"base_url": "https://mine.example/v1/", "models": {"m": "x"}})
    assert tenant_upstream(own, pool_url, pool_model, "m") == Upstream(
        base_url="https://mine.example/v1", api_key="", model="x"
    )


async def test_the_route_carries_the_tenants_settings_for_its_provider_pools() -> None:

    from services.inference_router.registry import parse_registry
    from services.inference_router.routes import Routes

    pool = {"engine": "openai_compat", "provider": "p", "model": "up", "api_key": "enc:v1:pool"}
    doc = {
        "version": 1,
        "pools": {
            "p-a": {**pool, "base_url": "https://a.example/v1"},
            "p-b": {**pool, "base_url": "https://b.example/v1"},
            "local": {"engine": "instant"},
        },
        "models": [{"id": "m", "kind": "chat", "pool": "p-a", "fallback": ["p-b", "local"]}],
    }
    routes = Routes(parse_registry(doc), engine=None)  # type: ignore[arg-type]
    base = TenantProvider(
        tenant="acme", provider="p", enabled=True, allowed_models=["m"], models={"m": "up"}
    )

    async def answer(grant: TenantProvider) -> tuple[list[str], dict[str, Upstream]]:
        routes._grants.put("acme", [grant])
        routes._allowed.put("acme", None)  # no model allow-list
        reply = await routes.answer("m", "acme", "chat")
        assert reply.error is None and reply.external
        return [reply.pool or "", *reply.pools], reply.upstreams

    pools, upstreams = await answer(base)
    assert pools == ["p-a", "p-a", "p-b", "local"] and upstreams == {}
    own = base.model_copy(
        update={"base_url": "https://mine.example/v1", "api_key": "enc:v1:k", "models": {"m": "x"}}
    )
    pools, upstreams = await answer(own)
    # Both pools of the provider would reach the tenant's address: the first stays.
    assert pools == ["p-a", "p-a", "local"]
    assert upstreams == {
        "p-a": Upstream(base_url="https://mine.example/v1", api_key="enc:v1:k", model="x")
    }
    # With the platform's allow-list of addresses, one off it is refused, not sent.
    routes.url_prefixes = ["https://allowed.example/"]
    routes._grants.put("acme", [own])
    routes._allowed.put("acme", None)
    refused = await routes.answer("m", "acme", "chat")
    assert refused.pool == "local" and refused.upstreams == {} and not refused.external
    assert not url_allowed("https://allowed.example.evil/v1", routes.url_prefixes)
    assert url_allowed("https://allowed.example/v1", routes.url_prefixes)
    assert url_allowed("http://10.0.0.1/v1", [])  # none set: any


def test_the_engine_sends_a_tenants_request_to_its_address_with_its_key(
    good: StandinProvider, home: Path
) -> None:
    engine = _engine(good, home)
    box = SecretBox.at(home)
    with StandinProvider("mine") as mine:
        upstream = Upstream(base_url=mine.url, api_key=box.seal("sk-tenant-1"), model="their-m")
        request = _request().model_copy(update={"upstream": upstream})
        deltas: list[Delta] = []
        assert engine.generate(request, deltas.append).completion_tokens == 3
        assert "".join(d.content for d in deltas) == "Hello from mine"
        # Again, on the async path: the client made for it is kept, by the key's digest.
        asyncio.run(engine.agenerate(request, lambda d: None))
        [seen, again] = mine.received
        assert seen["headers"]["authorization"] == "Bearer sk-tenant-1"
        assert seen["body"]["model"] == "their-m" and again["body"]["model"] == "their-m"
        assert len(engine._tenants) == 1
        # No key of its own: none sent (the pool's key never goes to a tenant's address).
        bare = request.model_copy(update={"upstream": Upstream(base_url=mine.url, model="b")})
        engine.generate(bare, lambda d: None)
        assert "authorization" not in {k.lower() for k in mine.received[-1]["headers"]}
    # Only the model's name changed: the pool's address and key.
    renamed = _request().model_copy(update={"upstream": Upstream(base_url="", model="renamed")})
    engine.generate(renamed, lambda d: None)
    [pooled] = good.received
    assert pooled["body"]["model"] == "renamed"
    assert pooled["headers"]["authorization"] == "Bearer sk-test-123"
    engine.close()
