"""The anonymizer operators the screener needs, from presidio-anonymizer."""

from __future__ import annotations

from services.guardrails.adapters import presidio


class PresidioOperators:
    def mask(self, value: str) -> str:
        return presidio.mask(value)

    def hashed(self, value: str, entity: str, tenant: str) -> str:
        return presidio.hashed(value, entity, tenant)
