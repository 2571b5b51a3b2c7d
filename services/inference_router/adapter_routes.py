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
from libs.events import RouteReply
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
