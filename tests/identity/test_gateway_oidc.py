"""The gateway's authorize() with OIDC on: a real issuer on 127.0.0.1, the real Redis."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from redis.asyncio import Redis

from libs.errors import EnclaveError
from libs.settings import Settings
from services.gateway.adapters.redis_quotas import RedisQuotas
from services.gateway.auth import Authorizer
from services.gateway.bootstrap import build_oidc, default_limits
from services.gateway.policy import Action
from tests.identity.local_issuer import LocalIssuer
from tests.infra import Infra


@pytest.fixture
def issuer() -> Iterator[LocalIssuer]:
    with LocalIssuer() as running:
        yield running


async def test_authorize_takes_an_oidc_token(
    issuer: LocalIssuer, services: Infra, tmp_path: Path
) -> None:
    settings = Settings(
        home=tmp_path, oidc_issuer=issuer.url, oidc_roles_claim="realm_access.roles"
    )
    assert build_oidc(Settings(home=tmp_path)) is None  # off unless an issuer is set
    oidc = build_oidc(settings)
    redis = Redis.from_url(services.redis_url)
    try:
        # No database is reached on the token path: the engine stays unconnected.
        auth = Authorizer(
            None,  # type: ignore[arg-type]
            RedisQuotas(redis),
            default_limits(settings),
            30,
            oidc=oidc,
        )
        ctx = await auth.check(f"Bearer {issuer.token()}", Action.EXEC_CODE)
        assert (ctx.tenant, ctx.role, ctx.actor) == ("acme", "developer", "oidc:user-1")
        with pytest.raises(EnclaveError) as caught:
            await auth.check(f"Bearer {issuer.token()}", Action.MANAGE_KEYS)
        assert caught.value.info.status == 403
        admin = issuer.token(realm_access={"roles": ["user", "admin"]})
        assert (await auth.check(f"Bearer {admin}", Action.MANAGE_KEYS)).role == "admin"
        assert (await auth.check(f"Bearer {admin}", Action.INFER)).role == "admin"
        expired = issuer.token(exp=int(time.time()) - 600)
        with pytest.raises(EnclaveError) as caught:
            await auth.check(f"Bearer {expired}", Action.INFER)
        assert caught.value.info.code == "invalid_token"
    finally:
        await redis.aclose()
