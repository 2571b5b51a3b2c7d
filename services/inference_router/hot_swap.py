"""Hot swap of the adapter versions a worker serves, decided without I/O (ports injected).

State: the versions loaded (by AdapterKey = tenant + digest), each with its requests in
flight, and per alias `tenant/base:ft` the version that serves it now.

- `acquire` leases the version a request asks for: a pinned digest (loaded on demand
  through the `load` port, which verifies the bundle) or the alias's current version.
  A request that names an alias this worker does not serve, or a digest whose load
  fails, is refused (AdapterRefused): never answered by the base model.
- `changed` applies a `models.changed` promotion or rollback: the new version is loaded
  first; if that fails the previous one keeps serving the alias and a `load_failed`
  event is published. Otherwise the alias moves at once (new requests get the new
  version) and the old version drains: it stays loaded until its last request in flight
  is released, then it is unloaded and `drained` is published.
- `release` ends a lease (and finishes a drain).
- `overdue` lists drains older than the drain timeout (by the injected clock): requests
  still running on an old version, for the operator; they are never cut off.

Versions loaded on demand that no alias uses and nothing runs on are unloaded when more
than `max_loaded` versions are held, least recently used first.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from libs.events import ModelsChanged
from services.inference_router.adapter_choice import AdapterKey, AdapterRefused, Wanted


class SwapPorts(Protocol):
    def load(self, key: AdapterKey) -> None:
        """Verify and load the version (raises AdapterRefused or any error when it cannot)."""
        ...

    def unload(self, key: AdapterKey) -> None: ...

    def publish(self, event: ModelsChanged) -> None: ...


@dataclass
class _Version:
    in_flight: int = 0
    draining_since: float | None = None
    drain_alias: str | None = None
    last_used: float = 0.0


@dataclass(frozen=True)
class Lease:
    key: AdapterKey


class HotSwap:
    def __init__(
        self,
        ports: SwapPorts,
        clock: Callable[[], float],
        *,
        base_model: str,
        drain_timeout_s: float = 60.0,
        max_loaded: int = 8,
        worker: str | None = None,
    ) -> None:
        self.ports = ports
        # Told of every load (digest, loaded?): the worker's adapter metrics.
        self.on_load: Callable[[str, bool], None] = lambda digest, ok: None
        self.clock = clock
        self.base_model = base_model
        self.drain_timeout_s = drain_timeout_s
        self.max_loaded = max_loaded
        self.worker = worker
        self.versions: dict[AdapterKey, _Version] = {}
        self.serving: dict[str, AdapterKey] = {}  # alias -> the version serving it
        self._lock = threading.RLock()

    # -- requests --
    def acquire(self, want: Wanted) -> Lease:
        with self._lock:
            if want.alias is not None:
                key = self.serving.get(want.alias)
                if key is None and want.digest is not None:
                    # Not told of this alias yet (a worker just started): the registry's
                    # promoted version, given by the router, serves it from now on.
                    key = AdapterKey(want.tenant, want.digest)
                    if key not in self.versions:
                        self._load(key)
                        self._evict()
                    self.serving[want.alias] = key
                if key is None:
                    raise AdapterRefused(
                        f"the model {want.alias!r} is not served by this worker yet"
                        " (no promoted version was announced on models.changed)",
                        status=503,
                    )
            else:
                assert want.digest is not None
                key = AdapterKey(want.tenant, want.digest)
                if key not in self.versions:
                    self._load(key)  # raises: refused, nothing changes
                    self._evict()
            version = self.versions[key]
            version.in_flight += 1
            version.last_used = self.clock()
            return Lease(key)

    def release(self, lease: Lease) -> None:
        with self._lock:
            version = self.versions.get(lease.key)
            if version is None:
                return
            version.in_flight -= 1
            if version.draining_since is not None and version.in_flight == 0:
                self._finish_drain(lease.key, version)

    # -- promotion / rollback --
    def changed(self, event: ModelsChanged) -> None:
        if event.kind not in ("promoted", "rolled_back") or event.base_model != self.base_model:
            return
        with self._lock:
            new = AdapterKey(event.tenant, event.digest)
            old = self.serving.get(event.public_id)
            if old == new:
                return
            if new not in self.versions:
                try:
                    self._load(new)
                except Exception as exc:
                    reason = exc.message if isinstance(exc, AdapterRefused) else repr(exc)
                    self.ports.publish(
                        self._event(event, "load_failed", new.digest, old, reason=reason)
                    )
                    return
            self.versions[new].draining_since = None  # a rollback may revive a draining one
            self.serving[event.public_id] = new
            if old is not None and old not in self.serving.values():
                version = self.versions[old]
                version.draining_since = self.clock()
                version.drain_alias = event.public_id
                if version.in_flight == 0:
                    self._finish_drain(old, version)
            self._evict()

    def overdue(self) -> list[tuple[AdapterKey, int]]:
        """Old versions still draining past the timeout, with their requests in flight."""
        now = self.clock()
        with self._lock:
            return [
                (key, v.in_flight)
                for key, v in sorted(self.versions.items())
                if v.draining_since is not None and now - v.draining_since > self.drain_timeout_s
            ]

    # -- internals --
    def _load(self, key: AdapterKey) -> None:
        try:
            self.ports.load(key)
        except Exception:
            self.on_load(key.digest, False)
            raise
        self.on_load(key.digest, True)
        self.versions[key] = _Version(last_used=self.clock())

    def _finish_drain(self, key: AdapterKey, version: _Version) -> None:
        del self.versions[key]
        self.ports.unload(key)
        alias = version.drain_alias or ""
        self.ports.publish(
            ModelsChanged(
                kind="drained",
                tenant=key.tenant,
                base_model=self.base_model,
                public_id=alias,
                digest=key.digest,
                worker=self.worker,
            )
        )

    def _evict(self) -> None:
        """Unload idle on-demand versions beyond max_loaded, least recently used first."""
        in_use = set(self.serving.values())
        idle = sorted(
            (v.last_used, key)
            for key, v in self.versions.items()
            if key not in in_use and v.in_flight == 0 and v.draining_since is None
        )
        while len(self.versions) > self.max_loaded and idle:
            _, key = idle.pop(0)
            del self.versions[key]
            self.ports.unload(key)

    def _event(
        self,
        cause: ModelsChanged,
        kind: str,
        digest: str,
        previous: AdapterKey | None,
        reason: str | None = None,
    ) -> ModelsChanged:
        return ModelsChanged.model_validate(
            {
                "kind": kind,
                "tenant": cause.tenant,
                "base_model": self.base_model,
                "public_id": cause.public_id,
                "digest": digest,
                "previous": previous.digest if previous else None,
                "reason": reason,
                "worker": self.worker,
            }
        )
