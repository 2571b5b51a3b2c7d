"""sandbox wiring: `enclave serve sandbox` runs the service that bootstrap.py builds
(sandbox.exec answered in a fresh sandbox, every exec audited)."""

from __future__ import annotations

from libs.service import ServiceApp
from libs.settings import Settings
from services.sandbox.bootstrap import build


def build_app(settings: Settings) -> ServiceApp:
    return ServiceApp(settings, "sandbox", build)
