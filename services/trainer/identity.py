"""What an adapter is called: its digest and its public id. No I/O.

An adapter version is immutable and addressed by the digest of its files:

    digest = "sha256:" + SHA-256 over the lines "<name>\\0<sha256 hex of the file>\\n",
             one per file of ADAPTER_FILES, in name order

so the same weights and config give the same digest on every machine, and any change to
either gives another. The eval report and metadata travel beside the adapter in its
bundle but are not part of its identity (an adapter re-evaluated is the same adapter).

A tenant names a version by its public id `tenant/base:ft-vN` (N counts that tenant's
versions of that base model from 1), or `tenant/base:ft` for the version promoted to
serve; `resolve` turns either into the base model plus the digest, and only ever for
the tenant who owns it.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

ADAPTER_FILES = ("adapter.safetensors", "adapter_config.json")
_ID = re.compile(r"^(?P<tenant>[^/:\s]+)/(?P<base>[^/:\s]+):ft(?:-v(?P<version>[1-9][0-9]*))?$")
_DIGEST = re.compile(r"^sha256:[0-9a-f]{64}$")


def file_digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def adapter_digest(file_digests: Mapping[str, str]) -> str:
    """The digest of an adapter from its files' SHA-256 (hex), by file name."""
    missing = [name for name in ADAPTER_FILES if name not in file_digests]
    if missing:
        raise ValueError(f"an adapter needs {', '.join(missing)}")
    h = hashlib.sha256()
    for name in sorted(ADAPTER_FILES):
        h.update(f"{name}\0{file_digests[name]}\n".encode())
    return "sha256:" + h.hexdigest()


def is_digest(value: str) -> bool:
    return bool(_DIGEST.match(value))


@dataclass(frozen=True)
class PublicId:
    tenant: str
    base_model: str
    version: int | None  # None: the promoted version

    def __str__(self) -> str:
        tail = "ft" if self.version is None else f"ft-v{self.version}"
        return f"{self.tenant}/{self.base_model}:{tail}"


def public_id(tenant: str, base_model: str, version: int | None) -> str:
    if not tenant or "/" in tenant or ":" in tenant or any(c.isspace() for c in tenant):
        raise ValueError(f"tenant {tenant!r} cannot name an adapter (no '/', ':' or spaces)")
    return str(PublicId(tenant, base_model, version))


def parse_public_id(value: str) -> PublicId | None:
    """The parts of `tenant/base:ft-vN` or `tenant/base:ft`; None if `value` is not one."""
    m = _ID.match(value)
    if not m:
        return None
    version = m.group("version")
    return PublicId(m.group("tenant"), m.group("base"), int(version) if version else None)


@dataclass(frozen=True)
class AdapterRef:
    """What a registry row says about one version (the part resolution needs)."""

    tenant: str
    base_model: str
    version: int
    digest: str
    # ready (trained), promoted (serves `:ft`), retired (was promoted), refused (by the
    # eval gate): every version stays addressable by its `ft-vN` id.
    status: str


@dataclass(frozen=True)
class Resolved:
    public_id: str
    base_model: str
    digest: str
    version: int


class NotFound(LookupError):
    """Unknown adapter, or one the caller's tenant does not own (the same answer for both)."""


def resolve(value: str, tenant: str, versions: Iterable[AdapterRef]) -> Resolved:
    """Base model and digest of the caller's adapter `value`.

    Another tenant's adapter is not found, exactly as a missing one is: a tenant learns
    nothing about adapters it does not own.
    """
    pid = parse_public_id(value)
    if pid is None:
        raise NotFound(f"{value!r} is not an adapter id (tenant/base:ft-vN)")
    if pid.tenant != tenant:
        raise NotFound(f"the model {value!r} does not exist")
    own = [v for v in versions if v.tenant == tenant and v.base_model == pid.base_model]
    if pid.version is None:
        match = [v for v in own if v.status == "promoted"]
    else:
        match = [v for v in own if v.version == pid.version]
    if not match:
        raise NotFound(f"the model {value!r} does not exist")
    found = max(match, key=lambda v: v.version)
    return Resolved(
        public_id=public_id(tenant, pid.base_model, found.version),
        base_model=found.base_model,
        digest=found.digest,
        version=found.version,
    )
