"""Tenant isolation at the storage layer, on both backends: crafted filters and ids."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from qdrant_client import QdrantClient

from services.memory.adapters.qdrant_edge import EdgeBackend
from services.memory.adapters.qdrant_server import ServerBackend
from services.memory.vectors import (
    CollectionSpec,
    Cond,
    Sparse,
    TenantStores,
    VectorBackend,
    VectorPoint,
    point_id,
)

SPEC = CollectionSpec("chunks", 4, sparse=True, keyword_fields=("file_id",))


@pytest.fixture(params=["edge", "server"])
def stores(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[TenantStores]:
    backend: VectorBackend
    if request.param == "edge":
        backend = EdgeBackend(tmp_path / "q")
    else:
        # qdrant-client's local mode runs the production adapter's code without a server.
        backend = ServerBackend(client=QdrantClient(":memory:"))
    s = TenantStores(backend, [SPEC])
    a, b = s.scope("acme"), s.scope("globex")
    sp = Sparse([1, 2], [1.0, 1.0])
    a.upsert(
        "chunks", [VectorPoint("doc1", [1, 0, 0, 0], {"text": "acme secret", "file_id": "f1"}, sp)]
    )
    b.upsert(
        "chunks",
        [VectorPoint("doc1", [1, 0, 0, 0], {"text": "globex secret", "file_id": "f1"}, sp)],
    )
    b.upsert(
        "chunks", [VectorPoint("doc2", [0, 1, 0, 0], {"text": "globex other", "file_id": "f2"}, sp)]
    )
    yield s
    s.close()


def texts(hits: list) -> set[str]:
    return {h.payload["text"] for h in hits}


def test_same_key_in_two_tenants_are_two_points(stores: TenantStores) -> None:
    a = stores.scope("acme")
    assert texts(a.search("chunks", [], 10, dense=[1, 0, 0, 0])) == {"acme secret"}
    assert a.count("chunks") == 1 and stores.scope("globex").count("chunks") == 2


def test_a_crafted_tenant_filter_is_ignored(stores: TenantStores) -> None:
    a = stores.scope("acme")
    for must in (
        [Cond("tenant", "globex")],
        [Cond("tenant", ["globex", "acme"])],
        [Cond("tenant", "globex", or_empty=True)],
    ):
        assert texts(a.search("chunks", must, 10, dense=[1, 0, 0, 0])) == {"acme secret"}
        assert texts(a.scroll("chunks", must)) == {"acme secret"}


def test_another_tenants_point_id_reaches_nothing(stores: TenantStores) -> None:
    a = stores.scope("acme")
    raw = point_id("globex", "doc2")  # the real point id of globex's doc2
    for ident in (raw, "doc2"):
        assert a.search("chunks", [Cond("id", ident)], 10, dense=[0, 1, 0, 0]) == []
        assert a.get("chunks", [ident]) == []
        a.delete("chunks", [Cond("id", ident)])
    a.delete("chunks", [Cond("file_id", "f2")])
    assert stores.scope("globex").count("chunks") == 2


def test_an_upsert_with_another_tenants_key_does_not_overwrite(stores: TenantStores) -> None:
    a = stores.scope("acme")
    a.upsert("chunks", [VectorPoint("doc2", [0, 1, 0, 0], {"text": "hijack", "tenant": "globex"})])
    b = stores.scope("globex")
    assert texts(b.scroll("chunks")) == {"globex secret", "globex other"}
    assert "hijack" in texts(a.scroll("chunks"))


def test_delete_all_of_a_tenant_keeps_the_others(stores: TenantStores) -> None:
    stores.scope("acme").delete("chunks", [])
    assert stores.scope("acme").count("chunks") == 0
    assert stores.scope("globex").count("chunks") == 2


def test_hybrid_search_runs_on_both_backends(stores: TenantStores) -> None:
    b = stores.scope("globex")
    hits = b.search("chunks", [], 5, dense=[0, 1, 0, 0], sparse=Sparse([2], [1.0]), mode="hybrid")
    assert hits and hits[0].payload["text"] == "globex other"
    assert texts(hits) <= {"globex secret", "globex other"}
