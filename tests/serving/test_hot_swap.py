"""Hot swap and adapter choice, the pure core: digests not names, drains, failed loads."""

from __future__ import annotations

import pytest

from libs.events import ModelsChanged
from services.inference_router.adapter_choice import (
    AdapterKey,
    AdapterRefused,
    Wanted,
    bundle_problem,
    lora_name,
    wanted,
)
from services.inference_router.adapters.vllm import LoraIds
from services.inference_router.hot_swap import HotSwap

BASE = "smollm2-135m-instruct"
D1, D2, D3 = ("sha256:" + c * 64 for c in "123")


class Ports:
    def __init__(self) -> None:
        self.loaded: list[AdapterKey] = []
        self.unloaded: list[AdapterKey] = []
        self.events: list[ModelsChanged] = []
        self.broken: set[str] = set()

    def load(self, key: AdapterKey) -> None:
        if key.digest in self.broken:
            raise AdapterRefused(f"adapter {key.digest} cannot be verified: bad signature", 403)
        self.loaded.append(key)

    def unload(self, key: AdapterKey) -> None:
        self.unloaded.append(key)

    def publish(self, event: ModelsChanged) -> None:
        self.events.append(event)


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def promoted(tenant: str, digest: str, kind: str = "promoted") -> ModelsChanged:
    return ModelsChanged.model_validate(
        {
            "kind": kind,
            "tenant": tenant,
            "base_model": BASE,
            "public_id": f"{tenant}/{BASE}:ft",
            "digest": digest,
        }
    )


def make() -> tuple[HotSwap, Ports, Clock]:
    ports, clock = Ports(), Clock()
    return HotSwap(ports, clock, base_model=BASE, drain_timeout_s=30, worker="w1"), ports, clock


def alias(tenant: str) -> Wanted:
    return Wanted(tenant=tenant, alias=f"{tenant}/{BASE}:ft")


def test_wanted_accepts_digests_and_own_aliases_only() -> None:
    assert wanted(None, "acme", BASE) is None
    assert wanted(D1, "acme", BASE) == Wanted("acme", digest=D1)
    assert wanted(f"acme/{BASE}:ft", "acme", BASE) == Wanted("acme", alias=f"acme/{BASE}:ft")
    with pytest.raises(AdapterRefused, match="digest only") as bad:
        wanted("my-lora", "acme", BASE)
    assert bad.value.status == 400
    with pytest.raises(AdapterRefused, match="does not exist") as other:
        wanted(f"globex/{BASE}:ft", "acme", BASE)
    assert other.value.status == 404
    with pytest.raises(AdapterRefused, match="base model"):
        wanted("acme/gemma-3-270m:ft", "acme", BASE)


def test_bundle_must_name_the_tenant_digest_and_base_model() -> None:
    key = AdapterKey("acme", D1)
    good = {"tenant": "acme", "digest": D1, "base_model": BASE}
    assert bundle_problem(key, BASE, good) is None
    assert "another tenant" in (bundle_problem(key, BASE, {**good, "tenant": "globex"}) or "")
    assert "not " + D1 in (bundle_problem(key, BASE, {**good, "digest": D2}) or "")
    assert "trained on" in (bundle_problem(key, BASE, {**good, "base_model": "x"}) or "")


def test_lora_names_come_from_the_digest() -> None:
    assert lora_name(D1) == "lora_" + "1" * 64
    with pytest.raises(ValueError):
        lora_name("acme-support")


def test_vllm_lora_name_and_id_come_from_the_digest() -> None:
    ids = LoraIds()
    assert ids.name_and_id(D1) == (D1, 1)
    assert ids.name_and_id(D2) == (D2, 2)
    # The same digest is the same id forever; a new version under the same public name
    # is another digest, hence another id: vLLM cannot serve it from a stale cache.
    assert ids.name_and_id(D1) == (D1, 1)
    with pytest.raises(ValueError, match="by digest"):
        ids.name_and_id("acme/smollm2-135m-instruct:ft")
    # Not hash(name): two processes give the same ids for the same order of digests.
    other = LoraIds()
    assert [other.name_and_id(d)[1] for d in (D1, D2)] == [1, 2]


def test_a_pinned_digest_loads_on_demand_and_is_keyed_by_tenant_and_digest() -> None:
    swap, ports, _ = make()
    lease = swap.acquire(Wanted("acme", digest=D1))
    assert lease.key == AdapterKey("acme", D1)
    assert ports.loaded == [AdapterKey("acme", D1)]
    swap.release(lease)
    again = swap.acquire(Wanted("acme", digest=D1))
    assert ports.loaded == [AdapterKey("acme", D1)]  # loaded once
    swap.release(again)
    # Another tenant naming the same digest gets its own key: its own bundle is checked.
    swap.release(swap.acquire(Wanted("globex", digest=D1)))
    assert ports.loaded[-1] == AdapterKey("globex", D1)


def test_an_alias_nobody_promoted_is_refused_not_served_by_the_base_model() -> None:
    swap, _, _ = make()
    with pytest.raises(AdapterRefused, match="not served by this worker") as refused:
        swap.acquire(alias("acme"))
    assert refused.value.status == 503


def test_promotion_loads_first_then_moves_the_alias_and_drains_the_old_version() -> None:
    swap, ports, clock = make()
    swap.changed(promoted("acme", D1))
    running = swap.acquire(alias("acme"))
    assert running.key.digest == D1
    clock.now += 5
    swap.changed(promoted("acme", D2))
    # New requests get the new version at once; the old one still serves its request.
    fresh = swap.acquire(alias("acme"))
    assert fresh.key.digest == D2
    assert AdapterKey("acme", D1) not in ports.unloaded
    assert [e.kind for e in ports.events] == []
    clock.now += 40
    assert swap.overdue() == [(AdapterKey("acme", D1), 1)]
    swap.release(running)  # the last request on D1 ends: now it goes
    assert ports.unloaded == [AdapterKey("acme", D1)]
    assert [(e.kind, e.digest, e.worker) for e in ports.events] == [("drained", D1, "w1")]
    assert swap.overdue() == []
    swap.release(fresh)
    assert ports.unloaded == [AdapterKey("acme", D1)]  # D2 serves: stays


def test_an_idle_old_version_is_unloaded_at_once() -> None:
    swap, ports, _ = make()
    swap.changed(promoted("acme", D1))
    swap.changed(promoted("acme", D2))
    assert ports.unloaded == [AdapterKey("acme", D1)]
    assert ports.events[-1].kind == "drained"


def test_a_failed_load_keeps_the_previous_version_serving_and_says_so() -> None:
    swap, ports, _ = make()
    swap.changed(promoted("acme", D1))
    ports.broken.add(D2)
    swap.changed(promoted("acme", D2))
    lease = swap.acquire(alias("acme"))
    assert lease.key.digest == D1
    failed = ports.events[-1]
    assert (failed.kind, failed.digest, failed.previous) == ("load_failed", D2, D1)
    assert "bad signature" in (failed.reason or "")
    assert ports.unloaded == []
    # A request pinned to the broken digest is refused, not answered by something else.
    with pytest.raises(AdapterRefused, match="cannot be verified"):
        swap.acquire(Wanted("acme", digest=D2))


def test_every_load_and_failed_load_is_told_to_the_metrics() -> None:
    swap, ports, _ = make()
    told: list[tuple[str, bool]] = []
    swap.on_load = lambda digest, ok: told.append((digest, ok))
    swap.changed(promoted("acme", D1))
    ports.broken.add(D2)
    swap.changed(promoted("acme", D2))
    with pytest.raises(AdapterRefused):
        swap.acquire(Wanted("acme", digest=D2))
    swap.release(swap.acquire(alias("acme")))  # loaded already: no load, nothing told
    assert told == [(D1, True), (D2, False), (D2, False)]


def test_rollback_returns_to_the_previous_version() -> None:
    swap, _, _ = make()
    swap.changed(promoted("acme", D1))
    swap.changed(promoted("acme", D2))
    swap.changed(promoted("acme", D1, kind="rolled_back"))
    assert swap.acquire(alias("acme")).key.digest == D1


def test_two_tenants_aliases_never_cross() -> None:
    swap, _, _ = make()
    swap.changed(promoted("acme", D1))
    swap.changed(promoted("globex", D2))
    swap.changed(promoted("acme", D3))  # acme reloads; globex is untouched
    assert swap.acquire(alias("acme")).key == AdapterKey("acme", D3)
    assert swap.acquire(alias("globex")).key == AdapterKey("globex", D2)


def test_other_base_models_and_other_kinds_are_ignored() -> None:
    swap, ports, _ = make()
    event = promoted("acme", D1).model_copy(update={"base_model": "gemma-3-270m"})
    swap.changed(event)
    swap.changed(promoted("acme", D1, kind="drained"))
    assert ports.loaded == []


def test_idle_on_demand_versions_beyond_the_limit_are_evicted_least_recent_first() -> None:
    ports, clock = Ports(), Clock()
    swap = HotSwap(ports, clock, base_model=BASE, max_loaded=2)
    swap.changed(promoted("acme", D1))  # serves an alias: never evicted
    for digest in (D2, D3):
        clock.now += 1
        swap.release(swap.acquire(Wanted("globex", digest=digest)))
    assert ports.unloaded == [AdapterKey("globex", D2)]


def test_a_refusal_is_an_openai_shaped_error_on_the_model_param() -> None:
    with pytest.raises(AdapterRefused) as refused:
        wanted("my-lora", "acme", BASE)
    body = refused.value.error().body()["error"]
    assert isinstance(body, dict)
    assert (body["type"], body["param"], body["code"]) == (
        "invalid_request_error",
        "model",
        "invalid_adapter",
    )


def test_an_alias_with_the_registrys_digest_starts_a_fresh_worker_then_swaps_as_usual() -> None:
    swap, ports, _ = make()
    routed = wanted(f"acme/{BASE}:ft@{D1}", "acme", BASE)
    assert routed == Wanted("acme", digest=D1, alias=f"acme/{BASE}:ft")
    swap.release(swap.acquire(routed))
    assert ports.loaded == [AdapterKey("acme", D1)]
    swap.changed(promoted("acme", D2))
    # A request routed before the promotion reached the router still gets the new version.
    assert swap.acquire(routed).key.digest == D2
    with pytest.raises(AdapterRefused, match="not a digest"):
        wanted(f"acme/{BASE}:ft@latest", "acme", BASE)
