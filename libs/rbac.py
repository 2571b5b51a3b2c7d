"""Who may do what, as data: every route and every bus operation -> the roles allowed.

Pure: no I/O. The gateway's `authorize()` asks `decide()` with the credential, the
operation and the `OpenAI-Tenant` header; the services that serve a bus operation may ask
`may()` again with the context's role (defense in depth). Three rules beside the matrix:

- **Tenant.** The tenant always comes from the credential. A platform operator has no
  tenant of its own: it acts for exactly one, named by the `OpenAI-Tenant` header, with the
  operator's permissions only (no inference, no reading of a tenant's content). Any other
  credential whose header names a tenant not its own is refused (403 `cross_tenant`), and
  the caller must record the attempt (`Decision.audit_cross_tenant`, libs.audit's
  `record_access_denied`).
- **End user.** The OpenAI `user` field unlocks `user:` ACLs on documents, so only
  credentials allowed to speak for end users (admin, developer) may assert one. A
  user-role credential is its own end user: it may repeat its own subject, nothing else.
- **Owner.** Files and vector stores record their owner; deleting or replacing one needs
  the owner or an admin of the tenant.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from enum import StrEnum

from libs.errors import EnclaveError

TENANT_HEADER = "openai-tenant"


class Role(StrEnum):
    ADMIN = "admin"
    DEVELOPER = "developer"
    AUDITOR = "auditor"
    USER = "user"
    PLATFORM_OPERATOR = "platform_operator"


class Permission(StrEnum):
    INFER = "infer"  # chat, completions, embeddings
    LIST_MODELS = "list_models"
    CHECK_GUARDRAILS = "check_guardrails"
    READ_FILES = "read_files"  # files and vector stores: list, get, search
    WRITE_FILES = "write_files"  # upload, create, attach, delete (owner rule on top)
    READ_MEMORIES = "read_memories"
    DELETE_MEMORIES = "delete_memories"
    EXEC_CODE = "exec_code"
    READ_AUDIT = "read_audit"
    MANAGE_KEYS = "manage_keys"
    MANAGE_MODELS = "manage_models"
    MANAGE_PROVIDERS = "manage_providers"
    MANAGE_POLICIES = "manage_policies"
    MANAGE_TENANT = "manage_tenant"  # a tenant's record and limits, its whole erasure
    ERASE_TENANT_DATA = "erase_tenant_data"  # all of a tenant's memory and RAG data
    READ_USAGE = "read_usage"
    FINE_TUNE = "fine_tune"
    APPROVE_TOOLS = "approve_tools"  # list, approve and reject agents' paused tool calls
    MANAGE_SKILLS = "manage_skills"  # a tenant's SKILL.md skills: list, read, upload, delete
    MANAGE_MCP_SERVERS = "manage_mcp_servers"  # the MCP servers a tenant's agents may call


_A, _D, _AU, _U, _OP = (
    Role.ADMIN,
    Role.DEVELOPER,
    Role.AUDITOR,
    Role.USER,
    Role.PLATFORM_OPERATOR,
)

ALLOWED: dict[Permission, frozenset[Role]] = {
    Permission.INFER: frozenset({_A, _D, _U}),
    Permission.LIST_MODELS: frozenset({_A, _D, _AU, _U, _OP}),
    # Users too: screening one's own text shows verdicts, not the policy.
    Permission.CHECK_GUARDRAILS: frozenset({_A, _D, _U}),
    Permission.READ_FILES: frozenset({_A, _D, _U}),
    Permission.WRITE_FILES: frozenset({_A, _D, _U}),
    Permission.READ_MEMORIES: frozenset({_A, _D, _U}),
    Permission.DELETE_MEMORIES: frozenset({_A, _D, _U}),
    Permission.EXEC_CODE: frozenset({_A, _D}),
    Permission.READ_AUDIT: frozenset({_A, _AU}),
    Permission.MANAGE_KEYS: frozenset({_A, _OP}),
    Permission.MANAGE_MODELS: frozenset({_A, _OP}),
    Permission.MANAGE_PROVIDERS: frozenset({_A, _OP}),
    Permission.MANAGE_POLICIES: frozenset({_A}),
    Permission.MANAGE_TENANT: frozenset({_OP}),
    Permission.ERASE_TENANT_DATA: frozenset({_A, _OP}),
    Permission.READ_USAGE: frozenset({_A, _AU, _OP}),
    Permission.FINE_TUNE: frozenset({_A, _D}),
    Permission.APPROVE_TOOLS: frozenset({_A}),
    Permission.MANAGE_SKILLS: frozenset({_A, _D}),
    Permission.MANAGE_MCP_SERVERS: frozenset({_A}),
}

# Every HTTP route of the gateway (method, path as FastAPI spells it) -> its permission.
# tests/identity/test_rbac.py checks this against the routes the app really serves.
ROUTES: dict[tuple[str, str], Permission] = {
    ("POST", "/v1/chat/completions"): Permission.INFER,
    ("POST", "/v1/completions"): Permission.INFER,
    ("POST", "/v1/embeddings"): Permission.INFER,
    ("GET", "/v1/models"): Permission.LIST_MODELS,
    ("GET", "/v1/models/{model_id:path}"): Permission.LIST_MODELS,
    ("POST", "/v1/admin/keys"): Permission.MANAGE_KEYS,
    ("GET", "/v1/admin/keys"): Permission.MANAGE_KEYS,
    ("DELETE", "/v1/admin/keys/{key_id}"): Permission.MANAGE_KEYS,
    ("GET", "/v1/audit/entries"): Permission.READ_AUDIT,
    ("POST", "/v1/audit/verify"): Permission.READ_AUDIT,
    ("GET", "/v1/audit/export"): Permission.READ_AUDIT,
    ("POST", "/v1/guardrails/check"): Permission.CHECK_GUARDRAILS,
    ("POST", "/v1/files"): Permission.WRITE_FILES,
    ("GET", "/v1/files"): Permission.READ_FILES,
    ("GET", "/v1/files/{file_id}"): Permission.READ_FILES,
    ("DELETE", "/v1/files/{file_id}"): Permission.WRITE_FILES,
    ("POST", "/v1/vector_stores"): Permission.WRITE_FILES,
    ("GET", "/v1/vector_stores"): Permission.READ_FILES,
    ("GET", "/v1/vector_stores/{vs_id}"): Permission.READ_FILES,
    ("DELETE", "/v1/vector_stores/{vs_id}"): Permission.WRITE_FILES,
    ("POST", "/v1/vector_stores/{vs_id}/search"): Permission.READ_FILES,
    ("POST", "/v1/vector_stores/{vs_id}/files"): Permission.WRITE_FILES,
    ("GET", "/v1/vector_stores/{vs_id}/files"): Permission.READ_FILES,
    ("GET", "/v1/vector_stores/{vs_id}/files/{file_id}"): Permission.READ_FILES,
    ("DELETE", "/v1/vector_stores/{vs_id}/files/{file_id}"): Permission.WRITE_FILES,
    ("GET", "/v1/memories"): Permission.READ_MEMORIES,
    ("DELETE", "/v1/memories"): Permission.DELETE_MEMORIES,
    ("DELETE", "/v1/memories/{memory_id}"): Permission.DELETE_MEMORIES,
    ("DELETE", "/v1/admin/tenant_data"): Permission.ERASE_TENANT_DATA,
    ("GET", "/v1/admin/tenant"): Permission.READ_USAGE,
    ("PUT", "/v1/admin/tenant"): Permission.MANAGE_TENANT,
    ("DELETE", "/v1/admin/tenant"): Permission.MANAGE_TENANT,
    ("GET", "/v1/admin/providers"): Permission.MANAGE_PROVIDERS,
    ("PUT", "/v1/admin/providers/{name}"): Permission.MANAGE_PROVIDERS,
    ("DELETE", "/v1/admin/providers/{name}"): Permission.MANAGE_PROVIDERS,
    ("GET", "/v1/admin/mcp_servers"): Permission.MANAGE_MCP_SERVERS,
    ("GET", "/v1/admin/mcp_servers/{name}"): Permission.MANAGE_MCP_SERVERS,
    ("PUT", "/v1/admin/mcp_servers/{name}"): Permission.MANAGE_MCP_SERVERS,
    ("DELETE", "/v1/admin/mcp_servers/{name}"): Permission.MANAGE_MCP_SERVERS,
    ("GET", "/v1/admin/usage"): Permission.READ_USAGE,
    ("GET", "/v1/admin/policy"): Permission.MANAGE_POLICIES,
    ("PUT", "/v1/admin/policy"): Permission.MANAGE_POLICIES,
    ("DELETE", "/v1/admin/policy"): Permission.MANAGE_POLICIES,
    ("GET", "/v1/admin/policy/agents/{agent}"): Permission.MANAGE_POLICIES,
    ("PUT", "/v1/admin/policy/agents/{agent}"): Permission.MANAGE_POLICIES,
    ("DELETE", "/v1/admin/policy/agents/{agent}"): Permission.MANAGE_POLICIES,
    ("GET", "/v1/admin/models"): Permission.MANAGE_MODELS,
    ("PUT", "/v1/admin/models"): Permission.MANAGE_MODELS,
    ("POST", "/v1/sandbox/exec"): Permission.EXEC_CODE,
    ("GET", "/v1/files/{file_id}/content"): Permission.READ_FILES,
    ("POST", "/v1/fine_tuning/jobs"): Permission.FINE_TUNE,
    ("GET", "/v1/fine_tuning/jobs"): Permission.FINE_TUNE,
    ("GET", "/v1/fine_tuning/jobs/{job_id}"): Permission.FINE_TUNE,
    ("POST", "/v1/fine_tuning/jobs/{job_id}/cancel"): Permission.FINE_TUNE,
    ("GET", "/v1/fine_tuning/jobs/{job_id}/events"): Permission.FINE_TUNE,
    ("GET", "/v1/fine_tuning/jobs/{job_id}/checkpoints"): Permission.FINE_TUNE,
    ("POST", "/v1/evals"): Permission.FINE_TUNE,
    ("GET", "/v1/evals"): Permission.FINE_TUNE,
    ("POST", "/v1/evals/{name}/runs"): Permission.FINE_TUNE,
    ("GET", "/v1/evals/{name}/runs"): Permission.FINE_TUNE,
    ("GET", "/v1/evals/{name}/runs/{run_id}"): Permission.FINE_TUNE,
    ("GET", "/v1/fine_tuning/learning"): Permission.FINE_TUNE,
    ("PUT", "/v1/fine_tuning/learning"): Permission.FINE_TUNE,
    ("POST", "/v1/chat/completions/{completion_id}/feedback"): Permission.INFER,
    ("GET", "/v1/approvals"): Permission.APPROVE_TOOLS,
    ("GET", "/v1/approvals/{approval_id}"): Permission.APPROVE_TOOLS,
    ("POST", "/v1/approvals/{approval_id}"): Permission.APPROVE_TOOLS,
    ("GET", "/v1/skills"): Permission.MANAGE_SKILLS,
    ("POST", "/v1/skills"): Permission.MANAGE_SKILLS,
    ("GET", "/v1/skills/{name}"): Permission.MANAGE_SKILLS,
    ("DELETE", "/v1/skills/{name}"): Permission.MANAGE_SKILLS,
    ("POST", "/v1/responses"): Permission.INFER,
    ("GET", "/v1/responses/{response_id}"): Permission.INFER,
    ("POST", "/v1/responses/{response_id}/cancel"): Permission.INFER,
}
# Open to anyone: liveness and readiness carry no tenant data.
PUBLIC_ROUTES = frozenset({("GET", "/healthz"), ("GET", "/readyz")})

# Every request/reply operation a caller's request becomes on the bus (named as
# libs.subjects.Subjects names the subject) -> the permission its context must hold.
BUS_OPERATIONS: dict[str, Permission] = {
    "chat_requested": Permission.INFER,
    "inference_generate": Permission.INFER,
    "inference_route": Permission.INFER,
    "inference_embed": Permission.INFER,
    "inference_models": Permission.LIST_MODELS,
    "guardrails_input": Permission.INFER,
    "guardrails_output": Permission.INFER,
    "memory_retrieve": Permission.READ_MEMORIES,
    "memory_store": Permission.INFER,  # remembering a turn is part of the turn
    "memory_rag": Permission.READ_FILES,
    "memory_upload": Permission.WRITE_FILES,
    "memory_ground": Permission.INFER,
    "sandbox_exec": Permission.EXEC_CODE,
    "audit_api_search": Permission.READ_AUDIT,
    "audit_api_verify": Permission.READ_AUDIT,
    "audit_api_export": Permission.READ_AUDIT,
    "trainer_jobs": Permission.FINE_TUNE,
    "trainer_cancel": Permission.FINE_TUNE,
    # Its `feedback.create` is a rating by anyone who may chat (the gateway's route checks
    # `infer`); `learning.configure` is a tenant admin's (the trainer checks the role).
    "trainer_api": Permission.FINE_TUNE,
    "agent_resume": Permission.APPROVE_TOOLS,
    "agent_skills": Permission.MANAGE_SKILLS,
    "guardrails_policies": Permission.MANAGE_POLICIES,
}

# Roles that may assert an end user in the OpenAI `user` field.
SPEAKS_FOR_END_USERS = frozenset({Role.ADMIN, Role.DEVELOPER})


@dataclass(frozen=True)
class Credential:
    """What an API key or an OIDC token says about its holder."""

    subject: str  # the key id or the token's `sub`
    tenant: str  # the operator's own tenant is ignored: it acts for the header's
    roles: frozenset[str] = field(default_factory=frozenset)


@dataclass(frozen=True)
class Decision:
    """An allowed request: the tenant it acts in, and the roles that count there."""

    tenant: str
    roles: frozenset[Role]
    acting_operator: bool = False


@dataclass(frozen=True)
class CrossTenant:
    """A refused attempt on another tenant, to be audited by the caller."""

    credential_tenant: str
    target_tenant: str
    subject: str
    operation: str


class CrossTenantRefused(EnclaveError):
    def __init__(self, attempt: CrossTenant) -> None:
        super().__init__(
            403,
            "This credential may not act for another tenant.",
            "cross_tenant",
        )
        self.attempt = attempt


def known_roles(roles: Iterable[str]) -> frozenset[Role]:
    """The roles this module knows among a credential's (an IdP adds its own: ignored)."""
    values = {r.value for r in Role}
    return frozenset(Role(r) for r in roles if r in values)


def may(roles: Iterable[str], permission: Permission) -> bool:
    allowed = ALLOWED[permission]
    return any(role in allowed for role in known_roles(roles))


def route_permission(method: str, path: str) -> Permission | None:
    """The permission a route needs; None for the public ones. A route not in the matrix
    is a programming error (KeyError), never silently open."""
    key = (method.upper(), path)
    if key in PUBLIC_ROUTES:
        return None
    return ROUTES[key]


def decide(credential: Credential, permission: Permission, tenant_header: str | None) -> Decision:
    """May this credential do this (`ROUTES[...]` or `BUS_OPERATIONS[...]`), and in which
    tenant. Raises the OpenAI-shaped error otherwise (`CrossTenantRefused`: audit it)."""
    roles = known_roles(credential.roles)
    header = (tenant_header or "").strip() or None
    if Role.PLATFORM_OPERATOR in roles:
        if header is None:
            raise EnclaveError(
                400,
                "A platform operator must name the tenant it acts for (OpenAI-Tenant header).",
                "tenant_required",
                param="OpenAI-Tenant",
            )
        acting = frozenset({Role.PLATFORM_OPERATOR})
        if Role.PLATFORM_OPERATOR not in ALLOWED[permission]:
            raise _forbidden(acting, permission)
        return Decision(tenant=header, roles=acting, acting_operator=True)
    if header is not None and header != credential.tenant:
        raise CrossTenantRefused(
            CrossTenant(credential.tenant, header, credential.subject, permission.value)
        )
    if not may(roles, permission):
        raise _forbidden(roles, permission)
    return Decision(tenant=credential.tenant, roles=roles)


def _forbidden(roles: frozenset[Role], permission: Permission) -> EnclaveError:
    names = ", ".join(sorted(r.value for r in roles)) or "none"
    return EnclaveError(
        403,
        f"The role(s) `{names}` may not perform `{permission.value}`.",
        "insufficient_permissions",
    )


def end_user(credential: Credential, asserted: str | None) -> str | None:
    """The end user a request speaks for: the `user` field where the credential may assert
    one (admin, developer), the credential's own subject for a user-role credential."""
    roles = known_roles(credential.roles)
    if roles & SPEAKS_FOR_END_USERS:
        return asserted or None
    if Role.USER in roles:
        if asserted and asserted != credential.subject:
            raise EnclaveError(
                403,
                "This credential may not speak for another end user (the `user` field).",
                "user_not_allowed",
                param="user",
            )
        return credential.subject
    if asserted:
        raise EnclaveError(
            403,
            "This credential may not assert an end user (the `user` field).",
            "user_not_allowed",
            param="user",
        )
    return None


def may_modify(credential: Credential, owner: str) -> bool:
    """Delete or replace a file or vector store: its owner, or an admin of the tenant."""
    return credential.subject == owner or Role.ADMIN in known_roles(credential.roles)
