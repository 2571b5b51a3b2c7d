"""Which role may do what. The tenant always comes from the credential, never the client."""

from __future__ import annotations

from enum import StrEnum

from libs import rbac


class Action(StrEnum):
    INFER = "infer"  # chat, completions, embeddings
    LIST_MODELS = "list_models"
    MANAGE_KEYS = "manage_keys"
    MANAGE_MODELS = "manage_models"
    READ_AUDIT = "read_audit"
    EXEC_CODE = "exec_code"  # POST /v1/sandbox/exec
    FINE_TUNE = "fine_tune"  # /v1/fine_tuning/jobs
    APPROVE_TOOLS = "approve_tools"  # /v1/approvals: agents' paused tool calls
    MANAGE_SKILLS = "manage_skills"  # /v1/skills: the tenant's SKILL.md skills


# The roles of each action are libs.rbac's matrix (one table for routes and bus operations).
# The platform operator waits until authorize() reads its OpenAI-Tenant header (rbac.decide).
ALLOWED: dict[Action, frozenset[str]] = {
    action: frozenset(
        role.value
        for role in rbac.ALLOWED[rbac.Permission(action.value)]
        if role is not rbac.Role.PLATFORM_OPERATOR
    )
    for action in Action
}


def may(role: str, action: Action) -> bool:
    return role in ALLOWED[action]
