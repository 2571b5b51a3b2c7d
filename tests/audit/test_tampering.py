"""The audit tampering suite (issue 11): a bundle of 243 entries is edited, has an entry
deleted, two swapped, its end cut, or its end cut together with the last checkpoints.
Each is caught by `enclave audit verify`, offline, with either key, on one core or many,
and the first bad entry or the missing range is named.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import orjson
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from services.audit import bundle, checkpoint
from services.audit.adapters.bundle_file import verify_path
from services.audit.bundle import verify_bundle
from services.audit.chain import Entry, canonical
from tests.audit.helpers import chain, entry_line_index, keys, write_keys
from tests.infra import REPO

SIGNER = Ed25519PrivateKey.generate()
PUBS = {checkpoint.public_key_id(SIGNER.public_key()): SIGNER.public_key()}
N = 243
EVERY = 60  # a checkpoint each 60 entries, as the service signs one a minute


def _bundle(entries: list[Entry]) -> list[bytes]:
    total = len(entries)
    cps = [
        checkpoint.sign("acme", n, entries[n - 1].hash, f"2026-11-29T10:{n // EVERY:02d}Z", SIGNER)
        for n in range(EVERY, total, EVERY)
    ]
    export = checkpoint.sign("acme", total, entries[-1].hash, "2026-11-29T11:00Z", SIGNER)
    return [
        bundle.header_line("acme", total, entries[-1].hash, export.time),
        *(bundle.checkpoint_line(c) for c in cps),
        *(e.line() for e in entries),
        bundle.checkpoint_line(export),
    ]


ENTRIES = chain(N)
BASE = _bundle(ENTRIES)


def _is_checkpoint(line: bytes) -> bool:
    return orjson.loads(line).get("type") == "checkpoint"


def edit(lines: list[bytes]) -> list[bytes]:
    i = entry_line_index(lines, 100)
    obj = orjson.loads(lines[i])
    obj["body"]["event"]["actor"] = "someone-else"
    return [*lines[:i], canonical(obj), *lines[i + 1 :]]


def delete(lines: list[bytes]) -> list[bytes]:
    i = entry_line_index(lines, 57)
    return [*lines[:i], *lines[i + 1 :]]


def swap(lines: list[bytes]) -> list[bytes]:
    out = list(lines)
    a, b = entry_line_index(out, 130), entry_line_index(out, 131)
    out[a], out[b] = out[b], out[a]
    return out


def truncate_end(lines: list[bytes]) -> list[bytes]:
    """The last 19 entries cut, the export checkpoint after them kept."""
    i = entry_line_index(lines, N - 18)
    return [*lines[:i], lines[-1]]


def truncate_with_checkpoints(lines: list[bytes]) -> list[bytes]:
    """The issue's case: the last 19 entries and the last 3 checkpoints removed."""
    drop = {i for i, line in enumerate(lines) if _is_checkpoint(line)}
    drop = set(sorted(drop)[-3:])
    drop |= {entry_line_index(lines, seq) for seq in range(N - 18, N + 1)}
    return [line for i, line in enumerate(lines) if i not in drop]


CASES: dict[str, tuple[Callable[[list[bytes]], list[bytes]], int, str]] = {
    "edit": (edit, 100, "hash mismatch"),
    "delete": (delete, 57, "entry 57 is missing"),
    "swap": (swap, 130, "found seq 131 where 130 belongs"),
    "truncate-end": (truncate_end, 225, "missing: entries 225..243"),
    "truncate-with-checkpoints": (truncate_with_checkpoints, 225, "missing: entries 225..243"),
}


def test_the_untouched_bundle_verifies() -> None:
    report = verify_bundle(BASE, keys=keys(), public_keys=PUBS)
    assert report.ok and report.count == N, report.summary()
    assert report.newest_time == "2026-11-29T11:00Z" and report.newest_count == N


def test_the_issue_case_removes_what_it_says() -> None:
    cut = truncate_with_checkpoints(BASE)
    assert len(BASE) - len(cut) == 19 + 3
    assert orjson.loads(cut[0])["count"] == N  # the header still says 243
    assert max(orjson.loads(ln)["count"] for ln in cut if _is_checkpoint(ln)) == 120


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("with_keys", [True, False])
def test_tampering_is_caught_and_named(case: str, with_keys: bool, tmp_path: Path) -> None:
    tamper, seq, why = CASES[case]
    lines = tamper(BASE)
    pubs = None if with_keys else PUBS
    serial = verify_bundle(lines, keys=keys() if with_keys else None, public_keys=pubs)
    assert not serial.ok and serial.problem is not None, serial.summary()
    assert serial.problem.seq == seq, serial.summary()
    assert why in serial.problem.reason, serial.summary()
    path = tmp_path / "b.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")
    parallel = verify_path(
        path, keys=keys() if with_keys else None, public_keys=pubs, workers=3, parallel_from=0
    )
    assert parallel.problem == serial.problem, (serial.summary(), parallel.summary())


@pytest.mark.parametrize("case", sorted(CASES))
def test_the_cli_fails_naming_the_entry_or_range(case: str, tmp_path: Path) -> None:
    tamper, seq, why = CASES[case]
    pub = str(write_keys(tmp_path, SIGNER)[1])
    path = tmp_path / f"{case}.jsonl"
    path.write_bytes(b"\n".join(tamper(BASE)) + b"\n")
    out = subprocess.run(
        [sys.executable, "-m", "services.cli", "audit", "verify", str(path), "--public-key", pub],
        env={**os.environ, "ENCLAVE_NATS_URL": "nats://127.0.0.1:1"},
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 1, out.stdout + out.stderr
    assert out.stdout.startswith(f"FAILED: entry {seq}: "), out.stdout
    assert why in out.stdout, out.stdout


@pytest.mark.parametrize("case", ["extends", "rolled-back", "rewritten"])
def test_since_is_judged_alike_on_one_core_or_many(case: str, tmp_path: Path) -> None:
    seen = next(
        checkpoint.Checkpoint.from_line(orjson.loads(line))
        for line in BASE
        if _is_checkpoint(line) and orjson.loads(line)["count"] == 2 * EVERY
    )
    lines = {
        "extends": BASE,
        "rolled-back": _bundle(ENTRIES[:100]),  # a whole, genuine, older bundle
        "rewritten": _bundle(chain(N)),
    }[case]
    serial = verify_bundle(lines, keys=keys(), public_keys=PUBS, since=seen)
    path = tmp_path / "b.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")
    parallel = verify_path(
        path, keys=keys(), public_keys=PUBS, since=seen, workers=3, parallel_from=0
    )
    assert parallel.problem == serial.problem, (serial.summary(), parallel.summary())
    if case == "extends":
        assert serial.ok and parallel.ok
    elif case == "rolled-back":
        assert serial.problem is not None and serial.problem.seq == 101
        assert "missing: entries 101..120" in serial.problem.reason
    else:
        assert serial.problem is not None and serial.problem.seq == 2 * EVERY
