"""The issuer's JWKS over HTTP: discovery document first, then its `jwks_uri`."""

from __future__ import annotations

from typing import Any

import httpx


class HttpJwks:
    """Reads `<issuer>/.well-known/openid-configuration`, then the key set it names."""

    def __init__(self, issuer: str, client: httpx.AsyncClient) -> None:
        self.issuer = issuer.rstrip("/")
        self.client = client
        self.jwks_uri: str | None = None

    async def _discover(self) -> str:
        response = await self.client.get(f"{self.issuer}/.well-known/openid-configuration")
        response.raise_for_status()
        document = response.json()
        if document.get("issuer", "").rstrip("/") != self.issuer:
            raise ValueError(
                f"the discovery document names issuer {document.get('issuer')!r}, "
                f"not {self.issuer!r}"
            )
        uri = document.get("jwks_uri")
        if not isinstance(uri, str):
            raise ValueError("the discovery document has no jwks_uri")
        return uri

    async def fetch(self) -> dict[str, Any]:
        if self.jwks_uri is None:
            self.jwks_uri = await self._discover()
        response = await self.client.get(self.jwks_uri)
        response.raise_for_status()
        keys: dict[str, Any] = response.json()
        return keys
