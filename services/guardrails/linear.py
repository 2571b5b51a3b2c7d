"""Linear-time regular expressions: every pattern the guardrails run goes through RE2.

RE2 (google-re2 from PyPI) matches in time linear in the text whatever the pattern, so no
request can make a pattern backtrack: `"awskey" * 16000` against the AWS-secret pattern
takes well under a millisecond. The price is RE2's syntax: no look-around and no
back-references. Tenant patterns (custom recognisers, denied output patterns) that need
them are rejected when the policy loads, naming the pattern. Pure: no I/O.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

import re2

_OPTIONS = re2.Options()
_OPTIONS.log_errors = False
_OPTIONS_I = re2.Options()
_OPTIONS_I.log_errors = False
_OPTIONS_I.case_sensitive = False


class UnsupportedPattern(ValueError):
    """A pattern RE2 cannot run in linear time (look-around, back-references) or at all."""


@lru_cache(maxsize=1024)
def compile_linear(pattern: str, ignore_case: bool = False) -> Any:
    """The compiled pattern; raises UnsupportedPattern with RE2's reason."""
    try:
        return re2.compile(pattern, _OPTIONS_I if ignore_case else _OPTIONS)
    except re2.error as exc:
        reason = exc.args[0].decode() if exc.args and isinstance(exc.args[0], bytes) else exc
        raise UnsupportedPattern(
            f"pattern {pattern!r} is not supported in linear time (RE2: {reason}); "
            "look-around and back-references are not allowed"
        ) from None
