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
    MANAGE_TENANT = "manage_tenant"  # a tenant's record and its erasure (platform operator)
    MANAGE_PROVIDERS = "manage_providers"
    MANAGE_MCP_SERVERS = "manage_mcp_servers"  # /v1/admin/mcp_servers (admin)
    MANAGE_POLICIES = "manage_policies"  # /v1/admin/policy: the tenant's guardrail policy
    READ_USAGE = "read_usage"
    CHECK_GUARDRAILS = "check_guardrails"  # POST /v1/guardrails/check
    READ_FILES = "read_files"  # files and vector stores: list, get, search
    WRITE_FILES = "write_files"  # upload, create, attach, delete (the owner rule on top)
    READ_MEMORIES = "read_memories"
    DELETE_MEMORIES = "delete_memories"
    ERASE_TENANT_DATA = "erase_tenant_data"  # DELETE /v1/admin/tenant_data


# The roles of each action are libs.rbac's matrix (one table for routes and bus operations);
# the platform operator acts for the tenant its OpenAI-Tenant header names (auth.py).
ALLOWED: dict[Action, frozenset[str]] = {
    action: frozenset(role.value for role in rbac.ALLOWED[rbac.Permission(action.value)])
    for action in Action
}
OPERATOR = rbac.Role.PLATFORM_OPERATOR.value


def may(role: str, action: Action) -> bool:
    return role in ALLOWED[action]
