"""The route cache and the input passthrough: pure, on an injected clock."""

from __future__ import annotations

from libs.context import RequestContext
from libs.events import ChatMessage, GuardrailCheck, GuardrailVerdict, ModelsChanged, RouteReply
from libs.generation import RouteCache
from services.agent_runtime.passthrough import InputPassthrough


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_routes_are_kept_for_their_ttl_and_errors_never() -> None:
    clock = Clock()
    cache = RouteCache(2.0, clock)
    cache.put("acme", "m", "chat", RouteReply(pool="p"))
    cache.put("acme", "bad", "chat", RouteReply(error={"status": 404, "message": "no"}))
    hit = cache.get("acme", "m", "chat")
    assert hit is not None and hit.pool == "p"
    assert cache.get("acme", "bad", "chat") is None
    assert cache.get("other", "m", "chat") is None  # per tenant
    assert cache.get("acme", "m", "completion") is None  # per kind
    clock.now += 1.9
    assert cache.get("acme", "m", "chat") is not None
    clock.now += 0.2
    assert cache.get("acme", "m", "chat") is None
    cache.put("acme", "m", "chat", RouteReply(pool="p"))
    cache.drop("acme", "m", "chat")
    assert cache.get("acme", "m", "chat") is None


def test_models_changed_ends_the_routes_of_that_tenants_adapters_at_once() -> None:
    cache = RouteCache(3600.0, Clock())
    base = "smollm2-135m-instruct"
    for tenant in ("acme", "globex"):
        for model in (f"{tenant}/{base}:ft", f"{tenant}/{base}:ft-v1", base):
            cache.put(tenant, model, "chat", RouteReply(pool="p", adapter="a"))
    cache.put("acme", f"acme/{base}x:ft", "chat", RouteReply(pool="p"))

    def event(kind: str) -> ModelsChanged:
        return ModelsChanged.model_validate(
            {
                "kind": kind,
                "tenant": "acme",
                "base_model": base,
                "public_id": f"acme/{base}:ft",
                "digest": "sha256:" + "1" * 64,
            }
        )

    assert cache.models_changed(event("load_failed")) == 0  # a worker's news: no route moved
    assert cache.models_changed(event("promoted")) == 2
    assert cache.get("acme", f"acme/{base}:ft", "chat") is None
    assert cache.get("acme", f"acme/{base}:ft-v1", "chat") is None
    assert cache.get("acme", base, "chat") is not None  # the base model's route stays
    assert cache.get("acme", f"acme/{base}x:ft", "chat") is not None  # another base model
    assert cache.get("globex", f"globex/{base}:ft", "chat") is not None  # another tenant
    cache.put("acme", f"acme/{base}:ft", "chat", RouteReply(pool="p"))
    assert cache.models_changed(event("rolled_back")) == 1


def check(tenant: str, text: str = "hello", direction: str = "input") -> GuardrailCheck:
    return GuardrailCheck(
        ctx=RequestContext(tenant=tenant, request_id="r"),
        direction=direction,
        messages=[ChatMessage(role="user", content=text)],
    )


OPEN = GuardrailVerdict(allowed=True, texts=["hello"], passthrough_s=60.0)


def test_a_grant_spares_its_tenant_until_it_ends_or_a_policy_changes() -> None:
    clock = Clock()
    gate = InputPassthrough(cap_s=1.0, clock=clock)
    assert gate.held(check("open")) is None
    gate.grant(check("open"), OPEN, gate.generation)
    held = gate.held(check("open", "another text"))
    assert held is not None and held.allowed and held.texts == ["another text"]
    assert gate.held(check("strict")) is None  # another tenant's grant is its own
    assert gate.held(check("open", direction="output")) is None  # output is never spared
    clock.now += 1.01  # capped at cap_s, not the verdict's 60 s
    assert gate.held(check("open")) is None

    gate.grant(check("open"), OPEN, gate.generation)
    gate.policy_changed()
    assert gate.held(check("open")) is None


def test_what_never_grants() -> None:
    gate = InputPassthrough(cap_s=1.0, clock=Clock())
    asked_at = gate.generation
    gate.policy_changed()  # announced while the check was in flight
    gate.grant(check("a"), OPEN, asked_at)
    gate.grant(check("b"), OPEN.model_copy(update={"passthrough_s": 0.0}), gate.generation)
    gate.grant(check("c"), OPEN.model_copy(update={"pseudonyms": {"<P1>": "x"}}), gate.generation)
    gate.grant(check("d"), OPEN.model_copy(update={"allowed": False}), gate.generation)
    gate.grant(check("e", direction="output"), OPEN, gate.generation)
    assert gate.granted == {}


def test_an_input_bound_for_an_external_provider_is_never_spared() -> None:
    gate = InputPassthrough(cap_s=1.0, clock=Clock())
    gate.grant(check("a"), OPEN, gate.generation)
    assert gate.held(check("a")) is not None  # the tenant's own pools: spared
    external = check("a").model_copy(update={"external": True})
    assert gate.held(external) is None  # leaving the platform: always screened
    gate.grant(check("b").model_copy(update={"external": True}), OPEN, gate.generation)
    assert "b" not in gate.granted
