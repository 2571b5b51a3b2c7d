"""mem0 on our storage: typed memories per user, isolated per tenant by `TenantScope`.

mem0's `Memory` keeps its add/search/delete logic; its vector store is ours (the shared
`memories` collection seen through the tenant's scope, so no mem0 filter can reach
another tenant), its embedder is the in-process MiniLM (384 dims), and its history
SQLite is one file per tenant under the service's home. Extraction runs through our own
router with a short prompt (extraction.py), so mem0 stores facts with `infer=False`.
"""

from __future__ import annotations

import hashlib
import os
import threading
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from services.memory.adapters.embedder import DIM, Embedder
from services.memory.vectors import CollectionSpec, Cond, TenantScope, TenantStores, VectorPoint

MEMORIES = CollectionSpec("memories", DIM, keyword_fields=("user_id", "type"))
ENTITIES = CollectionSpec("memory_entities", DIM, keyword_fields=("user_id",))


def _prepare_env(home: Path) -> None:
    os.environ.setdefault("MEM0_DIR", str(home / "mem0"))
    os.environ["MEM0_TELEMETRY"] = "False"
    (home / "mem0").mkdir(parents=True, exist_ok=True)


class _Out(BaseModel):
    id: str
    score: float | None = None
    payload: dict[str, Any] | None = None


def _conds(filters: dict[str, Any] | None) -> list[Cond]:
    out = []
    for key, value in (filters or {}).items():
        if value is None or key.startswith("$"):
            continue
        if isinstance(value, dict):
            if "in" in value:
                out.append(Cond(key, list(value["in"])))
                continue
            if "eq" in value:
                value = value["eq"]
            else:
                raise ValueError(f"unsupported memory filter on `{key}`")
        out.append(Cond(key, value))
    return out


def make_store_class() -> type:
    from mem0.vector_stores.base import VectorStoreBase

    class ScopedStore(VectorStoreBase):
        """mem0's vector store interface over one tenant's scope of one collection."""

        def __init__(self, scope: TenantScope, collection: str) -> None:
            self.scope = scope
            self.collection = collection

        def create_col(self, name: str, vector_size: int, distance: str) -> None:
            return None

        def insert(self, vectors: Any, payloads: Any = None, ids: Any = None) -> None:
            payloads = payloads or [{} for _ in vectors]
            self.scope.upsert(
                self.collection,
                [
                    VectorPoint(str(i), list(v), dict(p))
                    for i, v, p in zip(ids, vectors, payloads, strict=True)
                ],
            )

        def search(
            self, query: Any, vectors: Any, top_k: int = 5, filters: Any = None
        ) -> list[_Out]:
            hits = self.scope.search(self.collection, _conds(filters), top_k, dense=list(vectors))
            return [_Out(id=h.id, score=h.score, payload=h.payload) for h in hits]

        def delete(self, vector_id: Any) -> None:
            self.scope.delete(self.collection, [Cond("key", str(vector_id))])

        def update(self, vector_id: Any, vector: Any = None, payload: Any = None) -> None:
            found = self.scope.scroll(
                self.collection, [Cond("key", str(vector_id))], 1, with_vectors=True
            )
            if not found:
                return
            old = found[0]
            self.scope.upsert(
                self.collection,
                [
                    VectorPoint(
                        str(vector_id),
                        list(vector) if vector is not None else list(old.dense or []),
                        dict(payload) if payload is not None else old.payload,
                    )
                ],
            )

        def get(self, vector_id: Any) -> _Out | None:
            found = self.scope.scroll(self.collection, [Cond("key", str(vector_id))], 1)
            return _Out(id=found[0].id, payload=found[0].payload) if found else None

        def list_cols(self) -> list[str]:
            return [self.collection]

        def delete_col(self) -> None:
            self.scope.delete(self.collection, [])

        def col_info(self) -> dict[str, Any]:
            return {"name": self.collection}

        def list(self, filters: Any = None, top_k: Any = None) -> list[list[_Out]]:
            hits = self.scope.scroll(self.collection, _conds(filters), int(top_k or 100))
            return [[_Out(id=h.id, payload=h.payload) for h in hits]]

        def reset(self) -> None:
            self.delete_col()

    return ScopedStore


class _Mem0Embedder:
    """mem0's embedder interface on our MiniLM."""

    def __init__(self, embedder: Embedder) -> None:
        self.embedder = embedder

    def embed(self, text: Any, memory_action: Any = None) -> list[float]:
        return list(self.embedder.dense([str(text)])[0].tolist())

    def embed_batch(self, texts: list[str], memory_action: Any = None) -> list[list[float]]:
        return [list(v) for v in self.embedder.dense([str(t) for t in texts]).tolist()]


class Memories:
    """One mem0 Memory per tenant, built on the tenant's scope."""

    def __init__(self, stores: TenantStores, embedder: Embedder, home: Path) -> None:
        _prepare_env(home)
        import mem0.utils.spacy_models as spacy_models

        # mem0 would load (or download) spaCy's en_core_web_sm by name for lemmas and
        # entities; BM25 and filtering happen in Qdrant here, so keep spaCy out.
        spacy_models._load_failed_full = True
        spacy_models._load_failed_lemma = True
        self.stores = stores
        self.embedder = _Mem0Embedder(embedder)
        self.home = home / "mem0"
        self.store_class = make_store_class()
        self.by_tenant: dict[str, Any] = {}
        self.lock = threading.Lock()

    def history_path(self, tenant: str) -> Path:
        digest = hashlib.sha256(tenant.encode()).hexdigest()[:24]
        return self.home / f"history-{digest}.db"

    def memory(self, tenant: str) -> Any:
        with self.lock:
            if tenant not in self.by_tenant:
                self.by_tenant[tenant] = self._build(tenant)
            return self.by_tenant[tenant]

    def _build(self, tenant: str) -> Any:
        from mem0 import Memory
        from mem0.configs.base import MemoryConfig
        from mem0.memory.storage import SQLiteManager

        scope = self.stores.scope(tenant)
        memory = Memory.__new__(Memory)
        # Memory.__init__ would open its own Qdrant client and LLM; set what it would.
        memory.config = MemoryConfig(
            vector_store={"provider": "qdrant", "config": {"embedding_model_dims": DIM}},
            history_db_path=str(self.history_path(tenant)),
        )
        memory.embedding_model = self.embedder
        memory.vector_store = self.store_class(scope, MEMORIES.name)
        memory._entity_store = self.store_class(scope, ENTITIES.name)
        memory.llm = None
        memory.db = SQLiteManager(str(self.history_path(tenant)))
        memory.collection_name = MEMORIES.name
        memory.api_version = memory.config.version
        memory.custom_instructions = None
        memory.reranker = None
        return memory

    def add(self, tenant: str, user: str, kind: str, text: str, source: str) -> list[str]:
        result = self.memory(tenant).add(
            [{"role": "user", "content": text}],
            user_id=user,
            metadata={"type": kind, "source": source},
            infer=False,
        )
        return [r["id"] for r in result.get("results", [])]

    def search(self, tenant: str, user: str, query: str, limit: int) -> list[dict[str, Any]]:
        if not query.strip():
            return []  # nothing asked (a turn with no text): mem0 refuses an empty query
        found = self.memory(tenant).search(query, filters={"user_id": user}, top_k=limit)
        return list(found.get("results", []))

    def all(self, tenant: str, user: str) -> list[dict[str, Any]]:
        found = self.memory(tenant).get_all(filters={"user_id": user}, top_k=1000)
        return list(found.get("results", []))

    def delete_user(self, tenant: str, user: str) -> int:
        memory = self.memory(tenant)
        ids = [m["id"] for m in self.all(tenant, user)]
        if ids:
            memory.delete_all(user_id=user)
        # mem0 keeps each deleted text in its history table: purge it too.
        self._purge_history(memory, ids)
        return len(ids)

    def delete_memory(self, tenant: str, user: str, memory_id: str) -> bool:
        memory = self.memory(tenant)
        found = memory.vector_store.get(memory_id)
        if found is None or (found.payload or {}).get("user_id") != user:
            return False
        memory.delete(memory_id)
        self._purge_history(memory, [memory_id])
        return True

    @staticmethod
    def _purge_history(memory: Any, ids: list[str]) -> None:
        if not ids:
            return
        with memory.db._lock:
            marks = ",".join("?" * len(ids))
            memory.db.connection.execute(f"DELETE FROM history WHERE memory_id IN ({marks})", ids)
            memory.db.connection.commit()

    def delete_tenant(self, tenant: str) -> None:
        scope = self.stores.scope(tenant)
        scope.delete(MEMORIES.name, [])
        scope.delete(ENTITIES.name, [])
        with self.lock:
            memory = self.by_tenant.pop(tenant, None)
        if memory is not None:
            memory.db.close()
        path = self.history_path(tenant)
        for p in (path, path.with_name(path.name + "-journal")):
            p.unlink(missing_ok=True)
