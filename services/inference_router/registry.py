"""The model registry: public model ids to worker pools, from YAML plus SQL rows. Pure.

A chat model also serves /v1/completions; a completion model serves only completions;
an embedding model only embeddings. A model registered for one tenant is visible to
that tenant alone.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from libs.errors import ErrorInfo, model_not_found
from libs.events import ModelInfo, RagOptions

KINDS = ("chat", "completion", "embedding")
SERVES = {
    "chat": {"chat", "completion"},
    "completion": {"completion"},
    "embedding": {"embedding"},
}


class RegistryError(ValueError):
    pass


@dataclass(frozen=True)
class ModelRoute:
    id: str
    kind: str
    pool: str
    adapter: str | None = None
    tenant: str | None = None
    created: int = 0
    # Retrieval for chats that do not say `rag` (the tenant's vector store of that name).
    rag: RagOptions | None = None
    # Pools tried after `pool`, in order, on an error before the first token (failover).
    fallback: tuple[str, ...] = ()

    @property
    def pools(self) -> tuple[str, ...]:
        return (self.pool, *self.fallback)

    def info(self) -> ModelInfo:
        return ModelInfo(id=self.id, kind=self.kind, pool=self.pool, created=self.created)


@dataclass
class Registry:
    pools: dict[str, dict[str, Any]] = field(default_factory=dict)
    models: dict[str, ModelRoute] = field(default_factory=dict)

    def with_routes(self, routes: list[ModelRoute]) -> Registry:
        merged = dict(self.models)
        for route in routes:
            for pool in route.pools:
                if pool not in self.pools:
                    raise RegistryError(f"model `{route.id}` names unknown pool `{pool}`")
            merged[route.id] = route
        return Registry(self.pools, merged)

    def visible(self, tenant: str | None) -> list[ModelRoute]:
        return [m for m in self.models.values() if m.tenant in (None, tenant)]

    def resolve(self, model: str, tenant: str, use: str) -> ModelRoute | ErrorInfo:
        route = self.models.get(model)
        if route is None or route.tenant not in (None, tenant):
            return model_not_found(model)
        if use not in SERVES[route.kind]:
            return ErrorInfo(
                status=400,
                message=f"The model `{model}` is a {route.kind} model and cannot serve {use}.",
                code="model_not_supported",
                param="model",
            )
        return route


def parse_registry(doc: dict[str, Any]) -> Registry:
    if doc.get("version") != 1:
        raise RegistryError("registry version must be 1")
    pools = doc.get("pools") or {}
    for name, pool in pools.items():
        if not isinstance(pool, dict) or "engine" not in pool:
            raise RegistryError(f"pool `{name}` must name an engine")
    registry = Registry(pools=pools)
    routes = []
    for entry in doc.get("models") or []:
        if entry.get("kind") not in KINDS:
            raise RegistryError(f"model `{entry.get('id')}` has kind {entry.get('kind')!r}")
        routes.append(
            ModelRoute(
                id=entry["id"],
                kind=entry["kind"],
                pool=entry["pool"],
                adapter=entry.get("adapter"),
                tenant=entry.get("tenant"),
                rag=rag_default(entry),
                fallback=tuple(entry.get("fallback") or ()),
            )
        )
    return registry.with_routes(routes)


def permitted(model: str, allowed: list[str] | None) -> bool:
    """Whether a tenant's allow-list (None: every model) lets `model` through. A tenant's
    fine-tuned id (`tenant/base:ft`, `tenant/base:ft-vN`) is let through with its base."""
    if allowed is None or model in allowed:
        return True
    if "/" in model and ":ft" in model:
        return model.split("/", 1)[1].split(":", 1)[0] in allowed
    return False


def provider_of(pool: dict[str, Any]) -> str | None:
    """The external provider a pool reaches (`provider:` on an openai_compat pool), or None
    for the platform's own workers (an openai_compat pool without it is a server of ours,
    a vLLM on another host, say)."""
    name = pool.get("provider")
    return str(name) if name else None


def rag_default(entry: dict[str, Any]) -> RagOptions | None:
    """A model's `rag` default (YAML entry or SQL params), checked when it is loaded."""
    value = entry.get("rag")
    if value is None:
        return None
    if entry.get("kind") != "chat":
        raise RegistryError(f"model `{entry.get('id')}`: only a chat model takes a rag default")
    try:
        rag = RagOptions.model_validate(value)
    except ValueError as exc:
        raise RegistryError(f"model `{entry.get('id')}` has an invalid rag default: {exc}") from exc
    if rag.enabled and not rag.collection:
        raise RegistryError(f"model `{entry.get('id')}`: its rag default names no collection")
    return rag


def load_registry(path: Path) -> Registry:
    return parse_registry(yaml.safe_load(path.read_text()))
