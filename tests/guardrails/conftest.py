"""The injection model, trained once per machine for these tests (as the service caches it),
a screener with real Presidio, and the packaged policy."""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest

from services.guardrails.adapters.classifier_cache import load_or_train
from services.guardrails.adapters.operators import PresidioOperators
from services.guardrails.adapters.policy_files import PolicyStore
from services.guardrails.adapters.presidio import PresidioPii
from services.guardrails.injection import InjectionDetector, InjectionModel
from services.guardrails.policy import EffectivePolicy
from services.guardrails.screen import Screener


@pytest.fixture(scope="session")
def injection_model() -> InjectionModel:
    model: InjectionModel = load_or_train(Path(tempfile.gettempdir()) / "enclave-guardrails-models")
    return model


@pytest.fixture(scope="session")
def screener(injection_model: InjectionModel) -> Screener:
    return Screener(PresidioPii(), InjectionDetector(injection_model), PresidioOperators())


@pytest.fixture(scope="session")
def policy(tmp_path_factory: pytest.TempPathFactory) -> EffectivePolicy:
    """The packaged global policy, as tenant acme gets it."""
    return PolicyStore(tmp_path_factory.mktemp("policies")).get("acme")
