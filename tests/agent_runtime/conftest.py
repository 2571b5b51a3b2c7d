"""The agent tests run code in the sandbox tests' real bubblewrap backend."""

from tests.sandbox.conftest import LIMITS, backend, seccomp

__all__ = ["LIMITS", "backend", "seccomp"]
