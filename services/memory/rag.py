"""RAG over tenant documents in OpenAI's shapes: files, vector stores, their files, search.

Ingestion: parse -> chunk (source, page, ACL and attributes in each chunk's payload) ->
near-duplicate chunks dropped -> MiniLM dense + BM25 sparse vectors -> one `rag_chunks`
collection for every tenant, reached only through `TenantScope`. Search is hybrid:
dense and BM25 searches, filtered by vector store, ACL principals and the caller's
attribute filters, fused by the re-ranking stage (`rerank.py`), then near-duplicate
hits are dropped.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from libs.context import RequestContext
from libs.db.models import StoredFile, VectorStore, VectorStoreFile
from libs.errors import EnclaveError
from libs.events import Citation
from libs.rbac import Credential, may_modify
from libs.training_file import TrainingFileError, parse_training_file
from services.memory import rerank
from services.memory.adapters.embedder import DIM, Embedder
from services.memory.adapters.parsers import parse
from services.memory.adapters.sql_rag import RagRepository
from services.memory.chunking import (
    CHUNK_WORDS,
    OVERLAP_WORDS,
    chunk_pages,
    drop_near_duplicates,
)
from services.memory.retrieval import (
    FilterError,
    acl_principals,
    citation,
    conditions,
    parse_acl,
)
from services.memory.vectors import (
    CollectionSpec,
    Cond,
    Hit,
    SearchMode,
    Sparse,
    TenantScope,
    TenantStores,
    VectorPoint,
)

CHUNKS = CollectionSpec(
    "rag_chunks", DIM, sparse=True, keyword_fields=("vector_store_id", "file_id")
)
MAX_RESULTS = 50
# Every purpose of /v1/files is stored here, `fine-tune` included (its JSONL validated at
# upload; the gateway hands the text to the trainer when a job is created).
FINE_TUNE = "fine-tune"
PURPOSES = ("assistants", "user_data", FINE_TUNE)


def _ts(dt: Any) -> int:
    return int(dt.timestamp()) if dt is not None else int(time.time())


def file_object(f: StoredFile) -> dict[str, Any]:
    return {
        "id": f.id,
        "object": "file",
        "bytes": f.bytes,
        "created_at": _ts(f.created_at),
        "filename": f.filename,
        "purpose": f.purpose,
        "status": "processed",
        "status_details": None,
        "expires_at": None,
    }


def member_object(m: VectorStoreFile) -> dict[str, Any]:
    error = {"code": "invalid_file", "message": m.last_error} if m.last_error else None
    return {
        "id": m.file_id,
        "object": "vector_store.file",
        "usage_bytes": m.usage_bytes,
        "created_at": _ts(m.created_at),
        "vector_store_id": m.vector_store_id,
        "status": m.status,
        "last_error": error,
        "chunking_strategy": {
            "type": "static",
            "static": {
                "max_chunk_size_tokens": CHUNK_WORDS * 4 // 3,
                "chunk_overlap_tokens": OVERLAP_WORDS * 4 // 3,
            },
        },
        "attributes": m.attributes or {},
    }


def _list(data: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "object": "list",
        "data": data,
        "first_id": data[0]["id"] if data else None,
        "last_id": data[-1]["id"] if data else None,
        "has_more": False,
    }


def not_found(what: str, ident: str) -> EnclaveError:
    return EnclaveError(404, f"No {what} found with id '{ident}'.", "not_found")


def fused_search(
    scope: TenantScope,
    collection: str,
    must: list[Cond],
    limit: int,
    dense: list[float],
    sparse: Sparse,
    reranker: rerank.Reranker,
    query: str = "",
) -> list[Hit]:
    """Dense and BM25 candidates (each list deeper than `limit`), ordered by `reranker`."""
    depth = max(limit * 4, 20)
    lists = [
        [
            (h.id, h.score, h.payload)
            for h in scope.search(collection, must, depth, dense, sparse, mode)
        ]
        for mode in ("dense", "sparse")
    ]
    ranked = reranker.rerank(query, rerank.merge(lists[0], lists[1]))[:limit]
    return [Hit(c.key, c.score, c.payload) for c in ranked]


def owner_or_admin(ctx: RequestContext, owner: str, kind: str, ident: str) -> None:
    """Deleting or replacing a file or vector store: its owner (the key or subject that
    created it) or an admin of the tenant (libs.rbac.may_modify)."""
    if not may_modify(Credential(ctx.actor, ctx.tenant, frozenset({ctx.role})), owner):
        raise EnclaveError(
            403,
            f"Only the owner of the {kind} `{ident}` or an admin may delete or replace it.",
            "not_owner",
        )


class Rag:
    def __init__(
        self,
        repo: RagRepository,
        stores: TenantStores,
        embedder: Embedder,
        reranker: rerank.Reranker | None = rerank.DEFAULT,
    ) -> None:
        self.repo = repo
        self.stores = stores
        self.embedder = embedder
        # None: Qdrant's own equal-weight RRF (one query instead of two).
        self.reranker = reranker

    # -- files --
    async def upload(self, ctx: RequestContext, filename: str, purpose: str, data: bytes) -> Any:
        if purpose not in PURPOSES:
            raise EnclaveError(
                400,
                "`purpose` must be `assistants`, `user_data` or `fine-tune`.",
                "invalid_value",
                "purpose",
            )
        if not data:
            raise EnclaveError(400, "The file is empty.", "invalid_value", "file")
        if purpose == FINE_TUNE:
            # Chat-format JSONL, checked line by line before it is stored.
            try:
                await asyncio.to_thread(parse_training_file, data)
            except TrainingFileError as exc:
                lines = "; ".join(str(e) for e in exc.errors)
                more = " (and more)" if exc.truncated else ""
                raise EnclaveError(
                    400,
                    f"Invalid fine-tuning file: {lines}{more}",
                    "invalid_file_format",
                    "file",
                ) from None
        row = await self.repo.add_file(
            ctx.tenant, ctx.actor, filename or "upload.txt", purpose, data
        )
        return file_object(row)

    async def file_get(self, ctx: RequestContext, file_id: str) -> Any:
        row = await self.repo.file(ctx.tenant, file_id)
        if row is None:
            raise not_found("file", file_id)
        return file_object(row)

    async def file_list(self, ctx: RequestContext, purpose: str | None = None) -> Any:
        files = await self.repo.files(ctx.tenant)
        return _list([file_object(f) for f in files if purpose is None or f.purpose == purpose])

    async def file_content(self, ctx: RequestContext, file_id: str) -> Any:
        row = await self.repo.file(ctx.tenant, file_id)
        if row is None:
            raise not_found("file", file_id)
        try:
            content = bytes(row.content).decode("utf-8")
        except UnicodeDecodeError:
            raise EnclaveError(
                400, f"The file '{file_id}' is not UTF-8 text.", "invalid_file_format", "file"
            ) from None
        return {"id": row.id, "object": "file.content", "purpose": row.purpose, "content": content}

    async def file_delete(self, ctx: RequestContext, file_id: str) -> Any:
        row = await self.repo.file(ctx.tenant, file_id)
        if row is None:
            raise not_found("file", file_id)
        owner_or_admin(ctx, row.owner, "file", file_id)
        await self.repo.delete_file(ctx.tenant, file_id)
        await self._vec(lambda s: s.delete(CHUNKS.name, [Cond("file_id", file_id)]), ctx.tenant)
        return {"id": file_id, "object": "file", "deleted": True}

    # -- vector stores --
    async def _store(self, ctx: RequestContext, ident: str) -> VectorStore:
        row = await self.repo.store(ctx.tenant, ident)
        if row is None:
            raise not_found("vector store", ident)
        return row

    async def _store_object(self, vs: VectorStore) -> dict[str, Any]:
        members = await self.repo.members(vs.tenant, vs.id)
        counts = {"in_progress": 0, "completed": 0, "failed": 0, "cancelled": 0}
        for m in members:
            counts[m.status] = counts.get(m.status, 0) + 1
        return {
            "id": vs.id,
            "object": "vector_store",
            "created_at": _ts(vs.created_at),
            "name": vs.name,
            "usage_bytes": sum(m.usage_bytes for m in members),
            "file_counts": {**counts, "total": len(members)},
            "status": "in_progress" if counts["in_progress"] else "completed",
            "expires_after": None,
            "expires_at": None,
            "last_active_at": _ts(vs.created_at),
            "metadata": vs.meta or {},
        }

    async def store_create(self, ctx: RequestContext, args: dict[str, Any]) -> Any:
        meta = args.get("metadata") or {}
        if not isinstance(meta, dict):
            raise EnclaveError(400, "`metadata` must be an object.", "invalid_value", "metadata")
        vs = await self.repo.add_store(ctx.tenant, str(args.get("name") or ""), meta, ctx.actor)
        for file_id in args.get("file_ids") or []:
            await self.member_add(ctx, vs.id, {"file_id": file_id})
        return await self._store_object(vs)

    async def store_get(self, ctx: RequestContext, store_id: str) -> Any:
        return await self._store_object(await self._store(ctx, store_id))

    async def store_list(self, ctx: RequestContext) -> Any:
        return _list([await self._store_object(vs) for vs in await self.repo.stores(ctx.tenant)])

    async def store_delete(self, ctx: RequestContext, store_id: str) -> Any:
        vs = await self._store(ctx, store_id)
        owner_or_admin(ctx, vs.owner, "vector store", vs.id)
        await self._vec(
            lambda s: s.delete(CHUNKS.name, [Cond("vector_store_id", vs.id)]), ctx.tenant
        )
        await self.repo.delete_store(ctx.tenant, vs.id)
        return {"id": vs.id, "object": "vector_store.deleted", "deleted": True}

    # -- files in vector stores --
    async def member_add(self, ctx: RequestContext, store_id: str, args: dict[str, Any]) -> Any:
        vs = await self._store(ctx, store_id)
        file_id = str(args.get("file_id") or "")
        stored = await self.repo.file(ctx.tenant, file_id)
        if stored is None:
            raise not_found("file", file_id)
        attributes = args.get("attributes") or {}
        if not isinstance(attributes, dict):
            raise EnclaveError(
                400, "`attributes` must be an object.", "invalid_value", "attributes"
            )
        member = await self.repo.add_member(ctx.tenant, vs.id, file_id, attributes)
        try:
            count = await self._ingest(ctx.tenant, vs.id, stored, attributes)
        except Exception as exc:  # a bad file (UnsupportedFormat too) fails, the store lives on
            member = await self.repo.set_status(member, "failed", 0, 0, str(exc)[:2000])
        else:
            member = await self.repo.set_status(member, "completed", count, stored.bytes, None)
        return member_object(member)

    async def _ingest(
        self, tenant: str, store_id: str, stored: StoredFile, attributes: dict[str, Any]
    ) -> int:
        pages = await asyncio.to_thread(parse, stored.filename, stored.content)
        chunks = chunk_pages(pages)
        keep = drop_near_duplicates([c.text for c in chunks])
        chunks = [chunks[i] for i in keep]
        if not chunks:
            raise ValueError("no text could be extracted from the file")
        dense = await asyncio.to_thread(self.embedder.dense, [c.text for c in chunks])
        acl = parse_acl(attributes.get("acl"))
        points = [
            VectorPoint(
                id=f"{store_id}:{stored.id}:{c.index}",
                dense=dense[i].tolist(),
                sparse=self.embedder.sparse_doc(c.text),
                payload={
                    "text": c.text,
                    "vector_store_id": store_id,
                    "file_id": stored.id,
                    "filename": stored.filename,
                    "source": stored.filename,
                    "page": c.page,
                    "chunk_index": c.index,
                    "acl": acl,
                    "attributes": attributes,
                },
            )
            for i, c in enumerate(chunks)
        ]
        scope = self.stores.scope(tenant)
        # Re-adding a file replaces its chunks.
        await asyncio.to_thread(
            scope.delete,
            CHUNKS.name,
            [Cond("vector_store_id", store_id), Cond("file_id", stored.id)],
        )
        await asyncio.to_thread(scope.upsert, CHUNKS.name, points)
        return len(points)

    async def member_get(self, ctx: RequestContext, store_id: str, file_id: str) -> Any:
        vs = await self._store(ctx, store_id)
        m = await self.repo.member(ctx.tenant, vs.id, file_id)
        if m is None:
            raise not_found("file", file_id)
        return member_object(m)

    async def member_list(self, ctx: RequestContext, store_id: str) -> Any:
        vs = await self._store(ctx, store_id)
        return _list([member_object(m) for m in await self.repo.members(ctx.tenant, vs.id)])

    async def member_delete(self, ctx: RequestContext, store_id: str, file_id: str) -> Any:
        vs = await self._store(ctx, store_id)
        owner_or_admin(ctx, vs.owner, "vector store", vs.id)
        if await self.repo.member(ctx.tenant, vs.id, file_id) is None:
            raise not_found("file", file_id)
        await self._vec(
            lambda s: s.delete(
                CHUNKS.name, [Cond("vector_store_id", vs.id), Cond("file_id", file_id)]
            ),
            ctx.tenant,
        )
        await self.repo.delete_member(ctx.tenant, vs.id, file_id)
        return {"id": file_id, "object": "vector_store.file.deleted", "deleted": True}

    # -- search --
    async def retrieve(
        self,
        ctx: RequestContext,
        store_ids: list[str],
        query: str,
        limit: int,
        filters: dict[str, Any] | None,
        user: str | None = None,
        mode: SearchMode = "hybrid",
    ) -> list[tuple[Citation, str, dict[str, Any]]]:
        try:
            must = conditions(filters)
        except FilterError as exc:
            raise EnclaveError(400, str(exc), "invalid_value", "filters") from None
        must.append(Cond("vector_store_id", store_ids))
        if ctx.role != "admin":
            must.append(Cond("acl", acl_principals(ctx.actor, ctx.role, user), or_empty=True))
        dense = (await asyncio.to_thread(self.embedder.dense, [query]))[0].tolist()
        sparse = self.embedder.sparse_query(query)
        scope = self.stores.scope(ctx.tenant)
        if mode == "hybrid" and self.reranker is not None:
            hits = await asyncio.to_thread(
                fused_search,
                scope,
                CHUNKS.name,
                must,
                limit * 3,
                dense,
                sparse,
                self.reranker,
                query,
            )
        else:
            hits = await asyncio.to_thread(
                scope.search, CHUNKS.name, must, limit * 3, dense, sparse, mode
            )
        keep = drop_near_duplicates([str(h.payload.get("text", "")) for h in hits])[:limit]
        out = []
        for rank, i in enumerate(keep):
            h = hits[i]
            out.append(
                (
                    citation(rank + 1, h.payload, h.score, h.id),
                    str(h.payload.get("text", "")),
                    h.payload,
                )
            )
        return out

    async def search(self, ctx: RequestContext, store_id: str, args: dict[str, Any]) -> Any:
        vs = await self._store(ctx, store_id)
        query = args.get("query")
        if isinstance(query, list):
            query = " ".join(str(q) for q in query)
        if not isinstance(query, str) or not query.strip():
            raise EnclaveError(400, "`query` must be a non-empty string.", "invalid_value", "query")
        limit = int(args.get("max_num_results") or 10)
        if not 1 <= limit <= MAX_RESULTS:
            raise EnclaveError(
                400,
                f"`max_num_results` must be between 1 and {MAX_RESULTS}.",
                "invalid_value",
                "max_num_results",
            )
        threshold = float((args.get("ranking_options") or {}).get("score_threshold") or 0.0)
        found = await self.retrieve(ctx, [vs.id], query, limit, args.get("filters"))
        data = [
            {
                "file_id": cit.file_id,
                "filename": cit.filename,
                "score": cit.score,
                "attributes": payload.get("attributes") or {},
                "content": [{"type": "text", "text": text}],
                # Extensions: which chunk, and where in the file.
                "chunk_id": cit.chunk_id,
                "page": cit.page,
            }
            for cit, text, payload in found
            if cit.score >= threshold
        ]
        return {
            "object": "vector_store.search_results.page",
            "search_query": [query],
            "data": data,
            "has_more": False,
            "next_page": None,
        }

    async def delete_tenant(self, tenant: str) -> None:
        await self._vec(lambda s: s.delete(CHUNKS.name, []), tenant)
        await self.repo.delete_tenant(tenant)

    async def _vec(self, fn: Any, tenant: str) -> None:
        await asyncio.to_thread(fn, self.stores.scope(tenant))
