"""Export bundles: what their lines are, and how a bundle is verified. No I/O.

A bundle is JSON Lines, in this order:
    {"type": "header", "format": "enclave-audit-bundle/1", "tenant", "count", "head_hash", ...}
    {"type": "checkpoint", "tenant", "count", "head_hash", "time", "key_id", "signature"}  (1+)
    {"body": {...}, "hash": "...", "hmac": "..."}                                   (entries)
The last checkpoint covers the last entry: it was signed at export time. The header is
informational; nothing in it is trusted.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
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
    split_entry_line,
)
from services.audit.checkpoint import Checkpoint, expected_heads

FORMAT = "enclave-audit-bundle/1"


def header_line(tenant: str, count: int, head_hash: str, exported_at: str) -> bytes:
    return canonical(
        {
            "type": "header",
            "format": FORMAT,
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


def verify_bundle(
    lines: Iterable[bytes],
    *,
    keys: HmacKeys | None,
    public_keys: Mapping[str, Ed25519PublicKey] | None,
) -> Report:
    """Verify a bundle in one pass, stopping at the first bad entry.

    With `keys` every HMAC is checked; with `public_keys` every checkpoint signature.
    Either way the chain links, the hashes and the checkpoint heads are checked, and the
    last entry must be covered by a checkpoint (else entries were appended or cut).
    """
    tenant: str | None = None
    checkpoints: list[Checkpoint] = []
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
            if add is None:
                heads, problem = expected_heads(checkpoints, tenant, public_keys)
                if problem:
                    return failed(tenant, Problem(min(heads, default=1), problem))
                verifier = ChainVerifier(tenant=tenant, keys=keys, expected=heads)
                add = verifier.add
            if not add(*split_entry_line(raw)):
                break
        elif kind == "header":
            tenant = str(obj["tenant"])
        elif kind == "checkpoint":
            cp = Checkpoint.from_line(obj)
            if verifier is not None:
                return failed(
                    tenant,
                    Problem(cp.count, "a checkpoint line follows the entries (bundle reordered)"),
                )
            checkpoints.append(cp)
        else:
            return failed(tenant, Problem(1, f"unknown line type {kind!r}"))
    if verifier is None:
        heads, problem = expected_heads(checkpoints, tenant, public_keys)
        verifier = ChainVerifier(tenant=tenant, keys=keys, expected=heads)
        if problem:
            return failed(tenant, Problem(1, problem))
    return finish(verifier, keys, public_keys)


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
