"""Export bundles: what their lines are, and how a bundle is verified. No I/O.

A bundle is JSON Lines, in this order (format 2):
    {"type": "header", "format": "enclave-audit-bundle/2", "tenant", "count", "head_hash", ...}
    {"type": "checkpoint", "tenant", "count", "head_hash", "time", "key_id", "signature"}  (0+)
    {"body": {...}, "hash": "...", "hmac": "..."}                                   (entries)
    {"type": "checkpoint", ...}      the export checkpoint: signed at export over the head
The header is not signed; the verifier checks it against the export checkpoint, and the
chain against both, so a bundle cut short names the entries it lacks. Format 1 (before
the trailer) carried the export checkpoint among the leading ones; it still verifies.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import orjson
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from services.audit.chain import (
    ENTRY_PREFIX,
    ChainVerifier,
    HmacKeys,
    Problem,
    Report,
    canonical,
    missing,
    split_entry_line,
)
from services.audit.checkpoint import Checkpoint, expected_heads, signature_problem

FORMAT = "enclave-audit-bundle/2"
FORMAT_1 = "enclave-audit-bundle/1"
# What the verifier says of a line that follows the export checkpoint (serial or parallel).
AFTER_EXPORT = (
    "not covered by the export checkpoint, which comes before it: "
    "appended after the export, or lines reordered"
)


@dataclass(frozen=True)
class Header:
    tenant: str
    count: int
    head_hash: str
    exported_at: str
    format: str

    @classmethod
    def from_line(cls, obj: Mapping[str, Any]) -> Header:
        return cls(
            tenant=str(obj["tenant"]),
            count=int(obj["count"]),
            head_hash=str(obj.get("head_hash", "")),
            exported_at=str(obj.get("exported_at", "")),
            format=str(obj.get("format", FORMAT_1)),
        )

    @property
    def has_trailer(self) -> bool:
        return self.format != FORMAT_1


def header_line(
    tenant: str, count: int, head_hash: str, exported_at: str, format: str = FORMAT
) -> bytes:
    return canonical(
        {
            "type": "header",
            "format": format,
            "tenant": tenant,
            "count": count,
            "head_hash": head_hash,
            "exported_at": exported_at,
        }
    )


def checkpoint_line(cp: Checkpoint) -> bytes:
    return canonical(cp.as_line())


def failed(tenant: str | None, problem: Problem) -> Report:
    return Report(False, tenant, 0, 1, 0, "", 0, problem)


def start(
    header: Header | None,
    checkpoints: list[Checkpoint],
    keys: HmacKeys | None,
    public_keys: Mapping[str, Ed25519PublicKey] | None,
    since: Checkpoint | None,
) -> tuple[ChainVerifier, Problem | None]:
    """The verifier for a bundle's entries, from its header and leading checkpoints."""
    tenant = header.tenant if header else None
    heads, problem = expected_heads(checkpoints, tenant, public_keys)
    verifier = ChainVerifier(
        tenant=tenant,
        keys=keys,
        expected=heads,
        since=(since.count, since.head_hash) if since else None,
    )
    if problem:
        return verifier, Problem(min(heads, default=1), problem)
    if header is None:
        return verifier, Problem(1, "no header line: cannot tell whether the bundle is whole")
    if since is not None:
        if since.tenant != header.tenant:
            return verifier, Problem(1, f"the --since checkpoint is for tenant {since.tenant!r}")
        if public_keys is not None:
            bad = signature_problem(since, public_keys)
            if bad:
                return verifier, Problem(since.count, f"the --since checkpoint: {bad}")
        if heads.get(since.count, since.head_hash) != since.head_hash:
            return verifier, Problem(
                since.count,
                f"the bundle's checkpoint at count {since.count} differs from the earlier "
                "one (--since): the chain was rewritten",
            )
    return verifier, None


def verify_bundle(
    lines: Iterable[bytes],
    *,
    keys: HmacKeys | None,
    public_keys: Mapping[str, Ed25519PublicKey] | None,
    since: Checkpoint | None = None,
) -> Report:
    """Verify a bundle in one pass, stopping at the first bad entry.

    With `keys` every HMAC is checked; with `public_keys` every checkpoint signature.
    Either way the chain links, the hashes and the checkpoint heads are checked; the
    header must agree with the export checkpoint and the chain must end where both say
    (else the missing entries are named). With `since`, a checkpoint seen earlier, the
    chain must extend it (same hash at its count, and at least as long).
    """
    header: Header | None = None
    checkpoints: list[Checkpoint] = []
    trailer: Checkpoint | None = None
    verifier: ChainVerifier | None = None
    add = None
    for raw in lines:
        obj: Any = None
        entry = raw.startswith(ENTRY_PREFIX)
        if not entry:
            if not raw.strip():
                continue
            obj = orjson.loads(raw)
        kind = obj.get("type") if isinstance(obj, dict) else None
        # The second form: an entry line in another layout of the same JSON.
        if entry or (kind is None and isinstance(obj, dict) and "body" in obj):
            if verifier is not None and trailer is not None:
                return report_at(verifier, header, AFTER_EXPORT)
            if add is None:
                verifier, problem = start(header, checkpoints, keys, public_keys, since)
                if problem:
                    return failed(verifier.tenant, problem)
                add = verifier.add
            if not add(*split_entry_line(raw)):
                break
        elif kind == "header":
            if header is not None or checkpoints or verifier is not None:
                return failed(None, Problem(1, "the header is not the first line"))
            header = Header.from_line(obj)
        elif kind == "checkpoint":
            cp = Checkpoint.from_line(obj)
            if verifier is None:
                checkpoints.append(cp)
            elif trailer is None and header is not None and header.has_trailer:
                trailer = cp
            elif trailer is not None:
                return report_at(verifier, header, "a line follows the export checkpoint")
            else:
                return report_at(
                    verifier, header, "a checkpoint line follows the entries (bundle reordered)"
                )
        else:
            return failed(None, Problem(1, f"unknown line type {kind!r}"))
    if verifier is None:
        verifier, problem = start(header, checkpoints, keys, public_keys, since)
        if problem:
            return failed(verifier.tenant, problem)
    return conclude(verifier, header, checkpoints, trailer, keys, public_keys, since)


def report_at(verifier: ChainVerifier, header: Header | None, reason: str) -> Report:
    """A failure at the place the verifier has reached."""
    verifier.problem = Problem(verifier.next_seq, reason)
    return verifier.finish()


def _cut(last: int, count: int, who: str) -> Problem:
    """Entries after `last` are gone, though `who` (header, checkpoint) names `count`."""
    return Problem(
        last + 1,
        f"missing: {missing(last + 1, count)}: {who} {count} entries, "
        f"the bundle ends at {last} (truncated)",
    )


def _export_problem(
    verifier: ChainVerifier,
    header: Header,
    leading: list[Checkpoint],
    trailer: Checkpoint | None,
    public_keys: Mapping[str, Ed25519PublicKey] | None,
) -> Problem | None:
    """Does the chain end where the export checkpoint and the header say it does?"""
    last, head = verifier.next_seq - 1, verifier.prev_hash
    export = trailer
    if export is None and not header.has_trailer:  # format 1: among the leading ones
        export = next(
            (c for c in leading if (c.count, c.head_hash) == (header.count, header.head_hash)),
            None,
        )
    if export is not None:
        if export.tenant != header.tenant:
            return Problem(export.count, f"the export checkpoint is for tenant {export.tenant!r}")
        if public_keys is not None and export is trailer:
            bad = signature_problem(export, public_keys)
            if bad:
                return Problem(export.count, f"the export checkpoint: {bad}")
        if export.count > last:
            return _cut(last, export.count, "the export checkpoint covers")
        if export.count < last:
            return Problem(export.count + 1, AFTER_EXPORT)
        if export.head_hash != head:
            return Problem(last, "hash differs from the export checkpoint's head")
    if header.count > last:
        return _cut(last, header.count, "the header says")
    if header.count < last:
        return Problem(header.count + 1, f"not in the export: the header says {header.count}")
    if last and header.head_hash != head:
        return Problem(last, "the header's head hash differs from this entry's hash")
    if export is None and last:
        return Problem(
            last + 1,
            "the export checkpoint is missing: nothing signed at export says the bundle "
            f"ends at {last}; entries after {last} may have been removed",
        )
    if export is not None and (export.count, export.head_hash) != (header.count, header.head_hash):
        return Problem(last, "the header disagrees with the export checkpoint")
    return None


def conclude(
    verifier: ChainVerifier,
    header: Header | None,
    leading: list[Checkpoint],
    trailer: Checkpoint | None,
    keys: HmacKeys | None,
    public_keys: Mapping[str, Ed25519PublicKey] | None,
    since: Checkpoint | None = None,
) -> Report:
    """The bundle's report once every entry was fed: the end of the chain checked too."""
    if verifier.problem is None and header is not None:
        verifier.problem = _export_problem(verifier, header, leading, trailer, public_keys)
        if verifier.problem is None and trailer is not None:
            verifier.expected[trailer.count] = trailer.head_hash  # it covers the head
            verifier.matched += 1
    report = finish(verifier, keys, public_keys)
    vouching = [*leading, *([trailer] if trailer else [])]
    if report.ok and vouching:
        newest = max(vouching, key=lambda c: (c.count, c.time))
        report.newest_time, report.newest_count = newest.time, newest.count
    if report.ok and since is not None:
        report.notes.append(f"extends the earlier checkpoint of {since.time} (count {since.count})")
    return report


def finish(
    verifier: ChainVerifier,
    keys: HmacKeys | None,
    public_keys: Mapping[str, Ed25519PublicKey] | None,
) -> Report:
    """The verifier's report, every entry required, noting what could not be checked."""
    report = verifier.finish(require_covered=True)
    if public_keys is None:
        report.notes.append("note: checkpoint signatures not checked (no --public-key)")
    if keys is None:
        report.notes.append("note: HMACs not checked (no --key-file); checkpoints vouch")
    return report
