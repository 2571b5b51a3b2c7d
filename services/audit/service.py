"""The audit service's use cases over the store and the keys: append, checkpoint, search,
verify, export. Shared by the bus wiring (app.py) and the CLI (`enclave audit export`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from libs.audit import TIME_FORMAT, now_text
from libs.events import AuditEvent, AuditExportRequest, AuditReply, AuditSearch, AuditVerifyRequest
from services.audit import bundle, checkpoint
from services.audit.adapters.keys import HmacKeySource
from services.audit.adapters.sql import Appended, AuditStore
from services.audit.chain import Entry, Report, canonical

log = logging.getLogger("enclave.audit")


def entry_view(entry: Entry) -> dict[str, Any]:
    return {
        "seq": entry.seq,
        "hash": entry.hash,
        "prev_hash": entry.prev_hash,
        "hmac": entry.hmac,
        "key_id": entry.key_id,
        "event": entry.event,
    }


def normalise_time(value: str | None) -> str | None:
    """An ISO 8601 time as the chain stores it (UTC, fixed width), for range filters."""
    if not value:
        return None
    parsed = datetime.fromisoformat(value)
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.astimezone(UTC).strftime(TIME_FORMAT)


class AuditService:
    def __init__(
        self,
        store: AuditStore,
        keys: HmacKeySource,
        private_key: Ed25519PrivateKey,
        public_keys: dict[str, Ed25519PublicKey] | None = None,
    ) -> None:
        self.store = store
        self.keys = keys
        self.private_key = private_key
        own = private_key.public_key()
        self.public_keys = {checkpoint.public_key_id(own): own, **(public_keys or {})}
        self.touched: set[str] = set()

    async def append(self, events: Sequence[AuditEvent]) -> list[Appended]:
        """Append a batch in one transaction; each tenant's events in the order the batch holds."""
        by_tenant: dict[str, list[dict[str, Any]]] = {}
        for event in events:
            data = event.model_dump(exclude_none=True)
            try:
                canonical(data)
            except TypeError:  # a lone surrogate: valid JSON, but no UTF-8 to hash
                log.error("dropping audit event %s: not encodable as UTF-8", event.id)
                continue
            by_tenant.setdefault(event.tenant, []).append(data)
        if not by_tenant:
            return []
        out = await self.store.append_many(by_tenant, self.keys.current(), validated=True)
        self.touched.update(by_tenant)
        return out

    async def checkpoint(self, tenant: str) -> checkpoint.Checkpoint | None:
        """Sign and store a checkpoint at the tenant's current head (None for an empty chain)."""
        count, head = await self.store.head(tenant)
        if count == 0:
            return None
        cp = checkpoint.sign(tenant, count, head, now_text(), self.private_key)
        await self.store.add_checkpoint(cp)
        return cp

    async def checkpoint_touched(self) -> int:
        """A checkpoint for every tenant this replica appended to since the last round."""
        tenants, self.touched = self.touched, set()
        for tenant in tenants:
            await self.checkpoint(tenant)
        return len(tenants)

    async def search(self, req: AuditSearch) -> AuditReply:
        found = await self.store.search(
            req.tenant,
            request_id=req.request_id,
            actor=req.actor,
            action=req.action,
            since=normalise_time(req.since),
            until=normalise_time(req.until),
            after_seq=req.after_seq,
            limit=req.limit,
        )
        return AuditReply(
            entries=[entry_view(e) for e in found],
            count=len(found),
            next_after_seq=found[-1].seq if len(found) == req.limit else None,
        )

    async def verify_report(
        self, tenant: str, from_seq: int = 1, to_seq: int | None = None
    ) -> Report:
        heads, problem = checkpoint.expected_heads(
            await self.store.checkpoints(tenant, upto=to_seq), tenant, self.public_keys
        )
        report = await self.store.verify(
            tenant,
            self.keys.current(),
            {c: h for c, h in heads.items() if c >= from_seq},
            from_seq,
            to_seq,
        )
        if problem and report.ok:
            report.ok = False
            report.notes.append(problem)
        return report

    async def verify(self, req: AuditVerifyRequest) -> AuditReply:
        report = await self.verify_report(req.tenant, req.from_seq, req.to_seq)
        return AuditReply(
            ok=report.ok,
            count=report.count,
            first_bad_seq=report.problem.seq if report.problem else None,
            reason=report.problem.reason if report.problem else "; ".join(report.notes) or None,
            head_hash=report.head_hash,
        )

    async def export_start(self, tenant: str) -> tuple[list[bytes], int]:
        """The bundle's header and checkpoint lines, a fresh checkpoint at the head last."""
        fresh = await self.checkpoint(tenant)
        count = fresh.count if fresh else 0
        head = fresh.head_hash if fresh else ""
        lines = [bundle.header_line(tenant, count, head, now_text(), bundle.FORMAT_1)]
        for cp in await self.store.checkpoints(tenant, upto=count):
            lines.append(bundle.checkpoint_line(cp))
        return lines, count

    async def export_page(self, req: AuditExportRequest) -> AuditReply:
        if req.upto is None:
            lines, count = await self.export_start(req.tenant)
            return AuditReply(lines=[ln.decode() for ln in lines], count=count, next_after_seq=0)
        page = await self.store.page(req.tenant, req.after_seq, req.upto, req.limit)
        last = page[-1].seq if page else req.upto
        return AuditReply(
            lines=[e.line().decode() for e in page],
            count=len(page),
            next_after_seq=last if last < req.upto else None,
        )

    async def export(self, tenant: str, write: Callable[[bytes], object]) -> int:
        """Write a whole bundle (the CLI's export); returns the entry count.

        Header, the stored checkpoints, the entries, and last the export checkpoint,
        signed now over the head: the verifier checks the header against it.
        """
        fresh = await self.checkpoint(tenant)
        count = fresh.count if fresh else 0
        head = fresh.head_hash if fresh else ""
        write(bundle.header_line(tenant, count, head, fresh.time if fresh else now_text()) + b"\n")
        for cp in await self.store.checkpoints(tenant, upto=count):
            if cp != fresh:
                write(bundle.checkpoint_line(cp) + b"\n")
        after = 0
        while after < count:
            page = await self.store.page(tenant, after, count, 5000)
            if not page:
                break
            write(b"".join(e.line() + b"\n" for e in page))
            after = page[-1].seq
        if fresh is not None:
            write(bundle.checkpoint_line(fresh) + b"\n")
        return count
