"""Fixtures of the trainer tests: an isolated bus prefix, as the audit tests make it."""

from tests.audit.conftest import bus_settings

__all__ = ["bus_settings"]
