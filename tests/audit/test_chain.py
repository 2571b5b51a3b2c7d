"""The chain and bundles, offline: every kind of tampering is caught at the first bad entry."""

from __future__ import annotations

import dataclasses
import os
import random
import subprocess
import sys
from pathlib import Path

import orjson
import pytest
import rfc8785
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from services.audit import bundle, checkpoint
from services.audit.bundle import verify_bundle
from services.audit.chain import GENESIS, HmacKeys, canonical, extend, seal
from tests.audit.helpers import bundle_lines, chain, entry_line_index, events, keys, write_keys
from tests.infra import REPO

SIGNER = Ed25519PrivateKey.generate()
PUBS = {checkpoint.public_key_id(SIGNER.public_key()): SIGNER.public_key()}
N = 20


def _random_text(rng: random.Random) -> str:
    alphabet = [chr(c) for c in range(0, 0x80)] + ["é", "\u2028", "\u2029", "😀", "\ufeff", "中"]
    return "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 12)))


def test_canonical_encoding_is_rfc8785_for_audit_entries() -> None:
    rng = random.Random(7)
    for entry in chain(50):
        assert canonical(entry.body()) == rfc8785.dumps(entry.body())
    for _ in range(500):
        event = events(1)[0]
        event["actor"] = _random_text(rng)
        event["attrs"] = {
            f"a{i}": rng.choice([_random_text(rng), rng.randint(-(2**53) + 1, 2**53 - 1), True])
            for i in range(rng.randint(0, 5))
        }
        body = seal("acme", 1, GENESIS, event, keys()).body()
        assert canonical(body) == rfc8785.dumps(body)


def test_floats_and_huge_integers_are_refused() -> None:
    for bad in (1.5, 2**60):
        event = events(1)[0]
        event["attrs"] = {"x": bad}
        with pytest.raises(ValueError):
            seal("acme", 1, GENESIS, event, keys())


def _verify(lines: list[bytes], with_keys: bool = True, with_pubs: bool = True):  # type: ignore[no-untyped-def]
    return verify_bundle(
        lines, keys=keys() if with_keys else None, public_keys=PUBS if with_pubs else None
    )


def _edit(lines: list[bytes], seq: int, **changes: object) -> list[bytes]:
    out = list(lines)
    i = entry_line_index(out, seq)
    obj = orjson.loads(out[i])
    obj["body"]["event"].update(changes)
    out[i] = canonical(obj)
    return out


def test_untouched_bundle_verifies_with_either_key() -> None:
    lines = bundle_lines(chain(N), SIGNER)
    for with_keys, with_pubs in ((True, True), (True, False), (False, True)):
        report = _verify(lines, with_keys, with_pubs)
        assert report.ok, report.summary()
        assert report.count == N and report.checkpoints == 2


@pytest.mark.parametrize("with_keys", [True, False])
def test_modified_entry_is_named(with_keys: bool) -> None:
    lines = _edit(bundle_lines(chain(N), SIGNER), 7, actor="someone-else")
    report = _verify(lines, with_keys, not with_keys)
    assert not report.ok and report.problem is not None
    assert report.problem.seq == 7 and "hash mismatch" in report.problem.reason


def test_modified_entry_with_recomputed_hash_fails_its_hmac() -> None:
    lines = bundle_lines(chain(N), SIGNER)
    i = entry_line_index(lines, 7)
    obj = orjson.loads(lines[i])
    obj["body"]["event"]["model"] = "other-model"
    forged = HmacKeys({"k1": b"attacker-does-not-know-the-key!!"}, "k1")
    entry = seal("acme", 7, obj["body"]["prev_hash"], obj["body"]["event"], forged)
    lines[i] = entry.line()
    report = _verify(lines)
    assert report.problem is not None and report.problem.seq == 7
    assert "HMAC mismatch" in report.problem.reason


@pytest.mark.parametrize("with_keys", [True, False])
def test_deleted_entry_is_named(with_keys: bool) -> None:
    lines = bundle_lines(chain(N), SIGNER)
    del lines[entry_line_index(lines, 9)]
    report = _verify(lines, with_keys, not with_keys)
    assert report.problem is not None and report.problem.seq == 9
    assert "missing" in report.problem.reason


@pytest.mark.parametrize("with_keys", [True, False])
def test_reordered_entries_are_named(with_keys: bool) -> None:
    lines = bundle_lines(chain(N), SIGNER)
    a, b = entry_line_index(lines, 4), entry_line_index(lines, 5)
    lines[a], lines[b] = lines[b], lines[a]
    report = _verify(lines, with_keys, not with_keys)
    assert report.problem is not None and report.problem.seq == 4
    assert "found seq 5 where 4 belongs" in report.problem.reason


def test_inserted_entry_is_named() -> None:
    lines = bundle_lines(chain(N), SIGNER)
    i = entry_line_index(lines, 12)
    prev = orjson.loads(lines[i - 1])["hash"]
    forged_keys = HmacKeys({"k1": b"attacker-does-not-know-the-key!!"}, "k1")
    forged = seal("acme", 12, prev, events(1, start=99)[0], forged_keys)
    lines.insert(i, forged.line())  # a well-formed link, seq and prev_hash right
    report = _verify(lines)
    assert report.problem is not None and report.problem.seq == 12
    assert "HMAC mismatch" in report.problem.reason
    # Without the HMAC key the forged link itself looks sound; the next one gives it away.
    report = _verify(lines, with_keys=False)
    assert report.problem is not None and report.problem.seq == 13

    duplicate = bundle_lines(chain(N), SIGNER)
    j = entry_line_index(duplicate, 12)
    duplicate.insert(j, duplicate[j - 1])  # entry 11 twice
    report = _verify(duplicate)
    assert report.problem is not None and report.problem.seq == 12
    assert "found seq 11 where 12 belongs" in report.problem.reason


@pytest.mark.parametrize("with_keys", [True, False])
def test_truncated_bundle_is_named(with_keys: bool) -> None:
    lines = bundle_lines(chain(N), SIGNER)[:-4]  # the export checkpoint and 3 entries
    report = _verify(lines, with_keys, not with_keys)
    assert report.problem is not None and report.problem.seq == N - 2
    assert f"missing: entries {N - 2}..{N}" in report.problem.reason
    assert "truncated" in report.problem.reason


def _issue_bundle() -> list[bytes]:
    """243 entries, checkpoints every 60, and the export checkpoint over the head."""
    entries = chain(243)
    cps = [checkpoint.sign("acme", n, entries[n - 1].hash, f"t{n}", SIGNER) for n in (60, 120)]
    cps += [checkpoint.sign("acme", n, entries[n - 1].hash, f"t{n}", SIGNER) for n in (180, 240)]
    export = checkpoint.sign("acme", 243, entries[-1].hash, "t243", SIGNER)
    return [
        bundle.header_line("acme", 243, entries[-1].hash, "t243"),
        *(bundle.checkpoint_line(c) for c in cps),
        *(e.line() for e in entries),
        bundle.checkpoint_line(export),
    ]


def test_cut_entries_and_checkpoints_are_named_by_the_header() -> None:
    """The case of issue 11: the last 19 entries and the last 3 checkpoints removed."""
    lines = _issue_bundle()
    assert _verify(lines).ok
    cut = [ln for ln in lines if orjson.loads(ln).get("type") != "checkpoint"]
    kept = [ln for ln in lines if orjson.loads(ln).get("type") == "checkpoint"][:2]
    cut = [cut[0], *kept, *cut[1:-19]]  # header, checkpoints 60 and 120, entries 1..224
    for with_keys, with_pubs in ((True, True), (True, False), (False, True)):
        report = _verify(cut, with_keys, with_pubs)
        assert not report.ok and report.problem is not None
        assert report.problem.seq == 225, report.summary()
        assert "missing: entries 225..243" in report.problem.reason, report.summary()
        assert "the header says 243" in report.problem.reason


def test_a_header_edited_to_hide_the_cut_fails_without_the_export_checkpoint() -> None:
    lines = bundle_lines(chain(N), SIGNER)[:-4]
    header = orjson.loads(lines[0])
    header["count"], header["head_hash"] = N - 3, orjson.loads(lines[-1])["hash"]
    lines[0] = canonical(header)
    report = _verify(lines)
    assert report.problem is not None and report.problem.seq == N - 2, report.summary()
    assert "the export checkpoint is missing" in report.problem.reason


def test_format_1_bundles_still_verify_and_show_their_cut() -> None:
    entries = chain(N)
    export = checkpoint.sign("acme", N, entries[-1].hash, "t2", SIGNER)
    lines = [
        bundle.header_line("acme", N, entries[-1].hash, "t2", bundle.FORMAT_1),
        bundle.checkpoint_line(export),
        *(e.line() for e in entries),
    ]
    assert _verify(lines).ok
    report = _verify([lines[0], *lines[2:-5]])  # the checkpoint and 5 entries removed
    assert report.problem is not None and report.problem.seq == N - 4
    assert f"missing: entries {N - 4}..{N}" in report.problem.reason


def test_report_names_the_newest_checkpoint_time() -> None:
    report = _verify(_issue_bundle())
    assert report.ok and report.newest_time == "t243" and report.newest_count == 243
    assert "newest checkpoint: t243 (count 243)" in report.summary()


def test_since_proves_a_bundle_extends_an_earlier_checkpoint() -> None:
    entries = chain(N + 10)
    earlier = bundle_lines(entries[:N], SIGNER)
    seen = checkpoint.Checkpoint.from_line(orjson.loads(earlier[-1]))
    later = bundle_lines(entries, SIGNER)
    report = verify_bundle(later, keys=keys(), public_keys=PUBS, since=seen)
    assert report.ok, report.summary()
    assert f"extends the earlier checkpoint of t2 (count {N})" in report.summary()

    # Rolled back: a valid bundle of an older state than the one seen earlier.
    older = bundle_lines(entries[: N - 5], SIGNER)
    assert verify_bundle(older, keys=keys(), public_keys=PUBS).ok
    report = verify_bundle(older, keys=keys(), public_keys=PUBS, since=seen)
    assert report.problem is not None and report.problem.seq == N - 4, report.summary()
    assert f"missing: entries {N - 4}..{N}" in report.problem.reason
    assert "rolled back" in report.problem.reason

    # Rewritten: a chain as long, but not the one the checkpoint saw.
    other = bundle_lines(chain(N + 10), SIGNER)  # fresh event ids: other hashes
    report = verify_bundle(other, keys=keys(), public_keys=PUBS, since=seen)
    assert report.problem is not None and report.problem.seq == N
    assert "does not extend" in report.problem.reason

    # A forged earlier checkpoint is refused.
    forged = dataclasses.replace(seen, signature="AAAA")
    report = verify_bundle(later, keys=keys(), public_keys=PUBS, since=forged)
    assert report.problem is not None and "bad signature" in report.problem.reason


def test_appended_entry_and_forged_checkpoint_are_caught() -> None:
    entries = chain(N + 1)
    lines = [*bundle_lines(entries[:N], SIGNER), entries[N].line()]
    report = _verify(lines, with_keys=False)
    assert report.problem is not None and report.problem.seq == N + 1
    assert "not covered" in report.problem.reason

    lines = bundle_lines(chain(N), SIGNER)
    cp = orjson.loads(lines[-1])
    lines = lines[:-4]
    cp["count"], cp["head_hash"] = N - 3, orjson.loads(lines[-1])["hash"]  # hide the cut
    header = orjson.loads(lines[0])
    header["count"], header["head_hash"] = cp["count"], cp["head_hash"]
    lines[0] = canonical(header)
    lines.append(canonical(cp))
    report = _verify(lines, with_keys=False)
    assert report.problem is not None and "bad signature" in report.problem.reason


def test_rotated_keys_keep_older_entries_verifiable() -> None:
    k1 = HmacKeys({"k1": b"1" * 32}, "k1")
    k2 = HmacKeys({"k1": b"1" * 32, "k2": b"2" * 32}, "k2")
    first = extend("acme", 0, GENESIS, events(5), k1)
    second = extend("acme", 5, first[-1].hash, events(5, start=5), k2)
    entries = first + second
    assert {e.key_id for e in entries} == {"k1", "k2"}
    lines = bundle_lines(entries, SIGNER)
    assert verify_bundle(lines, keys=k2, public_keys=PUBS).ok
    only_new = HmacKeys({"k2": b"2" * 32}, "k2")
    report = verify_bundle(lines, keys=only_new, public_keys=PUBS)
    assert report.problem is not None and report.problem.seq == 1
    assert "unknown HMAC key id 'k1'" in report.problem.reason


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    # Offline: nothing listens on these, and the verifier must not need them.
    env = {
        **os.environ,
        "ENCLAVE_NATS_URL": "nats://127.0.0.1:1",
        "ENCLAVE_DATABASE_URL": "postgresql+asyncpg://nobody@127.0.0.1:1/none",
    }
    return subprocess.run(
        [sys.executable, "-m", "services.cli", "audit", "verify", *args],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_cli_verifies_offline_and_fails_with_the_first_bad_entry(tmp_path: Path) -> None:
    key_file, pub = write_keys(tmp_path, SIGNER)
    good = tmp_path / "good.jsonl"
    lines = bundle_lines(chain(N), SIGNER)
    good.write_bytes(b"\n".join(lines) + b"\n")
    for args in (["--key-file", str(key_file)], ["--public-key", str(pub)]):
        out = _cli(str(good), *args)
        assert out.returncode == 0, out.stdout + out.stderr
        assert out.stdout.startswith(f"OK: {N} entries")
    bad = tmp_path / "bad.jsonl"
    bad.write_bytes(b"\n".join(_edit(lines, 3, action="nothing.happened")) + b"\n")
    for args in (["--key-file", str(key_file)], ["--public-key", str(pub)]):
        out = _cli(str(bad), *args)
        assert out.returncode == 1
        assert out.stdout.startswith("FAILED: entry 3: hash mismatch"), out.stdout
    assert "newest checkpoint: t2" in _cli(str(good), "--public-key", str(pub)).stdout
    # --since an earlier bundle (its export checkpoint): extends it, or not.
    earlier = tmp_path / "earlier.jsonl"
    earlier.write_bytes(b"\n".join(bundle_lines(chain(N + 1), SIGNER)) + b"\n")
    out = _cli(str(good), "--public-key", str(pub), "--since", str(earlier))
    assert out.returncode == 1, out.stdout
    assert out.stdout.startswith(f"FAILED: entry {N + 1}: missing"), out.stdout
    assert "rolled back" in out.stdout
    seen = tmp_path / "seen.json"
    seen.write_bytes(lines[1])  # the checkpoint half way, kept from an earlier look
    out = _cli(str(good), "--public-key", str(pub), "--since", str(seen))
    assert out.returncode == 0 and "extends the earlier checkpoint" in out.stdout, out.stdout
    out = _cli(str(good), "--public-key", str(pub), "--since", lines[-1].decode())
    assert out.returncode == 0, out.stdout
    other = Ed25519PrivateKey.generate()
    (tmp_path / "other").mkdir()
    _, other_pub = write_keys(tmp_path / "other", other)
    out = _cli(str(good), "--public-key", str(other_pub))
    assert out.returncode == 1 and "unknown key" in out.stdout


@pytest.mark.parametrize("workers", [2, 3])
def test_parallel_verification_names_the_same_first_bad_entry(tmp_path: Path, workers: int) -> None:
    from services.audit.adapters.bundle_file import verify_path

    n = 600
    base = bundle_lines(chain(n), SIGNER)
    rng = random.Random(workers)
    cases: list[list[bytes]] = [base]
    for _ in range(12):
        lines = list(base)
        seq = rng.randint(1, n - 1)
        i = entry_line_index(lines, seq)
        kind = rng.choice(["modify", "delete", "swap", "duplicate", "truncate"])
        if kind == "modify":
            lines = _edit(lines, seq, actor="x")
        elif kind == "delete":
            del lines[i]
        elif kind == "swap":
            lines[i], lines[i + 1] = lines[i + 1], lines[i]
        elif kind == "duplicate":
            lines.insert(i, lines[i])
        else:
            lines = lines[:i]
        cases.append(lines)
    for lines in cases:
        path = tmp_path / "b.jsonl"
        path.write_bytes(b"\n".join(lines) + b"\n")
        serial = verify_bundle(lines, keys=keys(), public_keys=PUBS)
        parallel = verify_path(
            path, keys=keys(), public_keys=PUBS, workers=workers, parallel_from=0
        )
        assert parallel.ok == serial.ok
        assert parallel.problem == serial.problem, (serial.summary(), parallel.summary())
        assert parallel.count == serial.count or not serial.ok
