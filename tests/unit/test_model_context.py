"""max_tokens bounded by the model's context window (libs/model_context.py), from the
registry the router reads (the gateway's routes: tests/gateway/test_max_tokens_context.py)."""

from __future__ import annotations

import pytest

from libs.errors import EnclaveError
from libs.model_context import MAX_TOKENS, ContextWindows, context_windows
from libs.settings import REPO_ROOT, Settings
from services.gateway.bootstrap import load_windows

REGISTRY = {
    "version": 1,
    "pools": {
        "small": {"engine": "llamacpp", "n_ctx": 2048},
        "big": {"engine": "llamacpp", "n_ctx": 8192},
        "huge": {"engine": "vllm", "n_ctx": 131072},
        "instant": {"engine": "instant"},
    },
    "models": [
        {"id": "small-chat", "kind": "chat", "pool": "small"},
        {"id": "big-chat", "kind": "chat", "pool": "big", "fallback": ["small", "instant"]},
        {"id": "own-window", "kind": "chat", "pool": "small", "context_window": 1024},
        {"id": "huge-chat", "kind": "chat", "pool": "huge"},
        {"id": "instant-chat", "kind": "chat", "pool": "instant"},
    ],
}


def _refused(windows: ContextWindows, model: str, requested: int, param: str) -> EnclaveError:
    with pytest.raises(EnclaveError) as caught:
        windows.check(model, requested, param)
    return caught.value


def test_each_model_gets_its_pools_window() -> None:
    windows = context_windows(REGISTRY)
    assert windows.limit("small-chat") == 2048
    assert windows.limit("big-chat") == 2048  # the smallest of the pools that may serve it
    assert windows.limit("own-window") == 1024
    assert windows.limit("huge-chat") == MAX_TOKENS  # never past the ceiling
    assert windows.limit("instant-chat") == MAX_TOKENS  # no window known
    assert windows.limit("not-in-the-registry") == MAX_TOKENS


def test_max_tokens_past_the_window_is_a_400_naming_the_param_and_the_limit() -> None:
    windows = context_windows(REGISTRY)
    windows.check("small-chat", 2048, "max_tokens")
    windows.check("small-chat", None, "max_tokens")
    err = _refused(windows, "small-chat", 2049, "max_completion_tokens").info
    assert (err.status, err.code, err.param) == (400, "invalid_value", "max_completion_tokens")
    assert "2049" in err.message and "2048" in err.message and "small-chat" in err.message
    assert err.body()["error"]["type"] == "invalid_request_error"
    err = _refused(windows, "huge-chat", MAX_TOKENS + 1, "max_output_tokens").info
    assert err.param == "max_output_tokens" and str(MAX_TOKENS) in err.message
    windows.check("instant-chat", MAX_TOKENS, "max_tokens")


def test_an_odd_registry_gives_no_window_rather_than_failing() -> None:
    odd = {
        "pools": {"p": "not a mapping", "q": {"n_ctx": True}, "r": {"n_ctx": -1}},
        "models": [
            {"id": "a", "pool": "p"},
            {"id": "b", "pool": "q"},
            {"id": "c", "pool": "r"},
            {"id": "d", "pool": ["x"]},
            "not a model",
            {"pool": "p"},
        ],
    }
    assert context_windows(odd).windows == {}
    assert context_windows({}).windows == {}


def test_the_gateway_reads_the_registry_it_is_given() -> None:
    shipped = Settings(models_file=REPO_ROOT / "deploy" / "models.yaml")
    assert load_windows(shipped).limit("smollm2-135m-instruct") == 2048  # its pool's n_ctx
    missing = Settings(models_file=REPO_ROOT / "no-such-models.yaml")
    assert load_windows(missing).windows == {}
