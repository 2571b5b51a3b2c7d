"""OIDC bearer tokens against a real issuer on 127.0.0.1 (discovery + JWKS over HTTP)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from collections.abc import AsyncIterator, Iterator

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from libs.errors import EnclaveError
from libs.settings import Settings
from services.gateway.adapters.oidc_jwks import HttpJwks
from services.gateway.oidc import (
    Identity,
    JwksCache,
    OidcConfig,
    OidcVerifier,
    identity_from_claims,
)
from tests.identity.local_issuer import LocalIssuer


@pytest.fixture
def issuer() -> Iterator[LocalIssuer]:
    with LocalIssuer() as running:
        yield running


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=5) as http:
        yield http


def _verifier(
    issuer: LocalIssuer, client: httpx.AsyncClient, min_refresh_s: float = 0.0
) -> OidcVerifier:
    settings = Settings(
        oidc_issuer=issuer.url,
        oidc_roles_claim="realm_access.roles",
        oidc_jwks_min_refresh_s=min_refresh_s,
    )
    config = OidcConfig.from_settings(settings)
    return OidcVerifier(config, JwksCache(HttpJwks(issuer.url, client), config.min_refresh_s))


async def _refused(verifier: OidcVerifier, token: str, words: str) -> None:
    with pytest.raises(EnclaveError) as caught:
        await verifier.verify(token)
    assert caught.value.info.status == 401
    assert caught.value.info.code == "invalid_token"
    assert words in caught.value.info.message


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


async def test_a_valid_token_names_its_tenant_and_roles(
    issuer: LocalIssuer, client: httpx.AsyncClient
) -> None:
    verifier = _verifier(issuer, client)
    identity = await verifier.verify(issuer.token())
    assert identity == Identity("user-1", "acme", frozenset({"developer", "offline_access"}))
    # Cached: a second token with the same key does not refetch.
    await verifier.verify(issuer.token(sub="user-2"))
    assert issuer.jwks_requests == 1


async def test_rotation_refetches_on_an_unknown_key_id(
    issuer: LocalIssuer, client: httpx.AsyncClient
) -> None:
    verifier = _verifier(issuer, client)
    await verifier.verify(issuer.token())
    new_kid = issuer.rotate(drop_old=True)
    identity = await verifier.verify(issuer.token(kid=new_kid))
    assert identity.tenant == "acme"
    assert issuer.jwks_requests == 2
    assert set(verifier.keys.keys) == {new_kid}


async def test_unknown_key_ids_refetch_at_most_once_per_interval(
    issuer: LocalIssuer, client: httpx.AsyncClient
) -> None:
    verifier = _verifier(issuer, client, min_refresh_s=60)
    await verifier.verify(issuer.token())
    forged = issuer.token().split(".")
    header = json.loads(base64.urlsafe_b64decode(forged[0] + "=="))
    for n in range(5):
        header["kid"] = f"nope-{n}"
        token = ".".join([_b64(json.dumps(header).encode()), forged[1], forged[2]])
        await _refused(verifier, token, "key the issuer does not publish")
    assert issuer.jwks_requests == 1


async def test_expired_wrong_audience_wrong_issuer_and_future_nbf_are_refused(
    issuer: LocalIssuer, client: httpx.AsyncClient
) -> None:
    verifier = _verifier(issuer, client)
    now = int(time.time())
    await _refused(verifier, issuer.token(exp=now - 120, iat=now - 600), "expired")
    await _refused(verifier, issuer.token(aud="another-app"), "audience")
    await _refused(verifier, issuer.token(iss="http://127.0.0.1:1/realms/evil"), "issuer")
    await _refused(verifier, issuer.token(nbf=now + 600), "not valid yet")
    await _refused(verifier, issuer.token(exp=None), "exp")
    await _refused(verifier, issuer.token(tenant=None), "no tenant claim")
    # Within the leeway (30 s) a slightly skewed clock is fine.
    assert (await verifier.verify(issuer.token(nbf=now + 5))).tenant == "acme"


async def test_alg_none_and_hmac_with_the_public_key_are_refused(
    issuer: LocalIssuer, client: httpx.AsyncClient
) -> None:
    verifier = _verifier(issuer, client)
    claims = issuer.claims()
    unsigned = jwt.encode(claims, "", algorithm="none", headers={"kid": issuer.current})
    await _refused(verifier, unsigned, "algorithm `none`")
    # The classic confusion: HS256 keyed with the issuer's public key (which anyone has).
    public_pem = (
        issuer.keys[issuer.current]
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    head = _b64(json.dumps({"alg": "HS256", "typ": "JWT", "kid": issuer.current}).encode())
    body = _b64(json.dumps(claims).encode())
    mac = hmac.new(public_pem, f"{head}.{body}".encode(), hashlib.sha256).digest()
    await _refused(verifier, f"{head}.{body}.{_b64(mac)}", "algorithm `HS256`")
    # An ES256 token claiming the RSA key's id.
    other = ec.generate_private_key(ec.SECP256R1())
    es = jwt.encode(claims, other, algorithm="ES256", headers={"kid": issuer.current})
    await _refused(verifier, es, "does not match its key")
    # A token signed by a key the issuer never published, under a published kid.
    impostor = LocalIssuer()
    forged = jwt.encode(
        claims, impostor.keys[impostor.current], algorithm="RS256", headers={"kid": issuer.current}
    )
    impostor.server.server_close()
    await _refused(verifier, forged, "Signature verification failed")


def test_symmetric_algorithms_cannot_be_configured() -> None:
    config = OidcConfig(issuer="http://127.0.0.1", audience="enclave", algorithms=("HS256",))
    with pytest.raises(ValueError, match="asymmetric"):
        OidcVerifier(config, JwksCache(HttpJwks("http://127.0.0.1", httpx.AsyncClient()), 1))


def test_claims_paths_and_keycloak_shapes() -> None:
    config = OidcConfig(
        issuer="i", audience="a", tenant_claim="tenant", roles_claim="resource_access.enclave.roles"
    )
    claims = {
        "sub": "s",
        "tenant": ["globex"],  # a multivalued Keycloak attribute mapper
        "resource_access": {"enclave": {"roles": ["admin", 7]}},
    }
    assert identity_from_claims(claims, config) == Identity("s", "globex", frozenset({"admin"}))
    spaced = OidcConfig(issuer="i", audience="a", roles_claim="scope")
    assert identity_from_claims({"sub": "s", "tenant": "t", "scope": "user x"}, spaced).roles == {
        "user",
        "x",
    }
    with pytest.raises(EnclaveError):
        identity_from_claims({"sub": "s", "tenant": ["a", "b"]}, config)


async def test_an_unreachable_issuer_is_a_503_and_known_keys_still_work(
    issuer: LocalIssuer, client: httpx.AsyncClient
) -> None:
    verifier = _verifier(issuer, client)
    token = issuer.token()
    await verifier.verify(token)
    issuer.server.shutdown()
    issuer.server.server_close()
    await verifier.verify(token)  # cached key: no fetch needed
    new_kid = issuer.rotate()
    with pytest.raises(EnclaveError) as caught:
        await verifier.verify(issuer.token(kid=new_kid))
    assert caught.value.info.status == 503 and caught.value.info.code == "idp_unavailable"
    assert (await verifier.verify(token)).tenant == "acme"
