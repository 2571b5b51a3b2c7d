"""Production backend: a Qdrant server (or cluster) through qdrant-client.

Same collections and payload indexes as the embedded default: the tenant field indexed
with is_tenant, BM25 sparse vectors with the IDF modifier. `QdrantClient(":memory:")`
(qdrant-client's local mode) runs the same code in tests where no server exists.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from qdrant_client import QdrantClient, models

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


def _condition(c: Cond) -> Any:
    if c.key == "id":
        values = c.value if isinstance(c.value, list) else [c.value]
        return models.HasIdCondition(has_id=list(values))
    match: Any = (
        models.MatchAny(any=list(c.value))
        if isinstance(c.value, list)
        else models.MatchValue(value=c.value)
    )
    cond: Any = models.FieldCondition(key=c.key, match=match)
    if c.or_empty:
        empty = models.IsEmptyCondition(is_empty=models.PayloadField(key=c.key))
        return models.Filter(should=[cond, empty])
    return cond


def to_filter(must: Sequence[Cond]) -> models.Filter | None:
    return models.Filter(must=[_condition(c) for c in must]) if must else None


class ServerBackend:
    def __init__(self, url: str = "", client: QdrantClient | None = None) -> None:
        self.client = client or QdrantClient(url=url)

    def ensure(self, spec: CollectionSpec) -> None:
        if self.client.collection_exists(spec.name):
            return
        self.client.create_collection(
            spec.name,
            vectors_config={
                DENSE: models.VectorParams(size=spec.dim, distance=models.Distance.COSINE)
            },
            sparse_vectors_config=(
                {SPARSE: models.SparseVectorParams(modifier=models.Modifier.IDF)}
                if spec.sparse
                else None
            ),
        )
        self.client.create_payload_index(
            spec.name,
            TENANT_FIELD,
            models.KeywordIndexParams(type=models.KeywordIndexType.KEYWORD, is_tenant=True),
        )
        for name in ("key", *spec.keyword_fields):
            self.client.create_payload_index(spec.name, name, models.PayloadSchemaType.KEYWORD)

    def upsert(self, collection: str, points: Sequence[VectorPoint]) -> None:
        if not points:
            return
        structs = []
        for p in points:
            vector: dict[str, Any] = {DENSE: list(p.dense)}
            if p.sparse is not None:
                vector[SPARSE] = models.SparseVector(
                    indices=p.sparse.indices, values=p.sparse.values
                )
            structs.append(models.PointStruct(id=p.id, vector=vector, payload=p.payload))
        self.client.upsert(collection, structs, wait=True)

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
        sparse_q = (
            models.SparseVector(indices=sparse.indices, values=sparse.values)
            if sparse is not None
            else None
        )
        if mode == "hybrid" and dense is not None and sparse_q is not None:
            depth = max(limit * 4, 20)
            res = self.client.query_points(
                collection,
                prefetch=[
                    models.Prefetch(query=dense, using=DENSE, limit=depth, filter=flt),
                    models.Prefetch(query=sparse_q, using=SPARSE, limit=depth, filter=flt),
                ],
                query=models.FusionQuery(fusion=models.Fusion.RRF),
                query_filter=flt,
                limit=limit,
                with_payload=True,
                with_vectors=with_vectors,
            )
        elif mode == "sparse" and sparse_q is not None:
            res = self.client.query_points(
                collection,
                query=sparse_q,
                using=SPARSE,
                query_filter=flt,
                limit=limit,
                with_payload=True,
                with_vectors=with_vectors,
            )
        else:
            if dense is None:
                raise ValueError("a dense query vector is required")
            res = self.client.query_points(
                collection,
                query=dense,
                using=DENSE,
                query_filter=flt,
                limit=limit,
                with_payload=True,
                with_vectors=with_vectors,
            )
        return [hit_of(p, with_vectors) for p in res.points]

    def scroll(
        self, collection: str, must: Sequence[Cond], limit: int, with_vectors: bool = False
    ) -> list[Hit]:
        flt = to_filter(must)

        def page(offset: Any, n: int) -> tuple[Any, Any]:
            return self.client.scroll(
                collection,
                scroll_filter=flt,
                limit=n,
                offset=offset,
                with_payload=True,
                with_vectors=with_vectors,
            )

        return scroll_pages(page, limit, with_vectors)

    def count(self, collection: str, must: Sequence[Cond]) -> int:
        return int(self.client.count(collection, count_filter=to_filter(must), exact=True).count)

    def delete(self, collection: str, must: Sequence[Cond]) -> None:
        flt = to_filter(must)
        if flt is None:
            raise ValueError("refusing an unfiltered delete")
        self.client.delete(collection, points_selector=models.FilterSelector(filter=flt), wait=True)

    def close(self) -> None:
        self.client.close()
