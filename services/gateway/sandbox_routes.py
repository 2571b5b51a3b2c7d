"""POST /v1/sandbox/exec: run Python or bash in the platform's sandbox, for developers.

The developer and admin roles may call it. The gateway checks the request's shape and asks
the sandbox service on `sandbox.exec`; the sandbox service applies its limits, runs the code
in a fresh sandbox and audits the exec (tool, code digest, outcome, duration).
"""

from __future__ import annotations

import base64
from typing import TYPE_CHECKING, Literal

import orjson
from fastapi import FastAPI, Request
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field, model_validator

from libs.errors import EnclaveError
from libs.events import SandboxExecReply, SandboxExecRequest, SandboxFile
from services.gateway.openai_shapes import validate
from services.gateway.policy import Action

if TYPE_CHECKING:
    from services.gateway.bootstrap import Gateway

# How long past the longest allowed run the gateway waits (queueing behind busy slots).
QUEUE_SLACK_S = 30.0


class ExecFile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    path: str = Field(min_length=1, max_length=255)
    # Text, or bytes in base64: one of the two.
    content: str | None = None
    content_b64: str | None = None

    @model_validator(mode="after")
    def _one_content(self) -> ExecFile:
        if (self.content is None) == (self.content_b64 is None):
            raise ValueError("give exactly one of `content` and `content_b64`")
        return self

    def as_event(self) -> SandboxFile:
        if self.content is not None:
            data = base64.b64encode(self.content.encode()).decode()
        else:
            data = self.content_b64 or ""
        return SandboxFile(path=self.path, content_b64=data)


class ExecRequest(BaseModel):
    """Run code in the sandbox: no network, no secrets, limits on time, memory and output."""

    model_config = ConfigDict(extra="forbid")

    language: Literal["python", "bash"]
    code: str = Field(min_length=1)
    files: list[ExecFile] = Field(default_factory=list)
    timeout_s: float | None = Field(default=None, gt=0)


def _file_out(item: SandboxFile) -> dict[str, object]:
    out: dict[str, object] = {"path": item.path, "content_b64": item.content_b64}
    try:
        data = base64.b64decode(item.content_b64)
        out["bytes"] = len(data)
        out["content"] = data.decode("utf-8")  # when it is text
    except ValueError:  # binascii.Error and UnicodeDecodeError are ValueErrors
        pass
    return out


REPLY_FIELDS = {"status", "exit_code", "stdout", "stderr", "reason", "truncated", "duration_ms"}


def body_of(reply: SandboxExecReply) -> dict[str, object]:
    body: dict[str, object] = reply.model_dump(include=REPLY_FIELDS)
    body["files"] = [_file_out(f) for f in reply.files]
    return body


def _request_schema() -> dict[str, object]:
    """ExecRequest's JSON schema, self-contained, for /openapi.json (the route parses the
    body itself, for OpenAI's 400 instead of FastAPI's 422)."""
    schema = ExecRequest.model_json_schema()
    defs = schema.pop("$defs", {})
    schema["properties"]["files"]["items"] = defs["ExecFile"]
    return schema


def register(app: FastAPI, gw: Gateway) -> None:
    # Watched while it runs (libs/rpc.py, `Peer.alive_s`): a replica killed mid-exec is a
    # 503 `sandbox_lost` within about a second, and the exec is never run twice.
    sandbox = gw.bus.peers.sandbox(QUEUE_SLACK_S)

    @app.post(
        "/v1/sandbox/exec",
        response_model=None,
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {"application/json": {"schema": _request_schema()}},
            }
        },
    )
    async def sandbox_exec(request: Request) -> Response:
        ctx = await gw.auth.check_request(request, Action.EXEC_CODE)
        req = validate(ExecRequest, await gw.read_json(request))
        event = SandboxExecRequest(
            ctx=ctx,
            language=req.language,
            code=req.code,
            files=[f.as_event() for f in req.files],
            timeout_s=req.timeout_s,
        )
        reply = await gw.bus.ask(sandbox, gw.bus.subjects.sandbox_exec, event, SandboxExecReply)
        if reply.error is not None:
            raise EnclaveError.of(reply.error)
        return Response(
            orjson.dumps(body_of(reply)),
            media_type="application/json",
            headers={"x-request-id": ctx.request_id},
        )
