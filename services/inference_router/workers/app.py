"""Worker wiring: `enclave serve worker --pool NAME` runs one worker of that pool, as
bootstrap.py builds it, in the pool's queue group."""

from __future__ import annotations

from libs.service import ServiceApp
from libs.settings import Settings
from services.inference_router.workers.bootstrap import builder


def build_app(settings: Settings, pool_name: str) -> ServiceApp:
    return ServiceApp(settings, f"worker-{pool_name}", builder(settings, pool_name))
