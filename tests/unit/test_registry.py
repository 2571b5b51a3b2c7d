import pytest

from libs.errors import ErrorInfo
from libs.settings import REPO_ROOT
from services.inference_router.registry import (
    ModelRoute,
    RegistryError,
    load_registry,
    parse_registry,
    permitted,
)


def test_shipped_registry_routes_the_default_models() -> None:
    registry = load_registry(REPO_ROOT / "deploy" / "models.yaml")
    route = registry.resolve("smollm2-135m-instruct", "acme", "chat")
    assert isinstance(route, ModelRoute) and route.pool == "smollm2"
    assert isinstance(registry.resolve("smollm2-135m-instruct", "acme", "completion"), ModelRoute)
    assert isinstance(registry.resolve("gemma-3-270m", "acme", "completion"), ModelRoute)


def test_unknown_model_is_404_and_wrong_kind_is_400() -> None:
    registry = load_registry(REPO_ROOT / "deploy" / "models.yaml")
    missing = registry.resolve("gpt-9", "acme", "chat")
    assert isinstance(missing, ErrorInfo) and missing.status == 404
    wrong = registry.resolve("gemma-3-270m", "acme", "chat")
    assert isinstance(wrong, ErrorInfo) and wrong.status == 400


def test_tenant_models_are_invisible_to_other_tenants() -> None:
    registry = load_registry(REPO_ROOT / "deploy" / "models.yaml").with_routes(
        [ModelRoute(id="acme-tuned", kind="chat", pool="smollm2", tenant="acme")]
    )
    assert isinstance(registry.resolve("acme-tuned", "acme", "chat"), ModelRoute)
    other = registry.resolve("acme-tuned", "globex", "chat")
    assert isinstance(other, ErrorInfo) and other.status == 404
    assert "acme-tuned" not in {m.id for m in registry.visible("globex")}


def test_bad_documents_are_rejected() -> None:
    with pytest.raises(RegistryError):
        parse_registry({"version": 2})
    with pytest.raises(RegistryError):
        parse_registry(
            {"version": 1, "pools": {}, "models": [{"id": "a", "kind": "chat", "pool": "x"}]}
        )
    with pytest.raises(RegistryError):
        parse_registry({"version": 1, "pools": {"p": {}}})


def test_a_chat_model_may_carry_a_rag_default() -> None:
    pools = {"p": {"engine": "instant"}}
    registry = parse_registry(
        {
            "version": 1,
            "pools": pools,
            "models": [
                {"id": "hr", "kind": "chat", "pool": "p", "rag": {"collection": "handbook"}},
                {"id": "plain", "kind": "chat", "pool": "p"},
            ],
        }
    )
    hr = registry.resolve("hr", "acme", "chat")
    assert isinstance(hr, ModelRoute) and hr.rag is not None
    assert hr.rag.collection == "handbook" and hr.rag.enabled and not hr.rag.grounding
    plain = registry.resolve("plain", "acme", "chat")
    assert isinstance(plain, ModelRoute) and plain.rag is None
    for bad in (
        {"id": "e", "kind": "embedding", "pool": "p", "rag": {"collection": "x"}},
        {"id": "n", "kind": "chat", "pool": "p", "rag": {"top_k": 3}},
        {"id": "t", "kind": "chat", "pool": "p", "rag": {"collection": "x", "top_k": "many"}},
    ):
        with pytest.raises(RegistryError):
            parse_registry({"version": 1, "pools": pools, "models": [bad]})


def test_an_allow_list_lets_through_its_models_and_their_fine_tuned_ids() -> None:
    assert permitted("anything", None)
    allowed = ["smollm2-135m-instruct"]
    assert permitted("smollm2-135m-instruct", allowed)
    assert not permitted("enclave-instant", allowed)
    assert not permitted("enclave-instant", [])
    assert permitted("acme/smollm2-135m-instruct:ft", allowed)
    assert permitted("acme/smollm2-135m-instruct:ft-v3", allowed)
    assert not permitted("acme/gemma-3-270m:ft-v1", allowed)
    assert permitted("acme/gemma-3-270m:ft-v1", ["acme/gemma-3-270m:ft-v1"])
