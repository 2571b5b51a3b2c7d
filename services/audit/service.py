"""The audit service's use cases over the store and the keys: append, checkpoint, search,
verify, export. Shared by the bus wiring (app.py) and the CLI (`enclave audit export`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from libs.audit import (
    MAX_EVENT_BYTES,
    TIME_FORMAT,
    bound_event,
    new_event,
    now_text,
    operator_context,
)
from libs.context import RequestContext
from libs.events import (
    AuditActions,
    AuditEvent,
    AuditExportRequest,
    AuditReply,
    AuditSearch,
    AuditVerifyRequest,
)
from services.audit import bundle, checkpoint
from services.audit.adapters.keys import HmacKeySource
from services.audit.adapters.sql import Appended, AuditStore
from services.audit.chain import Entry, Report, canonical
from services.audit.checkpoint import Checkpoint

log = logging.getLogger("enclave.audit")

# A bus reply carries lines as JSON strings, whose escapes can double their size: half
# of NATS's default 1 MiB max_payload, less headroom.
MAX_REPLY_BYTES = 384 * 1024


def bounded(lines: list[bytes]) -> list[str]:
    """The leading lines that fit one reply (always at least one)."""
    out: list[str] = []
    size = 0
    for line in lines:
        size += len(line) + 1
        if out and size > MAX_REPLY_BYTES:
            break
        out.append(line.decode())
    return out


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
                size = len(canonical(data))
            except TypeError:  # a lone surrogate: valid JSON, but no UTF-8 to hash
                log.error("dropping audit event %s: not encodable as UTF-8", event.id)
                continue
            if size > MAX_EVENT_BYTES:  # a publisher that did not clip: clip here
                event = bound_event(event)[0]
                data = event.model_dump(exclude_none=True)
            by_tenant.setdefault(event.tenant, []).append(data)
        if not by_tenant:
            return []
        out = await self.store.append_many(by_tenant, self.keys.current(), validated=True)
        self.touched.update(by_tenant)
        return out

    async def record(
        self,
        tenant: str,
        action: str,
        ctx: RequestContext | None,
        outcome: str = "ok",
        attrs: dict[str, str | bool | int] | None = None,
    ) -> None:
        """Reads of the chain go into the chain: appended here, not sent over the bus, so
        an export holds the record of itself."""
        event = new_event(
            tenant, "audit", action, service="audit", ctx=ctx, outcome=outcome, attrs=attrs or {}
        )
        await self.append([event])

    async def checkpoint(self, tenant: str) -> checkpoint.Checkpoint | None:
        """Sign and store a checkpoint at the tenant's current head (None for an empty chain)."""
        signed = await self._checkpoint(tenant)
        return signed[1] if signed else None

    async def _checkpoint(self, tenant: str) -> tuple[int, Checkpoint] | None:
        count, head = await self.store.head(tenant)
        if count == 0:
            return None
        cp = checkpoint.sign(tenant, count, head, now_text(), self.private_key)
        return await self.store.add_checkpoint(cp), cp

    async def checkpoint_touched(self) -> int:
        """A checkpoint for every tenant this replica appended to since the last round."""
        tenants, self.touched = self.touched, set()
        for tenant in tenants:
            await self.checkpoint(tenant)
        return len(tenants)

    async def search(self, req: AuditSearch) -> AuditReply:
        filters = {
            "request_id": req.request_id,
            "actor": req.actor,
            "action": req.action,
            "since": req.since,
            "until": req.until,
        }
        attrs: dict[str, str | bool | int] = {k: v for k, v in filters.items() if v}
        await self.record(
            req.tenant,
            AuditActions.AUDIT_READ,
            req.ctx,
            attrs={**attrs, "after_seq": req.after_seq, "limit": req.limit},
        )
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
        span: dict[str, str | bool | int] = {"from_seq": req.from_seq}
        if req.to_seq is not None:
            span["to_seq"] = req.to_seq
        await self.record(
            req.tenant,
            AuditActions.AUDIT_VERIFY,
            req.ctx,
            outcome="ok" if report.ok else "failed",
            attrs={**span, "count": report.count},
        )
        return AuditReply(
            ok=report.ok,
            count=report.count,
            first_bad_seq=report.problem.seq if report.problem else None,
            reason=report.problem.reason if report.problem else "; ".join(report.notes) or None,
            head_hash=report.head_hash,
        )

    async def export_page(self, req: AuditExportRequest) -> AuditReply:
        """One reply of a paged export (libs.audit.export_lines asks for them in turn).

        Start (no `upto`): sign the export checkpoint over the head; answer the header,
        the count, and the export checkpoint's line to end the bundle with. Then pages of
        the stored checkpoints, then pages of entries: each reply at most `limit` lines
        and about MAX_REPLY_BYTES, whatever the chain holds.
        """
        if req.upto is None:
            await self.record(req.tenant, AuditActions.AUDIT_EXPORT, req.ctx, attrs={"via": "bus"})
            signed = await self._checkpoint(req.tenant)
            count, head, at = (
                (signed[1].count, signed[1].head_hash, signed[1].time)
                if signed
                else (0, "", now_text())
            )
            return AuditReply(
                lines=[bundle.header_line(req.tenant, count, head, at).decode()],
                trailer=[bundle.checkpoint_line(signed[1]).decode()] if signed else [],
                checkpoint_id=signed[0] if signed else None,
                count=count,
                head_hash=head,
                next_after_seq=0,
            )
        if req.part == "checkpoints":
            cps = await self.store.checkpoint_page(
                req.tenant, req.upto, req.after_seq, req.before_id, req.limit
            )
            lines = bounded([bundle.checkpoint_line(cp) for _, cp in cps])
            more = len(lines) < len(cps) or len(cps) == req.limit
            return AuditReply(
                lines=lines,
                count=len(lines),
                next_after_seq=cps[len(lines) - 1][0] if more and lines else None,
            )
        page = await self.store.page(req.tenant, req.after_seq, req.upto, req.limit)
        lines = bounded([e.line() for e in page])
        last = page[len(lines) - 1].seq if lines else req.upto
        return AuditReply(
            lines=lines,
            count=len(lines),
            next_after_seq=last if last < req.upto else None,
        )

    async def export(
        self, tenant: str, write: Callable[[bytes], object], ctx: RequestContext | None = None
    ) -> int:
        """Write a whole bundle (the CLI's export); returns the entry count.

        Header, the stored checkpoints, the entries, and last the export checkpoint,
        signed now over the head: the verifier checks the header against it. The export
        is recorded first (as `cli:<login>` unless `ctx` says who), so it holds its record.
        """
        ctx = ctx or operator_context(tenant)
        await self.record(tenant, AuditActions.AUDIT_EXPORT, ctx, attrs={"via": "cli"})
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
