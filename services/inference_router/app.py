"""inference_router wiring: `enclave serve inference_router` runs the router that
bootstrap.py builds (inference.route, inference.generate, inference.embed,
inference.models)."""

from __future__ import annotations

from libs.service import ServiceApp
from libs.settings import Settings
from services.inference_router.bootstrap import build


def build_app(settings: Settings) -> ServiceApp:
    return ServiceApp(settings, "inference_router", build)
