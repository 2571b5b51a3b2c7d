"""Structure-aware output screening: a JSON document (a json_object / json_schema answer, a
tool call's arguments) is rewritten only inside its string values, so that it stays valid
JSON with the same keys, numbers, booleans and nesting (and so valid against its schema
wherever the schema does not constrain the string's content).

A document that does not parse cannot be screened this way: the caller gets a clear reason
and the answer is blocked, never rewritten as prose (which is what turned `{"a": 1}` into
`{"a": <PHONE_NUMBER>}`). Pure: no I/O.
"""

from __future__ import annotations

import json
from collections.abc import Callable

from libs.events import GuardrailEntity
from services.guardrails.linear import compile_linear

# One JSON string token; in a valid document, scanning left to right finds exactly them.
_STRING = compile_linear(r'"(?:[^"\\]|\\.)*"')
_KEY_AFTER = compile_linear(r"^\s*:")

# (text) -> (rewritten text, entities with offsets in that text)
Rewrite = Callable[[str], tuple[str, list[GuardrailEntity]]]


class NotJson(ValueError):
    """The document is not valid JSON; it is blocked with this reason."""


def rewrite_json(document: str, rewrite: Rewrite) -> tuple[str, list[GuardrailEntity]]:
    """The document with each string value rewritten by `rewrite` (keys are left alone),
    and the entities found, their offsets in the original document (approximate inside a
    string with escapes)."""
    try:
        json.loads(document)
    except ValueError as exc:
        raise NotJson(
            f"output: the answer must be a JSON document and is not ({exc}); it is blocked "
            "rather than rewritten, since a rewrite could not keep it valid"
        ) from None
    out: list[str] = []
    entities: list[GuardrailEntity] = []
    pos = 0
    for m in _STRING.finditer(document):
        start, end = m.span()
        if _KEY_AFTER.search(document[end : end + 64]):
            continue
        value = json.loads(m.group())
        new, found = rewrite(value)
        if not found:
            continue
        for e in found:
            shift = {"start": start + 1 + e.start, "end": start + 1 + e.end}
            entities.append(e.model_copy(update=shift))
        out.append(document[pos:start] + json.dumps(new, ensure_ascii=False))
        pos = end
    out.append(document[pos:])
    result = "".join(out)
    json.loads(result)  # a rewrite inside strings cannot break the document; proven here
    return result, entities
