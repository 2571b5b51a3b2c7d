"""The admin API of a tenant's MCP servers (admin role only, `manage_mcp_servers`).

- `GET /v1/admin/mcp_servers`: the tenant's servers.
- `GET /v1/admin/mcp_servers/{name}`: one.
- `PUT /v1/admin/mcp_servers/{name}`: create or replace one (`libs.mcp_servers.
  McpServerConfig`: `transport` `stdio` with `command`/`args`, or `streamable_http` with
  `url`; `allowed_tools`, `require_approval` (`always`, `never` or tool names), `enabled`).
  A streamable HTTP server is an outbound connection: the runtime opens it only while the
  admin keeps the server enabled for the tenant.
- `DELETE /v1/admin/mcp_servers/{name}`.

Stored in SQL (`tenant_mcp_servers`, adapters/sql_mcp_servers.py), which every agent
runtime replica reads again within 2 s. Every call is audited (`admin.mcp_servers.*`).
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

import orjson
from fastapi import FastAPI, Request
from fastapi.responses import Response

from libs.audit import record_admin_action
from libs.errors import EnclaveError
from libs.mcp_servers import SERVER_NAME, McpServerConfig
from services.gateway.adapters.sql_mcp_servers import (
    delete_mcp_server,
    list_mcp_servers,
    put_mcp_server,
)
from services.gateway.openai_shapes import validate
from services.gateway.policy import Action

if TYPE_CHECKING:
    from services.gateway.bootstrap import Gateway


def _json(content: object, status: int = 200) -> Response:
    return Response(orjson.dumps(content), status, media_type="application/json")


def _object(row: Any) -> dict[str, Any]:
    return {"object": "mcp_server", "name": row.name, **row.config, "enabled": row.enabled}


def _name(name: str) -> str:
    if not re.match(SERVER_NAME, name):
        raise EnclaveError(
            400, "An MCP server's name is 1-32 of a-z, 0-9, _ and -.", "invalid_value", "name"
        )
    return name


def _missing(name: str) -> EnclaveError:
    return EnclaveError(404, f"No MCP server `{name}` in this tenant.", "mcp_server_not_found")


def register(app: FastAPI, gw: Gateway) -> None:
    @app.get("/v1/admin/mcp_servers", response_model=None)
    async def admin_list_mcp_servers(request: Request) -> Response:
        ctx = await gw.auth.check_request(request, Action.MANAGE_MCP_SERVERS)
        rows = await list_mcp_servers(gw.db, ctx.tenant)
        await record_admin_action(gw.audit, ctx, "mcp_servers.list", attrs={"servers": len(rows)})
        return _json({"object": "list", "data": [_object(r) for r in rows]})

    @app.get("/v1/admin/mcp_servers/{name}", response_model=None)
    async def admin_get_mcp_server(name: str, request: Request) -> Response:
        ctx = await gw.auth.check_request(request, Action.MANAGE_MCP_SERVERS)
        rows = [r for r in await list_mcp_servers(gw.db, ctx.tenant) if r.name == name]
        await record_admin_action(
            gw.audit,
            ctx,
            "mcp_servers.get",
            outcome="ok" if rows else "not_found",
            attrs={"server": name[:64]},
        )
        if not rows:
            raise _missing(name)
        return _json(_object(rows[0]))

    @app.put("/v1/admin/mcp_servers/{name}", response_model=None)
    async def admin_put_mcp_server(name: str, request: Request) -> Response:
        ctx = await gw.auth.check_request(request, Action.MANAGE_MCP_SERVERS)
        body = validate(McpServerConfig, await gw.read_json(request))
        created = await put_mcp_server(gw.db, ctx.tenant, _name(name), body)
        attrs: dict[str, str | bool | int] = {
            "server": name,
            "transport": body.transport,
            "enabled": body.enabled,
            "created": created,
        }
        if body.url:  # the outbound address an admin allowed (never a command's arguments)
            attrs["url"] = body.url[:200]
        await record_admin_action(gw.audit, ctx, "mcp_servers.put", attrs=attrs)
        [row] = [r for r in await list_mcp_servers(gw.db, ctx.tenant) if r.name == name]
        return _json(_object(row), 201 if created else 200)

    @app.delete("/v1/admin/mcp_servers/{name}", response_model=None)
    async def admin_delete_mcp_server(name: str, request: Request) -> Response:
        ctx = await gw.auth.check_request(request, Action.MANAGE_MCP_SERVERS)
        # A name no server can have is not looked up (nor sent to SQL as it is).
        done = bool(re.match(SERVER_NAME, name)) and await delete_mcp_server(
            gw.db, ctx.tenant, name
        )
        await record_admin_action(
            gw.audit,
            ctx,
            "mcp_servers.delete",
            outcome="ok" if done else "not_found",
            attrs={"server": name[:64]},
        )
        if not done:
            raise _missing(name)
        return _json({"object": "mcp_server.deleted", "name": name, "deleted": True})
