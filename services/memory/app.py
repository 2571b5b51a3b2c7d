"""memory wiring: `enclave serve memory` runs the memory service that bootstrap.py builds
(memory.retrieve, memory.ground, memory.rag, memory.upload, memory.store)."""

from __future__ import annotations

from libs.service import ServiceApp
from libs.settings import Settings
from services.memory.bootstrap import build


def build_app(settings: Settings) -> ServiceApp:
    return ServiceApp(settings, "memory", build)
