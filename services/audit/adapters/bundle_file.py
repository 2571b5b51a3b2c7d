"""Verify a bundle file on every core: byte ranges checked in parallel, seams checked after.

Each worker verifies the entries of its range (hashes, HMACs, links, checkpoint heads)
starting from its first entry's own seq and prev_hash; the parent then checks that each
range starts exactly where the previous one ended. The first problem in file order wins,
so the answer is the same as `bundle.verify_bundle`'s, only sooner.
"""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import orjson
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from services.audit.bundle import Header, conclude, failed, start, verify_bundle
from services.audit.chain import (
    ENTRY_PREFIX,
    ChainVerifier,
    HmacKeys,
    Problem,
    Report,
    is_entry_line,
    split_entry_line,
)
from services.audit.checkpoint import Checkpoint

PARALLEL_FROM_BYTES = 8 << 20


def _range(
    path: str,
    begin: int,
    end: int,
    key_material: tuple[dict[str, bytes], str] | None,
    tenant: str | None,
    expected: dict[int, str],
    since: tuple[int, str] | None,
) -> dict[str, Any]:
    keys = HmacKeys(*key_material) if key_material else None
    out: dict[str, Any] = {"count": 0, "problem": None}
    verifier: ChainVerifier | None = None
    with open(path, "rb") as f:
        f.seek(begin)
        pos = begin
        for line in f:
            if pos >= end:
                break
            pos += len(line)
            if not line.strip():
                continue
            if not is_entry_line(line):
                seq = verifier.next_seq if verifier else 0
                out["problem"] = (seq, "a non-entry line among the entries (bundle reordered)")
                break
            body, body_bytes, digest, mac = split_entry_line(line)
            if verifier is None:
                first = body.get("seq")
                prev = body.get("prev_hash")
                if not isinstance(first, int) or not isinstance(prev, str):
                    out["problem"] = (0, "an entry without seq or prev_hash")
                    break
                out["first_seq"], out["first_prev"] = first, prev
                verifier = ChainVerifier(
                    tenant=tenant,
                    keys=keys,
                    start_seq=first,
                    prev_hash=prev,
                    expected=expected,
                    since=since,
                )
            if not verifier.add(body, body_bytes, digest, mac):
                assert verifier.problem is not None
                out["problem"] = (verifier.problem.seq, verifier.problem.reason)
                break
    if verifier is not None:
        out["count"] = verifier.next_seq - verifier.start_seq
        out["last_seq"] = verifier.next_seq - 1
        out["last_hash"] = verifier.prev_hash
        out["matched"] = verifier.matched
    return out


def _preamble(path: Path) -> tuple[Header | None, list[Checkpoint], int]:
    """Header, leading checkpoints, and the byte offset of the first entry line."""
    header: Header | None = None
    checkpoints: list[Checkpoint] = []
    offset = 0
    with open(path, "rb") as f:
        for line in f:
            if line.startswith(ENTRY_PREFIX):
                break
            offset += len(line)
            if not line.strip():
                continue
            obj = orjson.loads(line)
            if obj.get("type") == "header" and header is None and not checkpoints:
                header = Header.from_line(obj)
            elif obj.get("type") == "checkpoint":
                checkpoints.append(Checkpoint.from_line(obj))
            else:
                raise ValueError("unexpected line before the entries")
    return header, checkpoints, offset


def _trailer(path: Path, size: int) -> tuple[Checkpoint | None, int]:
    """The export checkpoint that ends the bundle (if the last line is one), and where
    the entries end."""
    with open(path, "rb") as f:
        f.seek(max(0, size - 4096))
        tail = f.read()
    stripped = tail.rstrip(b"\r\n\t ")
    cut = stripped.rfind(b"\n") + 1
    last = stripped[cut:]
    if not last or last.startswith(ENTRY_PREFIX) or is_entry_line(last):
        return None, size
    if cut == 0 and size > len(tail):
        raise ValueError("the last line is longer than expected")
    obj = orjson.loads(last)
    if not isinstance(obj, dict) or obj.get("type") != "checkpoint":
        raise ValueError("the last line is neither an entry nor a checkpoint")
    return Checkpoint.from_line(obj), size - len(tail) + cut


def verify_path(
    path: Path,
    *,
    keys: HmacKeys | None,
    public_keys: Mapping[str, Ed25519PublicKey] | None,
    since: Checkpoint | None = None,
    workers: int | None = None,
    parallel_from: int = PARALLEL_FROM_BYTES,
) -> Report:
    size = path.stat().st_size
    workers = workers or os.cpu_count() or 1
    if workers < 2 or size < parallel_from:
        with open(path, "rb") as f:
            return verify_bundle(f, keys=keys, public_keys=public_keys, since=since)
    try:
        header, checkpoints, begin_at = _preamble(path)
        trailer, size = _trailer(path, size)
        if header is None or (trailer is not None and not header.has_trailer):
            raise ValueError("not the layout this reader splits")
    except (ValueError, KeyError, orjson.JSONDecodeError):
        # An unusual layout: the one-pass reader judges it.
        with open(path, "rb") as f:
            return verify_bundle(f, keys=keys, public_keys=public_keys, since=since)
    tenant = header.tenant
    seams, problem = start(header, checkpoints, keys, public_keys, since)
    if problem:
        return failed(tenant, problem)
    heads, since_head = seams.expected, seams.since
    start_at = begin_at
    step = max(1, (size - start_at) // workers + 1)
    bounds = []
    with open(path, "rb") as f:
        begin = start_at
        for i in range(1, workers + 1):
            end = min(size, start_at + step * i)
            if end < size:
                f.seek(end)
                f.readline()  # to the start of the next line
                end = f.tell()
            bounds.append((begin, end))
            begin = end
    material = (keys.keys, keys.active) if keys else None
    ctx = multiprocessing.get_context("fork")
    with ctx.Pool(workers) as pool:
        parts = pool.starmap(
            _range,
            [(str(path), b, e, material, tenant, heads, since_head) for b, e in bounds if e > b],
        )
    # The seams: each range must continue the previous one exactly.
    verifier = seams
    for part in parts:
        if part.get("first_seq") is not None:
            want = verifier.next_seq
            if part["first_seq"] != want:
                found = part["first_seq"]
                what = (
                    f"entry {want} is missing or out of order"
                    if found > want
                    else "out of order or inserted"
                )
                verifier.problem = Problem(want, f"found seq {found} where {want} belongs: {what}")
                break
            if part["first_prev"] != verifier.prev_hash:
                verifier.problem = Problem(
                    want,
                    f"prev_hash does not match the hash of entry {want - 1}: "
                    "an entry was changed, removed, inserted or reordered",
                )
                break
        if part["problem"] is not None:
            verifier.problem = Problem(*part["problem"])
            break
        if part["count"]:
            verifier.next_seq = part["last_seq"] + 1
            verifier.prev_hash = part["last_hash"]
            verifier.matched += part["matched"]
    return conclude(verifier, header, checkpoints, trailer, keys, public_keys, since)


def read_checkpoint(value: str) -> Checkpoint:
    """A checkpoint seen earlier (`--since`): its JSON, a file holding it, or a bundle
    (whose newest checkpoint is taken: the export checkpoint)."""
    if value.lstrip().startswith("{"):
        return Checkpoint.from_line(orjson.loads(value))
    path = Path(value)
    size = path.stat().st_size
    with open(path, "rb") as f:
        first = orjson.loads(f.readline())
    if first.get("type") == "checkpoint":
        return Checkpoint.from_line(first)
    trailer, _ = _trailer(path, size)
    if trailer is not None:
        return trailer
    _, leading, _ = _preamble(path)
    if not leading:
        raise ValueError(f"{path} holds no checkpoint")
    return max(leading, key=lambda c: (c.count, c.time))
