"""Stored responses of the Responses API, in SQL, one tenant's never visible to another."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from libs.db.engine import sessions
from libs.db.models import StoredResponse
from libs.events import ChatMessage


class SqlResponses:
    def __init__(self, engine: AsyncEngine) -> None:
        self.sessions = sessions(engine)

    async def put(
        self,
        tenant: str,
        body: dict[str, Any],
        conversation: list[ChatMessage],
        only_from: set[str] | None = None,
    ) -> bool:
        """Insert or replace the response `body["id"]` of `tenant`; with `only_from`, replace
        it only while its status is one of those (a cancelled one stays cancelled)."""
        convo = [m.model_dump(exclude_none=True) for m in conversation]
        async with self.sessions() as session, session.begin():
            row = await session.get(StoredResponse, body["id"], with_for_update=True)
            if row is None:
                session.add(
                    StoredResponse(
                        id=body["id"],
                        tenant=tenant,
                        status=body["status"],
                        body=body,
                        conversation=convo,
                    )
                )
                return True
            if row.tenant != tenant or (only_from is not None and row.status not in only_from):
                return False
            row.status, row.body, row.conversation = body["status"], body, convo
            return True

    async def get(self, tenant: str, rid: str) -> tuple[dict[str, Any], list[ChatMessage]] | None:
        async with self.sessions() as session:
            row = (
                await session.execute(
                    select(StoredResponse).where(
                        StoredResponse.id == rid, StoredResponse.tenant == tenant
                    )
                )
            ).scalar()
        if row is None:
            return None
        return dict(row.body), [ChatMessage.model_validate(m) for m in row.conversation]

    async def set_status(self, tenant: str, rid: str, status: str, only_from: set[str]) -> bool:
        """Move a response to `status` if it is in one of `only_from`; False otherwise."""
        async with self.sessions() as session, session.begin():
            row = await session.get(StoredResponse, rid, with_for_update=True)
            if row is None or row.tenant != tenant or row.status not in only_from:
                return False
            row.status = status
            row.body = {**row.body, "status": status}
            return True
