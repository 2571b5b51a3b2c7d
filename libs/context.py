"""The request context that travels with every message: tenant, request id, trace.

It rides in NATS headers (W3C `traceparent` for OpenTelemetry, `enclave-*` for the
rest) and inside each event's payload, so that handlers read it without touching
the raw message (FastStream resolves message-level parameters in a thread pool).
"""

from __future__ import annotations

import secrets

from pydantic import BaseModel, Field

TENANT_HEADER = "enclave-tenant"
REQUEST_ID_HEADER = "enclave-request-id"
TRACEPARENT_HEADER = "traceparent"
# Set on relayed token events: which replicas serve the turn.
RUNTIME_HEADER = "enclave-runtime"
WORKER_HEADER = "enclave-worker"


def new_request_id(prefix: str = "req") -> str:
    return f"{prefix}-{secrets.token_hex(12)}"


def new_traceparent() -> str:
    return f"00-{secrets.token_hex(16)}-{secrets.token_hex(8)}-01"


class RequestContext(BaseModel):
    """Who asked, which request, and which trace; set by the gateway from the credential."""

    tenant: str
    request_id: str
    traceparent: str = Field(default_factory=new_traceparent)
    actor: str = ""  # the API key id or subject that made the request
    role: str = "user"

    def headers(self) -> dict[str, str]:
        return {
            TENANT_HEADER: self.tenant,
            REQUEST_ID_HEADER: self.request_id,
            TRACEPARENT_HEADER: self.traceparent,
        }

    @classmethod
    def from_headers(cls, headers: dict[str, str]) -> RequestContext:
        return cls(
            tenant=headers[TENANT_HEADER],
            request_id=headers[REQUEST_ID_HEADER],
            traceparent=headers.get(TRACEPARENT_HEADER) or new_traceparent(),
        )
