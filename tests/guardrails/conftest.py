"""The injection model, trained once per machine for these tests (as the service caches it)."""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest

from services.guardrails.adapters.classifier_cache import load_or_train
from services.guardrails.injection import InjectionModel


@pytest.fixture(scope="session")
def injection_model() -> InjectionModel:
    model: InjectionModel = load_or_train(Path(tempfile.gettempdir()) / "enclave-guardrails-models")
    return model
