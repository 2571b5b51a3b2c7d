"""audit wiring: `enclave serve audit` runs the audit service that bootstrap.py builds
(the `audit.>` consumer, and `auditapi.*` for the gateway)."""

from __future__ import annotations

from libs.service import ServiceApp
from libs.settings import Settings
from services.audit.bootstrap import build


def build_app(settings: Settings) -> ServiceApp:
    return ServiceApp(settings, "audit", build)
