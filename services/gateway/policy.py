"""Which role may do what. The tenant always comes from the credential, never the client."""

from __future__ import annotations

from enum import StrEnum


class Action(StrEnum):
    INFER = "infer"  # chat, completions, embeddings
    LIST_MODELS = "list_models"
    MANAGE_KEYS = "manage_keys"
    MANAGE_MODELS = "manage_models"
    READ_AUDIT = "read_audit"
    EXEC_CODE = "exec_code"  # POST /v1/sandbox/exec


ALLOWED: dict[Action, frozenset[str]] = {
    Action.INFER: frozenset({"admin", "developer", "user"}),
    Action.LIST_MODELS: frozenset({"admin", "developer", "user", "auditor"}),
    Action.MANAGE_KEYS: frozenset({"admin"}),
    Action.MANAGE_MODELS: frozenset({"admin"}),
    Action.READ_AUDIT: frozenset({"admin", "auditor"}),
    Action.EXEC_CODE: frozenset({"admin", "developer"}),
}


def may(role: str, action: Action) -> bool:
    return role in ALLOWED[action]
