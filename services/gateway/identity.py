"""Who is asking, as one `Credential`, whatever they presented: an API key or an OIDC JWT.

The gateway's `authorize()` hands the bearer token here and gets back the credential and
the RBAC decision (libs.rbac) for the permission the route needs, with the tenant it acts
in. API keys (`ek_<id>_<secret>`) are looked up through the `KeyLookup` port (SQL, cached:
adapters/sql_keys.py); anything else that looks like a JWT goes to the OIDC verifier when
an issuer is configured. A cross-tenant attempt is recorded through the `Denials` port
(libs.audit.record_access_denied) before the 403 goes back.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from libs.errors import EnclaveError
from libs.rbac import Credential, CrossTenantRefused, Decision, Permission, decide
from services.gateway.oidc import OidcVerifier

KeyLookup = Callable[[str], Awaitable[Credential | None]]  # presented key -> credential
Denials = Callable[[CrossTenantRefused], Awaitable[object]]  # records a refused attempt
OIDC_SUBJECT_PREFIX = "oidc:"


def looks_like_jwt(token: str) -> bool:
    parts = token.split(".")
    return len(parts) == 3 and all(parts[:2])


class Identifier:
    def __init__(
        self, keys: KeyLookup, oidc: OidcVerifier | None = None, denials: Denials | None = None
    ) -> None:
        self.keys = keys
        self.oidc = oidc
        self.denials = denials

    async def credential(self, token: str) -> Credential:
        if self.oidc is not None and looks_like_jwt(token):
            identity = await self.oidc.verify(token)
            return Credential(
                subject=OIDC_SUBJECT_PREFIX + identity.subject,
                tenant=identity.tenant,
                roles=identity.roles,
            )
        credential = await self.keys(token)
        if credential is None:
            raise EnclaveError(401, "Incorrect API key provided.", "invalid_api_key")
        return credential

    async def authorize(
        self, token: str, permission: Permission, tenant_header: str | None
    ) -> tuple[Credential, Decision]:
        credential = await self.credential(token)
        try:
            return credential, decide(credential, permission, tenant_header)
        except CrossTenantRefused as refused:
            if self.denials is not None:
                await self.denials(refused)
            raise
