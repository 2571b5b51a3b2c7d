"""The audit chain: canonical encoding, hashing, HMAC and verification. No I/O.

One chain per tenant. Entry `seq` (1, 2, ...) has the body

    {"v": 1, "tenant": T, "seq": n, "prev_hash": H(n-1), "key_id": K, "event": {...}}

    hash = SHA-256(canonical(body)), hex            (H(0) = 64 zeros)
    hmac = HMAC-SHA256(key[K], raw 32-byte hash), hex

`canonical` is RFC 8785 (JCS). For the values an entry may hold (ASCII keys, strings,
booleans, null, integers within ±2**53, no floats: `AuditEvent` enforces it and `seal`
checks it) JCS is exactly orjson's compact output with sorted keys, which is ~10x faster
than the rfc8785 package; tests/audit compare the two.

A bundle entry line is `canonical({"body": body, "hash": h, "hmac": m})`; its fixed-width
tail lets the verifier hash the body bytes as they stand, without re-encoding them.
"""

from __future__ import annotations

import hashlib
import hmac as hmac_mod
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson

from libs.events import AUDIT_MAX_INT

GENESIS = "0" * 64
_SORT = orjson.OPT_SORT_KEYS


def canonical(obj: Any) -> bytes:
    """RFC 8785 bytes of `obj` (for the value space above; see `check_jcs_safe`)."""
    return orjson.dumps(obj, option=_SORT)


def check_jcs_safe(obj: Any, path: str = "$") -> None:
    """Raise ValueError where orjson's sorted output could differ from RFC 8785."""
    if isinstance(obj, dict):
        for key, value in obj.items():
            if not isinstance(key, str) or not key.isascii():
                raise ValueError(f"{path}: keys must be ASCII strings")
            check_jcs_safe(value, f"{path}.{key}")
    elif isinstance(obj, list):
        for i, value in enumerate(obj):
            check_jcs_safe(value, f"{path}[{i}]")
    elif isinstance(obj, bool) or obj is None or isinstance(obj, str):
        return
    elif isinstance(obj, int):
        if abs(obj) > AUDIT_MAX_INT:
            raise ValueError(f"{path}: integer beyond ±2**53")
    else:
        raise ValueError(f"{path}: {type(obj).__name__} is not allowed in an audit entry")


def body_of(tenant: str, seq: int, prev_hash: str, key_id: str, event: Mapping[str, Any]) -> dict:
    return {
        "v": 1,
        "tenant": tenant,
        "seq": seq,
        "prev_hash": prev_hash,
        "key_id": key_id,
        "event": event,
    }


def hash_bytes(body_bytes: bytes) -> str:
    return hashlib.sha256(body_bytes).hexdigest()


class HmacKeys:
    """HMAC keys by id; `active` signs new entries, the others verify older ones."""

    def __init__(self, keys: Mapping[str, bytes], active: str) -> None:
        if active not in keys:
            raise ValueError(f"active key id {active!r} is not among the keys")
        self.keys = dict(keys)
        self.active = active
        # HMAC = H(okey || H(ikey || m)): keep the padded-key states, copy them per entry.
        self._pads: dict[str, tuple[Any, Any]] = {}
        for key_id, key in self.keys.items():
            if len(key) > 64:
                key = hashlib.sha256(key).digest()
            key = key.ljust(64, b"\0")
            inner = hashlib.sha256(bytes(b ^ 0x36 for b in key))
            outer = hashlib.sha256(bytes(b ^ 0x5C for b in key))
            self._pads[key_id] = (inner, outer)

    def mac(self, key_id: str, hash_hex: str) -> str:
        inner, outer = self._pads[key_id]
        i = inner.copy()
        i.update(bytes.fromhex(hash_hex))
        o = outer.copy()
        o.update(i.digest())
        return o.hexdigest()

    def check(self, key_id: str, hash_hex: str, mac_hex: str) -> bool:
        return hmac_mod.compare_digest(self.mac(key_id, hash_hex), mac_hex)


@dataclass(frozen=True, slots=True)
class Entry:
    """A sealed link of the chain."""

    tenant: str
    seq: int
    prev_hash: str
    key_id: str
    event: dict[str, Any]
    hash: str
    hmac: str

    def body(self) -> dict[str, Any]:
        return body_of(self.tenant, self.seq, self.prev_hash, self.key_id, self.event)

    def line(self) -> bytes:
        """The entry's line in an export bundle (no newline)."""
        return canonical({"body": self.body(), "hash": self.hash, "hmac": self.hmac})


def seal(
    tenant: str,
    seq: int,
    prev_hash: str,
    event: dict[str, Any],
    keys: HmacKeys,
    check: bool = True,
) -> Entry:
    """The next link: hash over the canonical body, HMAC with the active key.

    `check=False` where the event was validated as an `AuditEvent`, whose types already
    keep it inside the value space where orjson's output is RFC 8785.
    """
    body = body_of(tenant, seq, prev_hash, keys.active, event)
    if check:
        check_jcs_safe(body)
    digest = hash_bytes(canonical(body))
    return Entry(tenant, seq, prev_hash, keys.active, event, digest, keys.mac(keys.active, digest))


def extend(
    tenant: str,
    head_seq: int,
    head_hash: str,
    events: Iterable[dict[str, Any]],
    keys: HmacKeys,
    check: bool = True,
) -> list[Entry]:
    out: list[Entry] = []
    seq, prev = head_seq, head_hash
    for event in events:
        seq += 1
        entry = seal(tenant, seq, prev, event, keys, check)
        out.append(entry)
        prev = entry.hash
    return out


# -- bundle lines --

# How every entry line of an export begins (canonical JSON: `body` sorts first).
ENTRY_PREFIX = b'{"body":'
_TAIL = len(b',"hash":"') + 64 + len(b'","hmac":"') + 64 + len(b'"}')


def split_entry_line(line: bytes) -> tuple[dict[str, Any], bytes, str, str]:
    """(body, body bytes as hashed, hash, hmac) of a bundle entry line.

    The fast path slices the body out of a line as `Entry.line` writes it; any other
    layout of the same JSON (reformatted by a tool) is parsed and re-canonicalised.
    Hashing the bytes as they stand is sound: bytes that differ from what was hashed
    cannot match the hash.
    """
    line = line.rstrip(b"\r\n")
    if (
        line.startswith(ENTRY_PREFIX)
        and line.endswith(b'"}')
        and line[-_TAIL : -_TAIL + 9] == b',"hash":"'
        and line[-76:-66] == b'","hmac":"'
    ):
        body_bytes = line[8:-_TAIL]
        return orjson.loads(body_bytes), body_bytes, line[-140:-76].decode(), line[-66:-2].decode()
    obj = orjson.loads(line)
    body = obj["body"]
    return body, canonical(body), str(obj["hash"]), str(obj["hmac"])


def is_entry_line(line: bytes) -> bool:
    return line.lstrip().startswith(ENTRY_PREFIX) or b'"body"' in line[:64]


# -- verification --


@dataclass(frozen=True)
class Problem:
    """The first bad entry (by the seq expected at that place) and why."""

    seq: int
    reason: str

    def __str__(self) -> str:
        return f"entry {self.seq}: {self.reason}"


@dataclass
class Report:
    ok: bool
    tenant: str | None
    count: int  # entries checked
    first_seq: int
    last_seq: int
    head_hash: str
    checkpoints: int  # checkpoints whose head hash was matched against the chain
    problem: Problem | None = None
    notes: list[str] = field(default_factory=list)
    newest_time: str = ""  # the time of the newest checkpoint that vouches for the chain
    newest_count: int = 0  # and the count it covers

    def summary(self) -> str:
        if self.ok:
            text = (
                f"OK: {self.count} entries (seq {self.first_seq}..{self.last_seq}) of tenant "
                f"{self.tenant}, head {self.head_hash[:16]}…, {self.checkpoints} checkpoints match"
            )
            if self.newest_time:
                text += (
                    f"\nnewest checkpoint: {self.newest_time} (count {self.newest_count}); "
                    "the bundle proves nothing about later entries"
                )
        else:
            text = f"FAILED: {self.problem}"
        return "\n".join([text, *self.notes])


def missing(first: int, last: int) -> str:
    """How a run of absent entries is named: `entries 225..243` (or `entry 225`)."""
    return f"entry {first}" if first == last else f"entries {first}..{last}"


class ChainVerifier:
    """Feeds entries in order; stops at the first problem.

    `expected` maps checkpoint counts to their head hashes (from signed checkpoints):
    the entry with that seq must have that hash, and a chain that ends before the
    highest count was truncated.
    """

    def __init__(
        self,
        *,
        tenant: str | None = None,
        keys: HmacKeys | None = None,
        start_seq: int = 1,
        prev_hash: str = GENESIS,
        expected: Mapping[int, str] | None = None,
        since: tuple[int, str] | None = None,
    ) -> None:
        self.tenant = tenant
        # (count, head hash) of a checkpoint seen earlier: the chain must extend it.
        self.since = since
        self.keys = keys
        self.start_seq = start_seq
        self.next_seq = start_seq
        self.prev_hash = prev_hash
        self.expected = dict(expected or {})
        self.matched = 0
        self.problem: Problem | None = None

    def _fail(self, reason: str) -> Problem:
        self.problem = Problem(self.next_seq, reason)
        return self.problem

    def add(self, body: Mapping[str, Any], body_bytes: bytes, digest: str, mac: str) -> bool:
        """Check one entry; False (and `problem` set) at the first bad one."""
        if self.problem is not None:
            return False
        want = self.next_seq
        seq = body.get("seq")
        if seq != want:
            if isinstance(seq, int) and seq > want:
                self._fail(
                    f"found seq {seq} where {want} belongs: entry {want} is missing or out of order"
                )
            else:
                self._fail(f"found seq {seq} where {want} belongs: out of order or inserted")
            return False
        if self.tenant is None:
            self.tenant = body.get("tenant")
        if body.get("tenant") != self.tenant:
            self._fail(f"belongs to tenant {body.get('tenant')!r}, not {self.tenant!r}")
            return False
        if body.get("v") != 1:
            self._fail(f"unknown entry version {body.get('v')!r}")
            return False
        if hashlib.sha256(body_bytes).hexdigest() != digest:
            self._fail("hash mismatch: the entry's content was changed")
            return False
        if body.get("prev_hash") != self.prev_hash:
            self._fail(
                f"prev_hash does not match the hash of entry {want - 1}: "
                "an entry was changed, removed, inserted or reordered"
            )
            return False
        if self.keys is not None:
            key_id = body.get("key_id")
            if not isinstance(key_id, str) or key_id not in self.keys.keys:
                self._fail(f"signed with unknown HMAC key id {key_id!r}")
                return False
            if not self.keys.check(key_id, digest, mac):
                self._fail(f"HMAC mismatch: not signed by key {key_id!r} (forged or altered)")
                return False
        if want in self.expected:
            if self.expected[want] != digest:
                self._fail(f"hash differs from the signed checkpoint at count {want}")
                return False
            self.matched += 1
        if self.since is not None and want == self.since[0] and self.since[1] != digest:
            self._fail(
                f"hash differs from the earlier checkpoint (--since) at count {want}: "
                "the chain was rewritten, it does not extend that checkpoint"
            )
            return False
        self.prev_hash = digest
        self.next_seq = want + 1
        return True

    def reject_last(self, reason: str) -> None:
        """Mark the entry just added as the first bad one (a check made outside the chain)."""
        self.next_seq -= 1
        self._fail(reason)

    def add_entry(self, entry: Entry) -> bool:
        """An entry from the database: re-encode its body canonically, then check it."""
        body = entry.body()
        return self.add(body, canonical(body), entry.hash, entry.hmac)

    def finish(self, *, require_covered: bool = False) -> Report:
        last = self.next_seq - 1
        if self.problem is None and self.since is not None and self.since[0] > last:
            self.problem = Problem(
                last + 1,
                f"missing: {missing(last + 1, self.since[0])}: the chain ends at {last} but "
                f"the earlier checkpoint (--since) covers {self.since[0]} (rolled back)",
            )
        if self.problem is None and self.expected:
            beyond = max(self.expected)
            if beyond > last:
                self.problem = Problem(
                    last + 1,
                    f"missing: {missing(last + 1, beyond)}: the chain ends at {last} but a "
                    f"signed checkpoint covers {beyond} entries (truncated)",
                )
            elif require_covered and last > beyond:
                self.problem = Problem(
                    beyond + 1,
                    f"not covered by a signed checkpoint (the last covers {beyond}): "
                    "appended after the export, or the final checkpoint was removed",
                )
        if self.problem is None and require_covered and not self.expected:
            self.problem = Problem(self.start_seq, "no signed checkpoint vouches for the chain")
        return Report(
            ok=self.problem is None,
            tenant=self.tenant,
            count=last - self.start_seq + 1,
            first_seq=self.start_seq,
            last_seq=last,
            head_hash=self.prev_hash,
            checkpoints=self.matched,
            problem=self.problem,
        )
