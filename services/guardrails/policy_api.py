"""The admin API's side in the guardrails: a tenant's policy documents over the bus
(request/reply `guardrails.policies`, PolicyRequest -> PolicyReply).

get: the tenant's (or its agent's) own document, the merged policy it runs under and its
version. put: the YAML or JSON text parsed, `level`/`tenant`/`agent` filled in, checked
by the parser and the merge rules against the documents around it (a lower level may only
restrict; a tenant's document must leave each of its agents' documents valid), then
written atomically; an invalid or relaxing document is a 400 naming the rule and the
level, and nothing is written. delete: the document removed (404 where there is none).
After a write or a removal the change is announced on `guardrails.policy.changed` before
the reply, so that no runtime keeps a passthrough the old policy granted.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import yaml

from libs.errors import EnclaveError
from libs.events import PolicyDelete, PolicyGet, PolicyReply, PolicyRequest
from libs.rbac import Permission, may
from services.guardrails.adapters.policy_files import PolicyStore
from services.guardrails.policy import EffectivePolicy, PolicyError, PolicyRelaxed, fill_document

MAX_DOCUMENT = 256 * 1024


def _refusal(exc: PolicyError) -> EnclaveError:
    code = "policy_relaxed" if isinstance(exc, PolicyRelaxed) else "invalid_policy"
    return EnclaveError(400, str(exc), code, exc.rule)


def _policy(policy: EffectivePolicy) -> dict[str, Any]:
    return {**policy.model_dump(mode="json"), "version": policy.version}


def _parse(text: str, level: str) -> Any:
    if len(text) > MAX_DOCUMENT:
        raise EnclaveError(
            400, f"A policy document is at most {MAX_DOCUMENT} bytes.", "invalid_policy"
        )
    try:
        return yaml.safe_load(text)  # JSON is YAML too
    except yaml.YAMLError as exc:
        raise _refusal(PolicyError("document", level, f"not valid YAML or JSON: {exc}")) from None


async def handle_policy(
    store: PolicyStore, request: PolicyRequest, announce: Callable[[], Awaitable[None]]
) -> PolicyReply:
    ctx, op = request.ctx, request.operation
    if not may({ctx.role}, Permission.MANAGE_POLICIES):  # the gateway decided already
        raise EnclaveError(403, "This role may not manage policies.", "insufficient_permissions")
    tenant, agent = ctx.tenant, op.agent
    level = "tenant" if agent is None else "agent"
    try:
        if isinstance(op, PolicyGet):
            own = await asyncio.to_thread(store.own, tenant, agent)
            if own is None and agent is not None:
                raise EnclaveError(
                    404, f"No policy `{agent}` for this tenant.", "policy_not_found", "policy"
                )
            current = await asyncio.to_thread(store.check, tenant, agent, own)
            return PolicyReply(body=_body(tenant, agent, own, current))
        if isinstance(op, PolicyDelete):
            remaining = await asyncio.to_thread(store.check, tenant, agent, None)
            if not await asyncio.to_thread(store.remove, tenant, agent):
                raise EnclaveError(
                    404, f"No {level} policy document to delete.", "policy_not_found", "policy"
                )
            await announce()
            return PolicyReply(body={**_body(tenant, agent, None, remaining), "deleted": True})
        filled = fill_document(_parse(op.document, level), tenant, agent)
        merged = await asyncio.to_thread(store.check, tenant, agent, filled)
        text = yaml.safe_dump(filled, sort_keys=False, allow_unicode=True)
        existed = await asyncio.to_thread(store.own, tenant, agent) is not None
        await asyncio.to_thread(store.write, tenant, agent, text)
        await announce()
        return PolicyReply(body={**_body(tenant, agent, filled, merged), "created": not existed})
    except PolicyError as exc:
        raise _refusal(exc) from None


def _body(tenant: str, agent: str | None, own: Any, policy: EffectivePolicy) -> dict[str, Any]:
    return {
        "object": "guardrail_policy",
        "tenant": tenant,
        "agent": agent,
        "level": "tenant" if agent is None else "agent",
        "document": own,
        "effective": _policy(policy),
        "policy_version": policy.version,
    }
