"""Which adapter a request gets, keyed by digest, and whether a verified bundle may serve it.
No I/O.

A request's `adapter` (filled in by the router) is either

- a digest `sha256:<64 hex>`: exactly that immutable version (`tenant/base:ft-vN` resolved
  by the trainer's registry), or
- the caller's alias `tenant/base:ft`: whatever version this worker serves for it now
  (hot_swap.py moves it on `models.changed`), optionally `@<digest>`: the version the
  registry promoted, served first by a worker that has not been told of the alias yet.

Everything a worker holds is keyed by (tenant, digest): a name, a path or `hash(name)`
never identifies weights, so a reload under the same name can never hit a stale entry
and two tenants' adapters of one public name never meet. A bundle serves a key only if
it verified (libs.adapter_bundle.verify) and its metadata names the same tenant, digest
and base model; anything else is refused, never answered by the base model instead.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from libs.adapter_bundle import is_digest
from libs.errors import ErrorInfo

_ALIAS = re.compile(r"^(?P<tenant>[^/:\s]+)/(?P<base>[^/:\s]+):ft$")


class AdapterRefused(Exception):
    """A request's adapter this worker will not serve, and why (a 4xx for the caller)."""

    def __init__(self, message: str, status: int = 404, code: str = "adapter_unavailable"):
        super().__init__(message)
        self.message = message
        self.status = status
        self.code = code

    def error(self) -> ErrorInfo:
        """The OpenAI-shaped error the caller gets (param `model`: the adapter is the model)."""
        return ErrorInfo(status=self.status, message=self.message, code=self.code, param="model")


@dataclass(frozen=True, order=True)
class AdapterKey:
    tenant: str
    digest: str

    @property
    def lora_name(self) -> str:
        """The adapter's name inside an engine: from the digest alone (a module-safe name)."""
        return lora_name(self.digest)


def lora_name(digest: str) -> str:
    if not is_digest(digest):
        raise ValueError(f"{digest!r} is not an adapter digest")
    return "lora_" + digest.removeprefix("sha256:")


@dataclass(frozen=True)
class Wanted:
    """What a request asks for: a pinned version (digest) or the tenant's served alias."""

    tenant: str
    digest: str | None = None
    alias: str | None = None


def wanted(adapter: str | None, tenant: str, base_model: str) -> Wanted | None:
    """The adapter a request asks for (None: the base model alone); refuses what is not one."""
    if not adapter:
        return None
    if is_digest(adapter):
        return Wanted(tenant=tenant, digest=adapter)
    alias, _, hint = adapter.partition("@")  # `tenant/base:ft@sha256:...` (see alias_route)
    if hint and not is_digest(hint):
        raise AdapterRefused(
            f"adapter {adapter!r}: {hint!r} is not a digest", status=400, code="invalid_adapter"
        )
    m = _ALIAS.match(alias)
    if m is None:
        raise AdapterRefused(
            f"adapter {adapter!r} is neither a digest (sha256:...) nor an alias tenant/base:ft;"
            " workers serve adapters by digest only",
            status=400,
            code="invalid_adapter",
        )
    if m.group("tenant") != tenant:
        raise AdapterRefused(f"the model {adapter!r} does not exist")
    if m.group("base") != base_model:
        raise AdapterRefused(
            f"adapter {adapter!r} is for base model {m.group('base')!r}; this worker serves"
            f" {base_model!r}",
            status=400,
            code="invalid_adapter",
        )
    return Wanted(tenant=tenant, alias=alias, digest=hint or None)


def alias_route(alias: str, digest: str) -> str:
    """What the router puts in a request for `tenant/base:ft`: the alias (the worker serves
    its current version, hot swapped) with the registry's promoted digest, which a worker
    that has not heard of the alias yet (just started) loads as its first version."""
    return f"{alias}@{digest}"


def bundle_problem(key: AdapterKey, base_model: str, metadata: dict[str, Any]) -> str | None:
    """None when a verified bundle's metadata fits the key and this worker's base model."""
    if metadata.get("digest") != key.digest:
        return f"the bundle holds adapter {metadata.get('digest')!r}, not {key.digest}"
    if metadata.get("tenant") != key.tenant:
        return f"adapter {key.digest} belongs to another tenant"
    if metadata.get("base_model") != base_model:
        return (
            f"adapter {key.digest} was trained on {metadata.get('base_model')!r},"
            f" this worker serves {base_model!r}"
        )
    return None
