"""How many tokens a request may ask a model to write: no more than the model's context
window, and never more than `MAX_TOKENS`. Pure.

A model's window comes from the registry (deploy/models.yaml, ENCLAVE_MODELS_FILE): its
own `context_window`, else its pool's `n_ctx` (llama.cpp); a model with fallback pools
gets the smallest window of those that name one. A model the registry gives
no window (the instant engine, a pool without `n_ctx`, a model registered at run time,
a tenant's adapter, `agent:<name>`) is bounded by `MAX_TOKENS` alone; its worker still
stops at its own context.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from libs.errors import EnclaveError

# The absolute ceiling of max_tokens / max_completion_tokens / max_output_tokens.
MAX_TOKENS = 32_768


@dataclass(frozen=True)
class ContextWindows:
    """Model id -> its context window, in tokens."""

    windows: Mapping[str, int] = field(default_factory=dict)

    def limit(self, model: str) -> int:
        """The most tokens one request may ask `model` to write."""
        return min(self.windows.get(model, MAX_TOKENS), MAX_TOKENS)

    def check(self, model: str, requested: int | None, param: str) -> None:
        """A 400 `invalid_value` naming `param` and the model's limit when `requested`
        passes it."""
        if requested is None or requested <= self.limit(model):
            return
        window = self.windows.get(model)
        why = (
            f"the model `{model[:256]}` has a context window of {window} tokens"
            if window is not None and window <= MAX_TOKENS
            else f"at most {MAX_TOKENS} tokens may be asked of any model"
        )
        raise EnclaveError(
            400,
            f"Invalid value for `{param}`: {requested} is more than {self.limit(model)}: {why}.",
            "invalid_value",
            param,
        )


def context_windows(registry: Mapping[str, Any]) -> ContextWindows:
    """The windows of a registry document (the parsed YAML); what it does not say, it
    leaves out."""
    pools = registry.get("pools") or {}
    windows: dict[str, int] = {}
    for entry in registry.get("models") or []:
        if not isinstance(entry, Mapping) or not isinstance(entry.get("id"), str):
            continue
        names = [entry.get("pool"), *(entry.get("fallback") or ())]
        known = [n for n in (_pool_window(pools, name) for name in names) if n is not None]
        own = _tokens(entry.get("context_window"))
        if own is not None:
            windows[entry["id"]] = own
        elif known:
            windows[entry["id"]] = min(known)
    return ContextWindows(windows)


def _pool_window(pools: Mapping[str, Any], name: Any) -> int | None:
    pool = pools.get(name) if isinstance(name, str) else None
    return _tokens(pool.get("n_ctx")) if isinstance(pool, Mapping) else None


def _tokens(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None
