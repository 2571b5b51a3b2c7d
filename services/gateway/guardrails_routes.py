"""POST /v1/guardrails/check: screening only, for applications that call their own models.

Same authentication as the rest of the API; the tenant's policy (and an agent's, named by
`policy`) decides. The verdict is audited by the guardrails service like any other.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

import orjson
from fastapi import FastAPI, Request
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field

from libs.errors import EnclaveError
from libs.events import ChatMessage, GuardrailCheck
from libs.guardrails_client import ask_guardrails
from services.gateway.openai_shapes import validate
from services.gateway.policy import Action

if TYPE_CHECKING:
    from services.gateway.bootstrap import Gateway


class CheckRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    text: str = Field(max_length=100_000)
    direction: Literal["input", "output"] = "input"
    policy: str | None = Field(default=None, min_length=1, max_length=128)


def register(app: FastAPI, gw: Gateway) -> None:
    @app.post("/v1/guardrails/check", response_model=None)
    async def guardrails_check(request: Request) -> Response:
        ctx = await gw.auth.check_request(request, Action.CHECK_GUARDRAILS)
        req = validate(CheckRequest, await gw.read_json(request))
        role = "user" if req.direction == "input" else "assistant"
        check = GuardrailCheck(
            ctx=ctx,
            direction=req.direction,
            messages=[ChatMessage(role=role, content=req.text)],
            agent=req.policy,
            report=True,
        )
        verdict = await ask_guardrails(gw.bus, check, gw.bus.peers.guardrails_api)
        if verdict.error is not None:
            raise EnclaveError.of(verdict.error)
        body = {
            "allowed": verdict.allowed,
            "redacted_text": verdict.texts[0] if verdict.texts else req.text,
            "entities": [
                {"type": e.type, "start": e.start, "end": e.end, "score": e.score}
                for e in verdict.entities
            ],
            "injection_score": verdict.injection_score,
            "reasons": verdict.reasons,
            "rule": verdict.rule,
            "policy_version": verdict.policy_version,
        }
        return Response(
            orjson.dumps(body),
            media_type="application/json",
            headers={"x-request-id": ctx.request_id},
        )
