"""trainer wiring: `enclave serve trainer` runs the trainer that bootstrap.py builds
(the `trainer.jobs` pull consumer, `trainer.cancel` on every replica, `trainer.api`)."""

from __future__ import annotations

from libs.service import ServiceApp
from libs.settings import Settings
from services.trainer.bootstrap import build


def build_app(settings: Settings) -> ServiceApp:
    return ServiceApp(settings, "trainer", build)
