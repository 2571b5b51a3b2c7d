"""The vector store interface and the one place where tenant isolation is enforced.

Qdrant's multitenancy guidance: one collection per kind of data (RAG chunks, memories),
a `tenant` payload field indexed with is_tenant, and a tenant filter on every read, write
and delete. `TenantScope` is that one place: callers get a scope bound to the tenant of
the request's credential and cannot name another tenant, drop the filter, or address
another tenant's point by id (ids are derived from the tenant, and every id operation is
also filtered by tenant). Backends (`adapters/qdrant_edge.py` in process,
`adapters/qdrant_server.py` for a Qdrant server) know nothing of tenants.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

TENANT_FIELD = "tenant"
DENSE = "dense"
SPARSE = "bm25"
SearchMode = Literal["dense", "sparse", "hybrid"]
_ID_NAMESPACE = uuid.UUID("6f1c55e2-5f0b-4b8e-9a55-6c1d0e7a3c11")


@dataclass(frozen=True)
class Sparse:
    indices: list[int]
    values: list[float]


@dataclass(frozen=True)
class Cond:
    """A `must` condition: `value` a scalar (equals) or a list (any of); key "id" = point ids.

    `or_empty`: also match points where the field is absent or empty (public ACLs).
    """

    key: str
    value: Any
    or_empty: bool = False


@dataclass
class VectorPoint:
    id: str
    dense: list[float]
    payload: dict[str, Any]
    sparse: Sparse | None = None


@dataclass
class Hit:
    id: str
    score: float
    payload: dict[str, Any] = field(default_factory=dict)
    dense: list[float] | None = None


def hit_of(point: Any, with_vectors: bool) -> Hit:
    """A Hit from a scored or scrolled Qdrant point, whichever client returned it."""
    dense = None
    if with_vectors and point.vector is not None:
        vec = point.vector
        dense = list(vec.get(DENSE, [])) if isinstance(vec, dict) else list(vec)
    return Hit(
        id=str(point.id),
        score=float(getattr(point, "score", 0.0) or 0.0),
        payload=dict(point.payload or {}),
        dense=dense,
    )


SCROLL_PAGE = 256


def scroll_pages(
    fetch: Callable[[Any, int], tuple[Sequence[Any], Any]], limit: int, with_vectors: bool
) -> list[Hit]:
    """Up to `limit` hits, page by page: `fetch(offset, n)` returns a page of a backend's
    records and the next offset (None at the end)."""
    out: list[Hit] = []
    offset = None
    while len(out) < limit:
        records, offset = fetch(offset, min(SCROLL_PAGE, limit - len(out)))
        out.extend(hit_of(r, with_vectors) for r in records)
        if offset is None or not records:
            break
    return out


@dataclass(frozen=True)
class CollectionSpec:
    name: str
    dim: int
    sparse: bool = False
    # Payload fields to index (keyword), besides the tenant field.
    keyword_fields: tuple[str, ...] = ()


class VectorBackend(Protocol):
    """What a Qdrant (in process or server) does for us; no notion of tenants."""

    def ensure(self, spec: CollectionSpec) -> None: ...

    def upsert(self, collection: str, points: Sequence[VectorPoint]) -> None: ...

    def search(
        self,
        collection: str,
        must: Sequence[Cond],
        limit: int,
        dense: list[float] | None = None,
        sparse: Sparse | None = None,
        mode: SearchMode = "dense",
        with_vectors: bool = False,
    ) -> list[Hit]: ...

    def scroll(
        self, collection: str, must: Sequence[Cond], limit: int, with_vectors: bool = False
    ) -> list[Hit]: ...

    def count(self, collection: str, must: Sequence[Cond]) -> int: ...

    def delete(self, collection: str, must: Sequence[Cond]) -> None: ...

    def close(self) -> None: ...


def point_id(tenant: str, key: str) -> str:
    """A point id that only this tenant can produce for this key."""
    return str(uuid.uuid5(_ID_NAMESPACE, f"{tenant}\x00{key}"))


class TenantScope:
    """A backend seen through one tenant: every operation carries the tenant filter."""

    def __init__(self, backend: VectorBackend, tenant: str) -> None:
        if not tenant:
            raise ValueError("a tenant is required")
        self.backend = backend
        self.tenant = tenant

    def _must(self, must: Sequence[Cond]) -> list[Cond]:
        # The caller's conditions may not name the tenant field: ours is appended last,
        # and a caller's own `tenant` condition would be a way to probe other tenants.
        conds = [c for c in must if c.key != TENANT_FIELD]
        conds.append(Cond(TENANT_FIELD, self.tenant))
        return conds

    def point_id(self, key: str) -> str:
        return point_id(self.tenant, key)

    def upsert(self, collection: str, points: Sequence[VectorPoint]) -> None:
        scoped = []
        for p in points:
            # The caller's id is a key, never a raw point id of another tenant.
            payload = {**p.payload, TENANT_FIELD: self.tenant, "key": p.id}
            scoped.append(VectorPoint(self.point_id(p.id), p.dense, payload, p.sparse))
        self.backend.upsert(collection, scoped)

    def search(
        self,
        collection: str,
        must: Sequence[Cond] = (),
        limit: int = 10,
        dense: list[float] | None = None,
        sparse: Sparse | None = None,
        mode: SearchMode = "dense",
        with_vectors: bool = False,
    ) -> list[Hit]:
        return _keyed(
            self.backend.search(
                collection, self._must(self._ids(must)), limit, dense, sparse, mode, with_vectors
            )
        )

    def scroll(
        self,
        collection: str,
        must: Sequence[Cond] = (),
        limit: int = 1000,
        with_vectors: bool = False,
    ) -> list[Hit]:
        return _keyed(
            self.backend.scroll(collection, self._must(self._ids(must)), limit, with_vectors)
        )

    def count(self, collection: str, must: Sequence[Cond] = ()) -> int:
        return self.backend.count(collection, self._must(self._ids(must)))

    def delete(self, collection: str, must: Sequence[Cond] = ()) -> None:
        self.backend.delete(collection, self._must(self._ids(must)))

    def get(self, collection: str, keys: Sequence[str]) -> list[Hit]:
        return self.scroll(collection, [Cond("key", list(keys))], limit=max(1, len(keys)))

    def _ids(self, must: Sequence[Cond]) -> list[Cond]:
        # Ids given by callers are keys: map them into this tenant's id space.
        out = []
        for c in must:
            if c.key == "id":
                values = c.value if isinstance(c.value, list) else [c.value]
                out.append(Cond("id", [self.point_id(str(v)) for v in values]))
            else:
                out.append(c)
        return out


def _keyed(hits: list[Hit]) -> list[Hit]:
    """Callers see their own keys, never the derived point ids."""
    for h in hits:
        h.id = str(h.payload.get("key", h.id))
    return hits


class TenantStores:
    """Hands out tenant scopes over one backend; the only way services reach vectors."""

    def __init__(self, backend: VectorBackend, specs: Sequence[CollectionSpec]) -> None:
        self.backend = backend
        for spec in specs:
            backend.ensure(spec)

    def scope(self, tenant: str) -> TenantScope:
        return TenantScope(self.backend, tenant)

    def close(self) -> None:
        self.backend.close()
