"""Files, vector stores and their files in SQL; every query is scoped by tenant."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import delete, select
from sqlalchemy.ext.asyncio import AsyncEngine

from libs.context import new_request_id
from libs.db.engine import sessions
from libs.db.models import StoredFile, VectorStore, VectorStoreFile


class RagRepository:
    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        self.session = sessions(engine)

    # -- files --
    async def add_file(
        self, tenant: str, owner: str, filename: str, purpose: str, data: bytes
    ) -> StoredFile:
        row = StoredFile(
            id=new_request_id("file"),
            tenant=tenant,
            owner=owner,
            filename=filename,
            purpose=purpose,
            bytes=len(data),
            content=data,
        )
        async with self.session() as s, s.begin():
            s.add(row)
        return row

    async def file(self, tenant: str, file_id: str) -> StoredFile | None:
        async with self.session() as s:
            return (
                await s.execute(
                    select(StoredFile).where(StoredFile.tenant == tenant, StoredFile.id == file_id)
                )
            ).scalar_one_or_none()

    async def files(self, tenant: str) -> Sequence[StoredFile]:
        async with self.session() as s:
            q = (
                select(StoredFile)
                .where(StoredFile.tenant == tenant)
                .order_by(StoredFile.created_at.desc())
            )
            return (await s.execute(q)).scalars().all()

    async def delete_file(self, tenant: str, file_id: str) -> None:
        """Delete the file and its memberships."""
        async with self.session() as s, s.begin():
            await s.execute(
                delete(VectorStoreFile).where(
                    VectorStoreFile.tenant == tenant, VectorStoreFile.file_id == file_id
                )
            )
            await s.execute(
                delete(StoredFile).where(StoredFile.tenant == tenant, StoredFile.id == file_id)
            )

    # -- vector stores --
    async def add_store(
        self, tenant: str, name: str, meta: dict[str, Any], owner: str = ""
    ) -> VectorStore:
        row = VectorStore(id=new_request_id("vs"), tenant=tenant, name=name, meta=meta, owner=owner)
        async with self.session() as s, s.begin():
            s.add(row)
        return row

    async def store(self, tenant: str, id_or_name: str) -> VectorStore | None:
        async with self.session() as s:
            row = (
                await s.execute(
                    select(VectorStore).where(
                        VectorStore.tenant == tenant, VectorStore.id == id_or_name
                    )
                )
            ).scalar_one_or_none()
            if row is None:
                row = (
                    (
                        await s.execute(
                            select(VectorStore)
                            .where(VectorStore.tenant == tenant, VectorStore.name == id_or_name)
                            .order_by(VectorStore.created_at.desc())
                        )
                    )
                    .scalars()
                    .first()
                )
            return row

    async def stores(self, tenant: str) -> Sequence[VectorStore]:
        async with self.session() as s:
            q = (
                select(VectorStore)
                .where(VectorStore.tenant == tenant)
                .order_by(VectorStore.created_at.desc())
            )
            return (await s.execute(q)).scalars().all()

    async def delete_store(self, tenant: str, store_id: str) -> None:
        async with self.session() as s, s.begin():
            await s.execute(
                delete(VectorStoreFile).where(
                    VectorStoreFile.tenant == tenant, VectorStoreFile.vector_store_id == store_id
                )
            )
            await s.execute(
                delete(VectorStore).where(VectorStore.tenant == tenant, VectorStore.id == store_id)
            )

    # -- files in vector stores --
    async def add_member(
        self, tenant: str, store_id: str, file_id: str, attributes: dict[str, Any]
    ) -> VectorStoreFile:
        row = VectorStoreFile(
            tenant=tenant,
            vector_store_id=store_id,
            file_id=file_id,
            status="in_progress",
            attributes=attributes,
        )
        async with self.session() as s, s.begin():
            old = (
                await s.execute(
                    select(VectorStoreFile).where(
                        VectorStoreFile.tenant == tenant,
                        VectorStoreFile.vector_store_id == store_id,
                        VectorStoreFile.file_id == file_id,
                    )
                )
            ).scalar_one_or_none()
            if old is not None:
                await s.delete(old)
            s.add(row)
        return row

    async def set_status(
        self, row: VectorStoreFile, status: str, chunks: int, usage: int, error: str | None
    ) -> VectorStoreFile:
        async with self.session() as s, s.begin():
            live = await s.get(VectorStoreFile, row.id)
            if live is not None:
                live.status, live.chunks, live.usage_bytes, live.last_error = (
                    status,
                    chunks,
                    usage,
                    error,
                )
                row = live
        return row

    async def member(self, tenant: str, store_id: str, file_id: str) -> VectorStoreFile | None:
        async with self.session() as s:
            return (
                await s.execute(
                    select(VectorStoreFile).where(
                        VectorStoreFile.tenant == tenant,
                        VectorStoreFile.vector_store_id == store_id,
                        VectorStoreFile.file_id == file_id,
                    )
                )
            ).scalar_one_or_none()

    async def members(self, tenant: str, store_id: str) -> Sequence[VectorStoreFile]:
        async with self.session() as s:
            q = (
                select(VectorStoreFile)
                .where(
                    VectorStoreFile.tenant == tenant, VectorStoreFile.vector_store_id == store_id
                )
                .order_by(VectorStoreFile.created_at.desc())
            )
            return (await s.execute(q)).scalars().all()

    async def delete_member(self, tenant: str, store_id: str, file_id: str) -> None:
        async with self.session() as s, s.begin():
            await s.execute(
                delete(VectorStoreFile).where(
                    VectorStoreFile.tenant == tenant,
                    VectorStoreFile.vector_store_id == store_id,
                    VectorStoreFile.file_id == file_id,
                )
            )

    async def delete_tenant(self, tenant: str) -> None:
        async with self.session() as s, s.begin():
            for table in (VectorStoreFile, VectorStore, StoredFile):
                await s.execute(delete(table).where(table.tenant == tenant))
