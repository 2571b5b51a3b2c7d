"""The audit chain in SQL (PostgreSQL with asyncpg, or SQLite): append, read, verify.

Per-tenant order with several replicas: an append runs in one transaction that first
takes a per-tenant lock (PostgreSQL: `pg_advisory_xact_lock` on the tenant's name;
SQLite: its single writer), then reads the head and inserts the batch after it. The
primary key (tenant, seq) and the unique event id back this up: a replica that lost a
race gets an integrity error and retries from the new head, and an event id that is
already in the chain is skipped (idempotent on redelivery).
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Table, func, insert, select, text
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from libs.db.models import AuditCheckpoint, AuditEntry
from services.audit.chain import GENESIS, ChainVerifier, Entry, HmacKeys, Report, extend
from services.audit.checkpoint import Checkpoint

ENTRIES: Table = AuditEntry.__table__  # type: ignore[assignment]
CHECKPOINTS: Table = AuditCheckpoint.__table__  # type: ignore[assignment]
MAX_RETRIES = 20
PAGE = 5000


@dataclass(frozen=True)
class Appended:
    tenant: str
    entries: int  # new links
    duplicates: int  # events already in the chain (redelivered)
    head_seq: int
    head_hash: str


def _entry(row: Any) -> Entry:
    return Entry(row.tenant, row.seq, row.prev_hash, row.key_id, row.payload, row.hash, row.hmac)


def _row(entry: Entry) -> dict[str, Any]:
    event = entry.event
    return {
        "tenant": entry.tenant,
        "seq": entry.seq,
        "event_id": event["id"],
        "kind": event.get("kind", ""),
        "action": event.get("action", ""),
        "actor": event.get("actor", ""),
        "request_id": event.get("request_id", ""),
        "time": event.get("time", ""),
        "prev_hash": entry.prev_hash,
        "hash": entry.hash,
        "hmac": entry.hmac,
        "key_id": entry.key_id,
        "payload": event,
    }


_COLUMNS = ("kind", "action", "actor", "request_id", "time")


class AuditStore:
    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        self.postgres = engine.dialect.name == "postgresql"

    # -- appending --
    async def append(
        self, tenant: str, events: Sequence[dict[str, Any]], keys: HmacKeys
    ) -> Appended:
        """Append one tenant's events (in order) after its head, skipping known event ids."""
        for attempt in range(MAX_RETRIES):
            try:
                async with self.engine.begin() as conn:
                    return await self._append(conn, tenant, events, keys)
            except (IntegrityError, DBAPIError) as exc:
                conflict = isinstance(exc, IntegrityError) or "locked" in str(exc).lower()
                if not conflict:
                    raise
                # Another replica appended first: start again from the new head.
                await asyncio.sleep(random.uniform(0.001, 0.01 * (attempt + 1)))
        raise RuntimeError(f"audit append for {tenant!r} kept conflicting")

    async def _append(
        self, conn: AsyncConnection, tenant: str, events: Sequence[dict[str, Any]], keys: HmacKeys
    ) -> Appended:
        if self.postgres:
            await conn.execute(
                text("SELECT pg_advisory_xact_lock(hashtextextended(:k, 0))"),
                {"k": f"enclave.audit:{tenant}"},
            )
        ids = [e["id"] for e in events]
        known: set[str] = set()
        for i in range(0, len(ids), 1000):
            chunk = ids[i : i + 1000]
            found = await conn.execute(
                select(ENTRIES.c.event_id).where(ENTRIES.c.event_id.in_(chunk))
            )
            known.update(found.scalars())
        fresh: list[dict[str, Any]] = []
        for event in events:
            if event["id"] not in known:
                known.add(event["id"])  # the same id twice in one batch: once
                fresh.append(event)
        head_seq, head_hash = await self._head(conn, tenant)
        if not fresh:
            return Appended(tenant, 0, len(events), head_seq, head_hash)
        entries = extend(tenant, head_seq, head_hash, fresh, keys)
        await conn.execute(insert(ENTRIES), [_row(e) for e in entries])
        last = entries[-1]
        return Appended(tenant, len(entries), len(events) - len(entries), last.seq, last.hash)

    async def _head(self, conn: AsyncConnection, tenant: str) -> tuple[int, str]:
        row = (
            await conn.execute(
                select(ENTRIES.c.seq, ENTRIES.c.hash)
                .where(ENTRIES.c.tenant == tenant)
                .order_by(ENTRIES.c.seq.desc())
                .limit(1)
            )
        ).first()
        return (row.seq, row.hash) if row else (0, GENESIS)

    async def head(self, tenant: str) -> tuple[int, str]:
        async with self.engine.connect() as conn:
            return await self._head(conn, tenant)

    # -- reading --
    async def search(
        self,
        tenant: str,
        *,
        request_id: str | None = None,
        actor: str | None = None,
        action: str | None = None,
        since: str | None = None,
        until: str | None = None,
        after_seq: int = 0,
        limit: int = 100,
    ) -> list[Entry]:
        q = select(ENTRIES).where(ENTRIES.c.tenant == tenant, ENTRIES.c.seq > after_seq)
        if request_id:
            q = q.where(ENTRIES.c.request_id == request_id)
        if actor:
            q = q.where(ENTRIES.c.actor == actor)
        if action:
            q = q.where(ENTRIES.c.action == action)
        if since:
            q = q.where(ENTRIES.c.time >= since)
        if until:
            q = q.where(ENTRIES.c.time < until)
        q = q.order_by(ENTRIES.c.seq).limit(limit)
        async with self.engine.connect() as conn:
            return [_entry(r) for r in await conn.execute(q)]

    async def page(self, tenant: str, after_seq: int, upto: int, limit: int) -> list[Entry]:
        q = (
            select(ENTRIES)
            .where(ENTRIES.c.tenant == tenant, ENTRIES.c.seq > after_seq, ENTRIES.c.seq <= upto)
            .order_by(ENTRIES.c.seq)
            .limit(limit)
        )
        async with self.engine.connect() as conn:
            return [_entry(r) for r in await conn.execute(q)]

    async def rows(self, tenant: str, from_seq: int, to_seq: int | None) -> AsyncIterator[Any]:
        """Raw rows in seq order, paged (a chain may be far larger than memory)."""
        after = from_seq - 1
        while True:
            q = select(ENTRIES).where(ENTRIES.c.tenant == tenant, ENTRIES.c.seq > after)
            if to_seq is not None:
                q = q.where(ENTRIES.c.seq <= to_seq)
            async with self.engine.connect() as conn:
                batch = (await conn.execute(q.order_by(ENTRIES.c.seq).limit(PAGE))).all()
            for row in batch:
                yield row
            if len(batch) < PAGE:
                return
            after = batch[-1].seq

    async def count(self, tenant: str) -> int:
        async with self.engine.connect() as conn:
            found = await conn.execute(
                select(func.count()).select_from(ENTRIES).where(ENTRIES.c.tenant == tenant)
            )
            return int(found.scalar_one())

    # -- checkpoints --
    async def add_checkpoint(self, cp: Checkpoint) -> None:
        async with self.engine.begin() as conn:
            await conn.execute(
                insert(CHECKPOINTS).values(
                    tenant=cp.tenant,
                    count=cp.count,
                    head_hash=cp.head_hash,
                    time=cp.time,
                    key_id=cp.key_id,
                    signature=cp.signature,
                )
            )

    async def checkpoints(self, tenant: str, upto: int | None = None) -> list[Checkpoint]:
        q = select(CHECKPOINTS).where(CHECKPOINTS.c.tenant == tenant)
        if upto is not None:
            q = q.where(CHECKPOINTS.c.count <= upto)
        async with self.engine.connect() as conn:
            rows = await conn.execute(q.order_by(CHECKPOINTS.c.count, CHECKPOINTS.c.id))
            return [
                Checkpoint(
                    r.tenant, r._mapping["count"], r.head_hash, r.time, r.key_id, r.signature
                )
                for r in rows
            ]

    # -- verification --
    async def verify(
        self,
        tenant: str,
        keys: HmacKeys | None,
        expected: dict[int, str],
        from_seq: int = 1,
        to_seq: int | None = None,
    ) -> Report:
        """Walk the stored chain from `from_seq`: links, hashes, HMACs, checkpoint heads."""
        prev = GENESIS
        if from_seq > 1:
            async with self.engine.connect() as conn:
                row = (
                    await conn.execute(
                        select(ENTRIES.c.hash).where(
                            ENTRIES.c.tenant == tenant, ENTRIES.c.seq == from_seq - 1
                        )
                    )
                ).first()
            prev = row.hash if row else GENESIS
        verifier = ChainVerifier(
            tenant=tenant, keys=keys, start_seq=from_seq, prev_hash=prev, expected=expected
        )
        async for row in self.rows(tenant, from_seq, to_seq):
            entry = _entry(row)
            if not verifier.add_entry(entry):
                break
            event = entry.event
            if row.event_id != event.get("id"):
                verifier.reject_last("its event_id column disagrees with the hashed event")
                break
            for column in _COLUMNS:
                if getattr(row, column) != event.get(column, ""):
                    verifier.reject_last(f"its {column} column disagrees with the hashed event")
                    break
            if verifier.problem is not None:
                break
        return verifier.finish()
