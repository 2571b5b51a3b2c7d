"""guardrails wiring: `enclave serve guardrails` runs the service that bootstrap.py builds
(guardrails.input and guardrails.output, verdicts audited, policy changes announced)."""

from __future__ import annotations

from libs.service import ServiceApp
from libs.settings import Settings
from services.guardrails.bootstrap import build


def build_app(settings: Settings) -> ServiceApp:
    return ServiceApp(settings, "guardrails", build)
