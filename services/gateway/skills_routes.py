"""A tenant's SKILL.md skills through the API: GET/POST /v1/skills, GET/DELETE
/v1/skills/{name}.

An upload is one skill folder as a list of files (`SKILL.md` and its resources; text in
`content`, bytes in `content_b64`), named by its SKILL.md's `name`. The agent runtime
checks it whole before anything is written (`agent.skills`): a malformed SKILL.md is a 400
naming the file and the problem. Agents see a change at their next turn, no restart.
Admin and developer keys may manage skills (`manage_skills`).
"""

from __future__ import annotations

import base64
from typing import TYPE_CHECKING, Literal

import orjson
from fastapi import FastAPI, Request
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field, model_validator

from libs.context import RequestContext
from libs.events import SkillFileData, SkillsReply, SkillsRequest
from libs.rpc import Peer
from services.gateway.openai_shapes import validate
from services.gateway.policy import Action

if TYPE_CHECKING:
    from services.gateway.bootstrap import Gateway

MAX_FILES = 64
RUNTIME = Peer("the agent runtime", "runtime_unavailable", 30.0)


class UploadFile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    path: str = Field(min_length=1, max_length=255)
    content: str | None = None
    content_b64: str | None = None

    @model_validator(mode="after")
    def _one_content(self) -> UploadFile:
        if (self.content is None) == (self.content_b64 is None):
            raise ValueError("give exactly one of `content` and `content_b64`")
        return self

    def as_event(self) -> SkillFileData:
        data = self.content_b64
        if self.content is not None:
            data = base64.b64encode(self.content.encode()).decode()
        return SkillFileData(path=self.path, content_b64=data or "")


class SkillUpload(BaseModel):
    """A SKILL.md skill folder: SKILL.md and its resource files."""

    model_config = ConfigDict(extra="forbid")

    files: list[UploadFile] = Field(min_length=1, max_length=MAX_FILES)


def register(app: FastAPI, gw: Gateway) -> None:
    async def ask(
        ctx: RequestContext,
        op: Literal["list", "get", "put", "delete"],
        name: str | None = None,
        files: list[SkillFileData] | None = None,
    ) -> Response:
        request = SkillsRequest(ctx=ctx, op=op, name=name, files=files or [])
        reply = await gw.bus.ask(RUNTIME, gw.bus.subjects.agent_skills, request, SkillsReply)
        return Response(orjson.dumps(reply.body), media_type="application/json")

    @app.get("/v1/skills", response_model=None)
    async def list_skills(request: Request) -> Response:
        ctx = await gw.auth.check_request(request, Action.MANAGE_SKILLS)
        return await ask(ctx, "list")

    @app.post("/v1/skills", response_model=None)
    async def upload_skill(request: Request) -> Response:
        ctx = await gw.auth.check_request(request, Action.MANAGE_SKILLS)
        upload = validate(SkillUpload, await gw.read_json(request))
        return await ask(ctx, "put", files=[f.as_event() for f in upload.files])

    @app.get("/v1/skills/{name}", response_model=None)
    async def get_skill(name: str, request: Request) -> Response:
        ctx = await gw.auth.check_request(request, Action.MANAGE_SKILLS)
        return await ask(ctx, "get", name)

    @app.delete("/v1/skills/{name}", response_model=None)
    async def delete_skill(name: str, request: Request) -> Response:
        ctx = await gw.auth.check_request(request, Action.MANAGE_SKILLS)
        return await ask(ctx, "delete", name)
