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
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import orjson
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


def _checkpoint(r: Any) -> Checkpoint:
    return Checkpoint(r.tenant, r._mapping["count"], r.head_hash, r.time, r.key_id, r.signature)


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
_RECORD = ("tenant", "seq", "event_id", *_COLUMNS, "prev_hash", "hash", "hmac", "key_id", "payload")


def _record(entry: Entry) -> tuple[Any, ...]:
    e = entry.event
    return (
        entry.tenant,
        entry.seq,
        e["id"],
        e.get("kind", ""),
        e.get("action", ""),
        e.get("actor", ""),
        e.get("request_id", ""),
        e.get("time", ""),
        entry.prev_hash,
        entry.hash,
        entry.hmac,
        entry.key_id,
        orjson.dumps(e).decode(),
    )


class AuditStore:
    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        self.postgres = engine.dialect.name == "postgresql"

    # -- appending --
    async def append(
        self,
        tenant: str,
        events: Sequence[dict[str, Any]],
        keys: HmacKeys,
        validated: bool = False,
    ) -> Appended:
        """Append one tenant's events (in order) after its head, skipping known event ids."""
        return (await self.append_many({tenant: events}, keys, validated))[0]

    async def append_many(
        self,
        batches: Mapping[str, Sequence[dict[str, Any]]],
        keys: HmacKeys,
        validated: bool = False,
    ) -> list[Appended]:
        """Append each tenant's events after its head, all in one transaction.

        One commit (one WAL flush) for a whole pulled batch is what makes the rate.
        `validated`: the events passed `AuditEvent` validation (skip the value-space check).
        """
        for attempt in range(MAX_RETRIES):
            try:
                async with self.engine.begin() as conn:
                    return await self._append(conn, batches, keys, validated)
            except (IntegrityError, DBAPIError) as exc:
                conflict = isinstance(exc, IntegrityError) or "locked" in str(exc).lower()
                if not conflict:
                    raise
                # Another replica appended first: start again from the new heads.
                await asyncio.sleep(random.uniform(0.001, 0.01 * (attempt + 1)))
        raise RuntimeError(f"audit append for {sorted(batches)} kept conflicting")

    async def _append(
        self,
        conn: AsyncConnection,
        batches: Mapping[str, Sequence[dict[str, Any]]],
        keys: HmacKeys,
        validated: bool,
    ) -> list[Appended]:
        tenants = sorted(batches)  # locks in one global order: replicas cannot deadlock
        if self.postgres:
            for tenant in tenants:
                await conn.execute(
                    text("SELECT pg_advisory_xact_lock(hashtextextended(:k, 0))"),
                    {"k": f"enclave.audit:{tenant}"},
                )
        known = await self._known(conn, [e["id"] for t in tenants for e in batches[t]])
        out: list[Appended] = []
        new: list[Entry] = []
        for tenant in tenants:
            events = batches[tenant]
            fresh: list[dict[str, Any]] = []
            for event in events:
                if event["id"] not in known:
                    known.add(event["id"])  # the same id twice in one batch: once
                    fresh.append(event)
            head_seq, head_hash = await self._head(conn, tenant)
            if fresh:
                entries = extend(tenant, head_seq, head_hash, fresh, keys, check=not validated)
                new.extend(entries)
                head_seq, head_hash = entries[-1].seq, entries[-1].hash
            out.append(Appended(tenant, len(fresh), len(events) - len(fresh), head_seq, head_hash))
        if not new:
            return out
        if self.postgres:
            # COPY is several times faster than a multi-row INSERT; same transaction.
            raw = (await conn.get_raw_connection()).driver_connection
            assert raw is not None
            await raw.copy_records_to_table(
                "audit_entries", records=[_record(e) for e in new], columns=_RECORD
            )
        else:
            await conn.execute(insert(ENTRIES), [_row(e) for e in new])
        return out

    async def _known(self, conn: AsyncConnection, ids: list[str]) -> set[str]:
        """The event ids already in a chain (redeliveries)."""
        if self.postgres:
            found = await conn.execute(
                text("SELECT event_id FROM audit_entries WHERE event_id = ANY(:ids)"),
                {"ids": ids},
            )
            return set(found.scalars())
        known: set[str] = set()
        for i in range(0, len(ids), 500):
            found = await conn.execute(
                select(ENTRIES.c.event_id).where(ENTRIES.c.event_id.in_(ids[i : i + 500]))
            )
            known.update(found.scalars())
        return known

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
    async def add_checkpoint(self, cp: Checkpoint) -> int:
        """Store a checkpoint; returns its id (ids grow in the order they were stored)."""
        return (await self.add_checkpoints([cp]))[0]

    async def add_checkpoints(self, cps: Sequence[Checkpoint]) -> list[int]:
        async with self.engine.begin() as conn:
            found = await conn.execute(
                insert(CHECKPOINTS).returning(CHECKPOINTS.c.id),
                [
                    {
                        "tenant": cp.tenant,
                        "count": cp.count,
                        "head_hash": cp.head_hash,
                        "time": cp.time,
                        "key_id": cp.key_id,
                        "signature": cp.signature,
                    }
                    for cp in cps
                ],
            )
            return list(found.scalars())

    async def checkpoint_page(
        self, tenant: str, upto: int, after_id: int, before_id: int | None, limit: int
    ) -> list[tuple[int, Checkpoint]]:
        """(id, checkpoint) by id: those covering at most `upto`, after `after_id`."""
        q = select(CHECKPOINTS).where(
            CHECKPOINTS.c.tenant == tenant,
            CHECKPOINTS.c.count <= upto,
            CHECKPOINTS.c.id > after_id,
        )
        if before_id is not None:
            q = q.where(CHECKPOINTS.c.id < before_id)
        async with self.engine.connect() as conn:
            rows = await conn.execute(q.order_by(CHECKPOINTS.c.id).limit(limit))
            return [(r.id, _checkpoint(r)) for r in rows]

    async def checkpoints(self, tenant: str, upto: int | None = None) -> list[Checkpoint]:
        q = select(CHECKPOINTS).where(CHECKPOINTS.c.tenant == tenant)
        if upto is not None:
            q = q.where(CHECKPOINTS.c.count <= upto)
        async with self.engine.connect() as conn:
            rows = await conn.execute(q.order_by(CHECKPOINTS.c.count, CHECKPOINTS.c.id))
            return [_checkpoint(r) for r in rows]

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
