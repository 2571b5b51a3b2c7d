"""Building and tampering with chains and bundles in tests."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from libs.audit import new_event
from services.audit import bundle, checkpoint
from services.audit.chain import GENESIS, Entry, HmacKeys, extend

SECRET = "11" * 32


def events(n: int, tenant: str = "acme", start: int = 0) -> list[dict[str, Any]]:
    return [
        new_event(
            tenant,
            "gateway",
            "chat.completions",
            service="gateway",
            actor=f"key{i % 3}",
            request_id=f"req-{start + i}",
            model="enclave-instant",
            digests={"request": "sha256:" + "ab" * 32},
            attrs={"stream": i % 2 == 0, "n": i},
        ).model_dump(exclude_none=True)
        for i in range(start, start + n)
    ]


def keys() -> HmacKeys:
    return HmacKeys({"k1": bytes.fromhex(SECRET)}, "k1")


def chain(n: int, tenant: str = "acme", k: HmacKeys | None = None) -> list[Entry]:
    return extend(tenant, 0, GENESIS, events(n, tenant), k or keys())


def bundle_lines(
    entries: list[Entry], signer: Ed25519PrivateKey, tenant: str = "acme"
) -> list[bytes]:
    """A bundle as the service exports it: header, a checkpoint half way, the entries, and
    the export checkpoint over the head last."""
    head = entries[-1]
    half = checkpoint.sign(
        tenant, len(entries) // 2, entries[len(entries) // 2 - 1].hash, "t1", signer
    )
    export = checkpoint.sign(tenant, head.seq, head.hash, "t2", signer)
    return [
        bundle.header_line(tenant, head.seq, head.hash, "t2"),
        bundle.checkpoint_line(half),
        *(e.line() for e in entries),
        bundle.checkpoint_line(export),
    ]


def write_keys(
    home: Path, signer: Ed25519PrivateKey, k: HmacKeys | None = None
) -> tuple[Path, Path]:
    k = k or keys()
    key_file = home / "audit.key"
    key_file.write_text("".join(f"{kid} {sec.hex()}\n" for kid, sec in k.keys.items()))
    pub = home / "audit.pub"
    pub.write_bytes(
        signer.public_key().public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo)
    )
    return key_file, pub


def entry_line_index(lines: list[bytes], seq: int) -> int:
    for i, line in enumerate(lines):
        if line.startswith(b'{"body":') and orjson.loads(line)["body"]["seq"] == seq:
            return i
    raise KeyError(seq)
