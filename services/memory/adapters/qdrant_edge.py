"""The embedded default: Qdrant's in-process engine (qdrant-edge-py, `EdgeShard`).

One shard directory per collection under the memory service's home. A shard belongs to
one process: run one memory replica on this backend (a Qdrant server for more).
Calls are serialised by a lock; filtered queries take well under a millisecond.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import qdrant_edge as q

from services.memory.vectors import (
    DENSE,
    SPARSE,
    TENANT_FIELD,
    CollectionSpec,
    Cond,
    Hit,
    SearchMode,
    Sparse,
    VectorPoint,
    hit_of,
    scroll_pages,
)

RRF_K = 60


def _condition(c: Cond) -> Any:
    if c.key == "id":
        values = c.value if isinstance(c.value, list) else [c.value]
        return q.HasIdCondition(set(values))
    if isinstance(c.value, list):
        match: Any = q.MatchAny(list(c.value))
    else:
        match = q.MatchValue(c.value)
    cond: Any = q.FieldCondition(c.key, match=match)
    if c.or_empty:
        return q.Filter(should=[cond, q.IsEmptyCondition(c.key)])
    return cond


def to_filter(must: Sequence[Cond]) -> q.Filter | None:
    return q.Filter(must=[_condition(c) for c in must]) if must else None


class EdgeBackend:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.root.mkdir(parents=True, exist_ok=True)
        self.shards: dict[str, q.EdgeShard] = {}
        self.lock = threading.RLock()

    def ensure(self, spec: CollectionSpec) -> None:
        with self.lock:
            if spec.name in self.shards:
                return
            path = self.root / spec.name
            sparse = (
                {SPARSE: q.EdgeSparseVectorParams(modifier=q.Modifier.Idf)} if spec.sparse else None
            )
            config = q.EdgeConfig(
                vectors={DENSE: q.EdgeVectorParams(size=spec.dim, distance=q.Distance.Cosine)},
                sparse_vectors=sparse,
            )
            if path.exists() and any(path.iterdir()):
                shard = q.EdgeShard.load(str(path), config)
            else:
                shard = q.EdgeShard.create(str(path), config)
                shard.update(
                    q.UpdateOperation.create_field_index(
                        TENANT_FIELD, q.KeywordIndexParams(is_tenant=True)
                    )
                )
                for name in ("key", *spec.keyword_fields):
                    shard.update(
                        q.UpdateOperation.create_field_index(name, q.PayloadSchemaType.Keyword)
                    )
            self.shards[spec.name] = shard

    def upsert(self, collection: str, points: Sequence[VectorPoint]) -> None:
        if not points:
            return
        edge_points = []
        for p in points:
            vector: dict[str, Any] = {DENSE: list(p.dense)}
            if p.sparse is not None:
                vector[SPARSE] = q.SparseVector(p.sparse.indices, p.sparse.values)
            edge_points.append(q.Point(p.id, vector, p.payload))
        with self.lock:
            self.shards[collection].update(q.UpdateOperation.upsert_points(edge_points))

    def search(
        self,
        collection: str,
        must: Sequence[Cond],
        limit: int,
        dense: list[float] | None = None,
        sparse: Sparse | None = None,
        mode: SearchMode = "dense",
        with_vectors: bool = False,
    ) -> list[Hit]:
        flt = to_filter(must)
        sparse_q = q.SparseVector(sparse.indices, sparse.values) if sparse is not None else None
        if mode == "hybrid" and dense is not None and sparse_q is not None:
            depth = max(limit * 4, 20)
            request = q.QueryRequest(
                limit=limit,
                prefetches=[
                    q.Prefetch(limit=depth, query=q.Query.Nearest(dense, using=DENSE), filter=flt),
                    q.Prefetch(
                        limit=depth, query=q.Query.Nearest(sparse_q, using=SPARSE), filter=flt
                    ),
                ],
                query=q.Fusion.Rrf(k=RRF_K),  # type: ignore[arg-type]  # a Fusion; the stub lacks it
                filter=flt,
                with_payload=True,
                with_vector=with_vectors,
            )
        elif mode == "sparse" and sparse_q is not None:
            request = q.QueryRequest(
                limit=limit,
                query=q.Query.Nearest(sparse_q, using=SPARSE),
                filter=flt,
                with_payload=True,
                with_vector=with_vectors,
            )
        else:
            if dense is None:
                raise ValueError("a dense query vector is required")
            request = q.QueryRequest(
                limit=limit,
                query=q.Query.Nearest(dense, using=DENSE),
                filter=flt,
                with_payload=True,
                with_vector=with_vectors,
            )
        with self.lock:
            points = self.shards[collection].query(request)
        return [hit_of(p, with_vectors) for p in points]

    def scroll(
        self, collection: str, must: Sequence[Cond], limit: int, with_vectors: bool = False
    ) -> list[Hit]:
        flt = to_filter(must)

        def page(offset: Any, n: int) -> tuple[Any, Any]:
            return shard.scroll(
                q.ScrollRequest(
                    offset=offset, limit=n, filter=flt, with_payload=True, with_vector=with_vectors
                )
            )

        with self.lock:
            shard = self.shards[collection]
            return scroll_pages(page, limit, with_vectors)

    def count(self, collection: str, must: Sequence[Cond]) -> int:
        with self.lock:
            return int(
                self.shards[collection].count(q.CountRequest(filter=to_filter(must), exact=True))
            )

    def delete(self, collection: str, must: Sequence[Cond]) -> None:
        flt = to_filter(must)
        if flt is None:
            raise ValueError("refusing an unfiltered delete")
        with self.lock:
            self.shards[collection].update(q.UpdateOperation.delete_points_by_filter(flt))

    def close(self) -> None:
        with self.lock:
            for shard in self.shards.values():
                shard.flush()
                shard.close()
            self.shards.clear()
