"""API keys and OIDC tokens to one Credential, then the RBAC decision, with a real issuer."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from libs.errors import EnclaveError
from libs.rbac import Credential, CrossTenantRefused, Permission
from services.gateway.adapters.oidc_jwks import HttpJwks
from services.gateway.identity import Identifier, looks_like_jwt
from services.gateway.oidc import JwksCache, OidcConfig, OidcVerifier
from tests.identity.local_issuer import LocalIssuer

KEYS = {"ek_k1_secret": Credential("k1", "acme", frozenset({"user"}))}


async def _lookup(token: str) -> Credential | None:
    return KEYS.get(token)


@pytest.fixture
def issuer() -> Iterator[LocalIssuer]:
    with LocalIssuer() as running:
        yield running


async def test_keys_and_tokens_become_credentials_and_decisions(issuer: LocalIssuer) -> None:
    refused: list[CrossTenantRefused] = []

    async def record(attempt: CrossTenantRefused) -> None:
        refused.append(attempt)

    async with httpx.AsyncClient() as client:
        config = OidcConfig(issuer=issuer.url, audience="enclave", roles_claim="realm_access.roles")
        verifier = OidcVerifier(config, JwksCache(HttpJwks(issuer.url, client), 0))
        ident = Identifier(_lookup, verifier, record)
        cred, decision = await ident.authorize(issuer.token(), Permission.EXEC_CODE, None)
        assert cred.subject == "oidc:user-1" and decision.tenant == "acme"
        cred, decision = await ident.authorize("ek_k1_secret", Permission.INFER, "acme")
        assert cred.subject == "k1" and decision.tenant == "acme"
        with pytest.raises(EnclaveError) as caught:  # a user key may not run code
            await ident.authorize("ek_k1_secret", Permission.EXEC_CODE, None)
        assert caught.value.info.status == 403
        with pytest.raises(CrossTenantRefused):
            await ident.authorize(issuer.token(), Permission.INFER, "globex")
        assert [r.attempt.target_tenant for r in refused] == ["globex"]
        with pytest.raises(EnclaveError) as caught:
            await ident.authorize("ek_nope_x", Permission.INFER, None)
        assert caught.value.info.code == "invalid_api_key"
        # Without an issuer configured, a JWT is just an unknown key.
        with pytest.raises(EnclaveError) as caught:
            await Identifier(_lookup).authorize(issuer.token(), Permission.INFER, None)
        assert caught.value.info.code == "invalid_api_key"


def test_looks_like_jwt() -> None:
    assert looks_like_jwt("a.b.c") and looks_like_jwt("a.b.")
    assert not looks_like_jwt("ek_k1_secret") and not looks_like_jwt("a..c")
