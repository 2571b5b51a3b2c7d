"""The RBAC matrix as data: every route and bus operation, every role, own or other tenant."""

from __future__ import annotations

import asyncio
from pathlib import Path

import nats
import pytest

from libs.audit import (
    AuditPublisher,
    digest,
    outbox_dir,
    record_access_denied,
    record_external_call,
)
from libs.context import RequestContext
from libs.errors import EnclaveError
from libs.events import AuditActions
from libs.rbac import (
    ALLOWED,
    BUS_OPERATIONS,
    PUBLIC_ROUTES,
    ROUTES,
    Credential,
    CrossTenantRefused,
    Permission,
    Role,
    decide,
    end_user,
    may,
    may_modify,
    route_permission,
)
from libs.settings import Settings
from libs.subjects import Subjects
from tests.infra import audit_events

OWN, OTHER = "acme", "globex"


def _cred(role: Role, subject: str = "sub-1") -> Credential:
    tenant = "_platform" if role is Role.PLATFORM_OPERATOR else OWN
    return Credential(subject=subject, tenant=tenant, roles=frozenset({role.value}))


# What each role may do, written out by hand (not derived from ALLOWED), so a change to
# the matrix has to change this table too.
EXPECTED: dict[Role, set[Permission]] = {
    Role.ADMIN: set(Permission) - {Permission.MANAGE_TENANT},
    Role.DEVELOPER: {
        Permission.INFER,
        Permission.LIST_MODELS,
        Permission.CHECK_GUARDRAILS,
        Permission.READ_FILES,
        Permission.WRITE_FILES,
        Permission.READ_MEMORIES,
        Permission.DELETE_MEMORIES,
        Permission.EXEC_CODE,
        Permission.FINE_TUNE,
        Permission.MANAGE_SKILLS,
    },
    Role.AUDITOR: {Permission.LIST_MODELS, Permission.READ_AUDIT, Permission.READ_USAGE},
    Role.USER: {
        Permission.INFER,
        Permission.LIST_MODELS,
        Permission.CHECK_GUARDRAILS,
        Permission.READ_FILES,
        Permission.WRITE_FILES,
        Permission.READ_MEMORIES,
        Permission.DELETE_MEMORIES,
    },
    Role.PLATFORM_OPERATOR: {
        Permission.LIST_MODELS,
        Permission.MANAGE_KEYS,
        Permission.MANAGE_MODELS,
        Permission.MANAGE_PROVIDERS,
        Permission.MANAGE_TENANT,
        Permission.ERASE_TENANT_DATA,
        Permission.READ_USAGE,
    },
}


def _served_routes() -> set[tuple[str, str]]:
    from services.gateway.app import create_app
    from services.gateway.hot_path import ROUTES as STREAMED

    app = create_app(Settings(home=Path("/nonexistent-enclave-home")))
    while not hasattr(app, "routes"):  # the FastAPI app under the ASGI layers
        app = app.app
    served = {("POST", path) for path in STREAMED}
    for route in app.routes:
        methods = getattr(route, "methods", None) or set()
        path = getattr(route, "path", "")
        if not path.startswith(("/v1/", "/healthz", "/readyz")):
            continue  # FastAPI's own docs and schema routes
        served |= {(m, path) for m in methods if m != "HEAD"}
    return served


def test_every_served_route_is_in_the_matrix_and_nothing_else() -> None:
    served = _served_routes()
    assert served - PUBLIC_ROUTES == set(ROUTES)


def test_every_bus_operation_names_a_subject() -> None:
    for name in BUS_OPERATIONS:
        assert callable(getattr(Subjects, name, None)) or isinstance(
            getattr(Subjects, name, None), property
        ), name


@pytest.mark.parametrize("role", list(Role))
def test_role_by_route_by_own_or_other_tenant(role: Role) -> None:
    cred = _cred(role)
    for (method, path), permission in sorted(ROUTES.items()):
        assert route_permission(method, path) is permission
        allowed = permission in EXPECTED[role]
        if role is Role.PLATFORM_OPERATOR:
            # No tenant named: refused whatever the route.
            with pytest.raises(EnclaveError) as caught:
                decide(cred, permission, None)
            assert caught.value.info.code == "tenant_required"
            targets: list[str | None] = [OWN, OTHER]  # it may act for any one tenant it names
        else:
            targets = [None, OWN]
        for header in targets:
            if allowed:
                decision = decide(cred, permission, header)
                assert decision.tenant == (header or OWN), (role, method, path)
            else:
                with pytest.raises(EnclaveError) as caught:
                    decide(cred, permission, header)
                assert caught.value.info.status == 403, (role, method, path)
                assert caught.value.info.code == "insufficient_permissions"
        if role is not Role.PLATFORM_OPERATOR:
            # Another tenant: refused even where the role would be allowed, and auditable.
            with pytest.raises(CrossTenantRefused) as refused:
                decide(cred, permission, OTHER)
            assert refused.value.info.status == 403
            assert refused.value.attempt.target_tenant == OTHER
            assert refused.value.attempt.credential_tenant == OWN


@pytest.mark.parametrize("role", list(Role))
def test_bus_operations_follow_the_same_matrix(role: Role) -> None:
    for operation, permission in BUS_OPERATIONS.items():
        assert may({role.value}, permission) is (permission in EXPECTED[role]), operation
        assert ALLOWED[permission]  # no operation is open to nobody


def test_unknown_roles_grant_nothing_and_several_roles_add_up() -> None:
    assert not may({"offline_access", "uma_authorization"}, Permission.INFER)
    both = Credential("s", OWN, frozenset({"auditor", "user"}))
    assert decide(both, Permission.READ_AUDIT, None).tenant == OWN
    assert decide(both, Permission.INFER, OWN).tenant == OWN


def test_an_operator_acts_with_its_own_permissions_only() -> None:
    op = Credential("op", "_platform", frozenset({"platform_operator", "admin"}))
    decision = decide(op, Permission.MANAGE_KEYS, OTHER)
    assert decision.acting_operator and decision.roles == {Role.PLATFORM_OPERATOR}
    with pytest.raises(EnclaveError):  # its admin role does not come along
        decide(op, Permission.READ_FILES, OTHER)


def test_the_user_field() -> None:
    for role in (Role.ADMIN, Role.DEVELOPER):
        assert end_user(_cred(role), "alice") == "alice"
        assert end_user(_cred(role), None) is None
    user = _cred(Role.USER, subject="bob")
    assert end_user(user, None) == "bob"
    assert end_user(user, "bob") == "bob"
    with pytest.raises(EnclaveError) as caught:
        end_user(user, "alice")
    assert caught.value.info.status == 403 and caught.value.info.param == "user"
    for role in (Role.AUDITOR, Role.PLATFORM_OPERATOR):
        assert end_user(_cred(role), None) is None
        with pytest.raises(EnclaveError):
            end_user(_cred(role), "alice")


def test_owner_or_admin_may_modify() -> None:
    assert may_modify(_cred(Role.USER, "bob"), "bob")
    assert not may_modify(_cred(Role.USER, "bob"), "alice")
    assert not may_modify(_cred(Role.DEVELOPER, "dev"), "alice")
    assert may_modify(_cred(Role.ADMIN, "root"), "alice")


async def test_a_cross_tenant_attempt_is_audited_in_both_chains(
    bus_settings: Settings, tmp_path: Path
) -> None:
    nc = await nats.connect(bus_settings.nats_url)
    tap = await audit_events(nc, bus_settings.subjects.audit_all)
    got = tap.events
    publisher = AuditPublisher(nc, bus_settings.subjects, "gateway", outbox_dir(tmp_path))
    try:
        with pytest.raises(CrossTenantRefused) as refused:
            decide(_cred(Role.DEVELOPER), Permission.READ_FILES, OTHER)
        attempt = refused.value.attempt
        ctx = RequestContext(
            tenant=attempt.credential_tenant, request_id="req-x", actor=attempt.subject
        )
        await record_access_denied(
            publisher, ctx, target_tenant=attempt.target_tenant, operation=attempt.operation
        )
        for _ in range(50):
            if len(got) == 2:
                break
            await asyncio.sleep(0.05)
        assert publisher.outbox_size() == 0  # both acked by the stream
        assert sorted(e.tenant for e in got) == [OWN, OTHER]
        for event in got:
            assert event.action == AuditActions.ACCESS_DENIED
            assert event.outcome == "denied"
            assert event.attrs["operation"] == "read_files"
            assert event.attrs["target_tenant"] == OTHER
    finally:
        await tap.close()
        await nc.close()


async def test_an_external_call_is_audited_with_who_model_tokens_and_redactions(
    bus_settings: Settings, tmp_path: Path
) -> None:
    nc = await nats.connect(bus_settings.nats_url)
    tap = await audit_events(nc, bus_settings.subjects.audit_all)
    got = tap.events
    publisher = AuditPublisher(nc, bus_settings.subjects, "worker", outbox_dir(tmp_path))
    sent = b'{"messages":[{"role":"user","content":"[REDACTED_PERSON]"}]}'
    try:
        ctx = RequestContext(tenant=OWN, request_id="req-y", actor="key-1", role="developer")
        await record_external_call(
            publisher,
            ctx,
            provider="openai-eu",
            pool="openai-eu-mini",
            model="gpt-4o-mini",
            prompt_tokens=12,
            completion_tokens=30,
            redactions=1,
            sent=sent,
        )
        for _ in range(50):
            if got:
                break
            await asyncio.sleep(0.05)
        [event] = got
        assert (event.tenant, event.actor, event.role) == (OWN, "key-1", "developer")
        assert event.action == AuditActions.EXTERNAL_CALL and event.model == "gpt-4o-mini"
        assert event.attrs["provider"] == "openai-eu" and event.attrs["redactions"] == 1
        assert event.attrs["prompt_tokens"] == 12 and event.attrs["completion_tokens"] == 30
        assert event.digests["sent"] == digest(sent)
        assert "REDACTED" not in event.model_dump_json()  # the digest, never the text
    finally:
        await tap.close()
        await nc.close()
