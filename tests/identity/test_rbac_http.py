"""The RBAC matrix through the gateway itself: every route of `libs.rbac.ROUTES`, called
over HTTP with a key of every role (the operator naming the tenant), own tenant and
another, answers 403 `insufficient_permissions` exactly where the matrix says no, and 403
`cross_tenant` for any other tenant named. Nothing serves the bus here, so an allowed call
ends in a 4xx or 503 of its own; what matters is that the role check lets it through."""

from __future__ import annotations

import re
import secrets

import httpx

from libs.rbac import ALLOWED, ROUTES, Role
from libs.settings import Settings
from services.gateway.adapters.sql_keys import create_key
from services.gateway.app import create_fastapi
from services.gateway.bootstrap import build
from services.gateway.hot_path import HotPath


def _concrete(path: str) -> str:
    return re.sub(r"\{[^}]+\}", "x1", path)


async def test_every_route_every_role_over_http(inprocess_settings: Settings) -> None:
    gw = build(inprocess_settings)
    app = HotPath(gw, create_fastapi(gw))
    await gw.start()
    tenant, other = "acme-" + secrets.token_hex(3), "globex-" + secrets.token_hex(3)
    try:
        auth: dict[Role, dict[str, str]] = {}
        for role in Role:
            where = "_platform" if role is Role.PLATFORM_OPERATOR else tenant
            _, key = await create_key(gw.db, where, role.value)
            auth[role] = {"Authorization": f"Bearer {key}"}
            if role is Role.PLATFORM_OPERATOR:
                auth[role]["OpenAI-Tenant"] = tenant
        transport = httpx.ASGITransport(app=app)
        wrong: list[tuple[str, str, str, int, str]] = []
        async with httpx.AsyncClient(transport=transport, base_url="http://gw") as http:
            for (method, path), permission in sorted(ROUTES.items()):
                url = _concrete(path)
                for role in Role:
                    r = await http.request(method, url, headers=auth[role], json={})
                    code = r.json().get("error", {}).get("code") if r.content else None
                    refused = r.status_code == 403 and code == "insufficient_permissions"
                    if refused is (role in ALLOWED[permission]):
                        wrong.append((method, path, role.value, r.status_code, str(code)))
                    if role is not Role.PLATFORM_OPERATOR:
                        cross = await http.request(
                            method, url, headers={**auth[role], "OpenAI-Tenant": other}, json={}
                        )
                        if role in ALLOWED[permission] and cross.json()["error"]["code"] != (
                            "cross_tenant"
                        ):
                            wrong.append(
                                (method, path, role.value + "@other", cross.status_code, "")
                            )
        assert wrong == [], "\n".join(map(str, wrong))
    finally:
        await gw.stop()
