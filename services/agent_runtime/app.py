"""agent_runtime wiring: `enclave serve agent_runtime` runs the runtime that bootstrap.py
builds (consumes chat.requested from the JetStream work queue, runs each turn)."""

from __future__ import annotations

from libs.service import ServiceApp
from libs.settings import Settings
from services.agent_runtime.bootstrap import build


def build_app(settings: Settings) -> ServiceApp:
    return ServiceApp(settings, "agent_runtime", build)
