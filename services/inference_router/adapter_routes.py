"""Routes for a tenant's fine-tuned model ids, decided without I/O.

`tenant/base:ft-vN` and `tenant/base:ft` are not in the model registry: the trainer's
adapter registry resolves them (trainer.api `adapters.resolve`, only for the owning
tenant) to the base model and a digest. The route is then a pool that serves adapters
of that base model (a registry pool with `base_model` and engine `peft` or `vllm`), with
`adapter` = the digest for a version, or the alias with the promoted digest for `:ft`
(adapter_choice.alias_route: the worker hot swaps it on `models.changed`).
"""

from __future__ import annotations

import re
from typing import Any

from libs.errors import ErrorInfo
from libs.events import ModelInfo, RouteReply
from services.inference_router.adapter_choice import alias_route

_ADAPTER_ID = re.compile(r"^[^/:\s]+/[^/:\s]+:ft(?:-v[1-9][0-9]*)?$")
ADAPTER_ENGINES = ("peft", "vllm")


def is_adapter_id(model: str) -> bool:
    return bool(_ADAPTER_ID.match(model))


def adapter_route(model: str, resolved: dict[str, Any], pools: dict[str, Any]) -> RouteReply:
    """The route of `model` from the trainer's answer {base_model, digest, ...}."""
    base, digest = str(resolved["base_model"]), str(resolved["digest"])
    serving = [
        name
        for name, pool in sorted(pools.items())
        if pool.get("engine") in ADAPTER_ENGINES and pool.get("base_model") == base
    ]
    if not serving:
        return RouteReply(
            error=ErrorInfo(
                status=503,
                message=f"no worker pool serves adapters of {base!r} (a pool with engine"
                " peft and base_model)",
                code="no_adapter_pool",
            )
        )
    pool = serving[0]
    adapter = alias_route(model, digest) if model.endswith(":ft") else digest
    return RouteReply(pool=pool, adapter=adapter, timeout_s=pools[pool].get("timeout_s"))


def adapter_models(
    tenant: str, versions: list[dict[str, Any]], pools: dict[str, Any]
) -> list[ModelInfo]:
    """/v1/models entries of a tenant's adapter versions (the trainer's `adapters.list`):
    each `tenant/base:ft-vN`, and `tenant/base:ft` where a version is promoted. `pool` is
    the pool that would serve it ("" where none serves adapters of that base model)."""
    out: list[ModelInfo] = []
    for v in versions:
        route = adapter_route(str(v["id"]), v, pools)
        pool = route.pool or ""
        created = int(v.get("created_at") or 0)
        out.append(
            ModelInfo(id=str(v["id"]), kind="chat", pool=pool, owned_by=tenant, created=created)
        )
        if v.get("status") == "promoted":
            alias = f"{tenant}/{v['base_model']}:ft"
            out.append(
                ModelInfo(id=alias, kind="chat", pool=pool, owned_by=tenant, created=created)
            )
    return out
