"""Who a bearer JWT from an OIDC issuer names: checked through the issuer's JWKS.

`OidcVerifier.verify(token)` checks the signature with the issuer's published key (by the
token's `kid`), then issuer, audience, expiry and not-before, and reads the tenant and the
roles from configurable claims (dotted paths, e.g. `realm_access.roles`). Only asymmetric
algorithms from the configured list are accepted: `none` and the HMAC family are refused
before any key is looked at, so a public key can never be used as an HMAC secret.

The key set is cached; a token whose `kid` the cache does not know refetches it (key
rotation), at most once per `min_refresh_s`, so a stream of forged key ids cannot turn
into a stream of requests to the issuer. Fetching is a port (`JwksSource`): the HTTP
adapter is adapters/oidc_jwks.py; the tests serve a real JWKS on 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol

import jwt
from jwt import PyJWK

from libs.errors import EnclaveError
from libs.settings import Settings

log = logging.getLogger("enclave.gateway")
ASYMMETRIC = frozenset(
    {"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA"}
)


class JwksSource(Protocol):
    async def fetch(self) -> dict[str, Any]:
        """The issuer's JSON Web Key Set, as published (`{"keys": [...]}`)."""
        ...


@dataclass(frozen=True)
class OidcConfig:
    issuer: str
    audience: str
    tenant_claim: str = "tenant"
    roles_claim: str = "roles"
    algorithms: tuple[str, ...] = ("RS256", "PS256", "ES256")
    leeway_s: float = 30.0
    min_refresh_s: float = 10.0

    @classmethod
    def from_settings(cls, settings: Settings) -> OidcConfig:
        return cls(
            issuer=settings.oidc_issuer,
            audience=settings.oidc_audience,
            tenant_claim=settings.oidc_tenant_claim,
            roles_claim=settings.oidc_roles_claim,
            algorithms=tuple(settings.oidc_algorithms),
            leeway_s=settings.oidc_leeway_s,
            min_refresh_s=settings.oidc_jwks_min_refresh_s,
        )


@dataclass(frozen=True)
class PublishedKey:
    jwk: PyJWK
    alg: str | None  # the algorithm the issuer pinned the key to, if it did


@dataclass(frozen=True)
class Identity:
    """An authenticated caller: the token's subject, its tenant and its roles."""

    subject: str
    tenant: str
    roles: frozenset[str] = field(default_factory=frozenset)


def _invalid(message: str) -> EnclaveError:
    return EnclaveError(401, message, "invalid_token")


def claim(claims: dict[str, Any], path: str) -> Any:
    """The value at a dotted path of the claims (`realm_access.roles`), or None."""
    value: Any = claims
    for part in path.split("."):
        if not isinstance(value, dict) or part not in value:
            return None
        value = value[part]
    return value


def identity_from_claims(claims: dict[str, Any], config: OidcConfig) -> Identity:
    """Tenant and roles from the configured claims of verified claims (pure)."""
    tenant = claim(claims, config.tenant_claim)
    if isinstance(tenant, list) and len(tenant) == 1:  # Keycloak multivalued mappers
        tenant = tenant[0]
    if not isinstance(tenant, str) or not tenant:
        raise _invalid(f"The token has no tenant claim `{config.tenant_claim}`.")
    raw = claim(claims, config.roles_claim)
    if isinstance(raw, str):
        raw = raw.split()
    roles: Iterable[Any] = raw if isinstance(raw, list) else []
    subject = claims.get("sub")
    return Identity(
        subject=subject if isinstance(subject, str) else "",
        tenant=tenant,
        roles=frozenset(r for r in roles if isinstance(r, str)),
    )


class JwksCache:
    """The issuer's keys by id; refetched when a token names an id not in it."""

    def __init__(
        self,
        source: JwksSource,
        min_refresh_s: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.source = source
        self.min_refresh_s = min_refresh_s
        self.clock = clock
        self.keys: dict[str, PublishedKey] = {}
        self.fetched_at: float | None = None
        self.fetches = 0
        self._lock = asyncio.Lock()

    async def key(self, kid: str) -> PublishedKey | None:
        if kid in self.keys:
            return self.keys[kid]
        async with self._lock:
            if kid in self.keys:  # another request refetched meanwhile
                return self.keys[kid]
            now = self.clock()
            if self.fetched_at is not None and now - self.fetched_at < self.min_refresh_s:
                return None
            await self._refresh(now)
        return self.keys.get(kid)

    async def _refresh(self, now: float) -> None:
        self.fetched_at = now
        self.fetches += 1
        try:
            document = await self.source.fetch()
        except Exception as exc:  # the issuer down or answering junk: keep the old keys
            log.warning("OIDC key set fetch failed: %s", exc)
            raise EnclaveError(
                503, "The identity provider's keys could not be fetched.", "idp_unavailable"
            ) from exc
        keys: dict[str, PublishedKey] = {}
        for entry in document.get("keys", []):
            if not isinstance(entry, dict) or entry.get("use", "sig") != "sig":
                continue
            kid = entry.get("kid")
            if not isinstance(kid, str):
                continue
            try:
                alg = entry.get("alg")
                keys[kid] = PublishedKey(PyJWK(entry), alg if isinstance(alg, str) else None)
            except jwt.PyJWTError:
                continue  # a key type this build cannot use: skip it, keep the rest
        self.keys = keys


class OidcVerifier:
    def __init__(self, config: OidcConfig, keys: JwksCache) -> None:
        unsafe = set(config.algorithms) - ASYMMETRIC
        if unsafe:
            raise ValueError(f"OIDC algorithms must be asymmetric; refused: {sorted(unsafe)}")
        self.config = config
        self.keys = keys

    async def verify(self, token: str) -> Identity:
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError as exc:
            raise _invalid("The bearer token is not a JWT.") from exc
        alg = header.get("alg")
        if alg not in self.config.algorithms:
            raise _invalid(f"The token's algorithm `{alg}` is not accepted.")
        kid = header.get("kid")
        if not isinstance(kid, str):
            raise _invalid("The token names no key id (kid).")
        key = await self.keys.key(kid)
        if key is None:
            raise _invalid("The token is signed with a key the issuer does not publish.")
        if alg not in _family(key.jwk) or (key.alg is not None and key.alg != alg):
            raise _invalid("The token's algorithm does not match its key.")
        try:
            claims = jwt.decode(
                token,
                key.jwk.key,
                algorithms=[alg],
                audience=self.config.audience,
                issuer=self.config.issuer,
                leeway=self.config.leeway_s,
                options={"require": ["exp", "iss", "aud", "sub"]},
            )
        except jwt.ExpiredSignatureError as exc:
            raise _invalid("The token has expired.") from exc
        except jwt.ImmatureSignatureError as exc:
            raise _invalid("The token is not valid yet (nbf/iat in the future).") from exc
        except jwt.InvalidAudienceError as exc:
            raise _invalid("The token is not meant for this audience.") from exc
        except jwt.InvalidIssuerError as exc:
            raise _invalid("The token is from another issuer.") from exc
        except jwt.PyJWTError as exc:
            raise _invalid(f"The token is invalid: {exc}.") from exc
        return identity_from_claims(claims, self.config)


def _family(key: PyJWK) -> frozenset[str]:
    """The algorithms a key of this type may sign with (an RSA key: RS* and PS*)."""
    kty = key.key_type
    if kty == "RSA":
        return frozenset({"RS256", "RS384", "RS512", "PS256", "PS384", "PS512"})
    if kty == "EC":
        return frozenset({"ES256", "ES384", "ES512"})
    if kty == "OKP":
        return frozenset({"EdDSA"})
    return frozenset()
