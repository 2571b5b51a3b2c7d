"""Errors that cross service boundaries, in OpenAI's error vocabulary.

A service raises or returns an `ErrorInfo`; the gateway turns it into the HTTP status
and the `{"error": {"message", "type", "param", "code"}}` body that OpenAI clients expect.
"""

from __future__ import annotations

from typing import Self

from pydantic import BaseModel

# status -> OpenAI error type
ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "invalid_request_error",
    413: "invalid_request_error",
    429: "rate_limit_error",
    500: "server_error",
    503: "service_unavailable",
    504: "timeout",
}


class ErrorInfo(BaseModel):
    status: int
    message: str
    code: str | None = None
    param: str | None = None

    @property
    def type(self) -> str:
        return ERROR_TYPES.get(self.status, "server_error")

    def body(self) -> dict[str, object]:
        return {
            "error": {
                "message": self.message,
                "type": self.type,
                "param": self.param,
                "code": self.code,
            }
        }


class EnclaveError(Exception):
    """An error with an HTTP status, raised anywhere and rendered by the gateway."""

    def __init__(
        self, status: int, message: str, code: str | None = None, param: str | None = None
    ) -> None:
        super().__init__(message)
        self.info = ErrorInfo(status=status, message=message, code=code, param=param)

    @classmethod
    def of(cls, info: ErrorInfo) -> Self:
        return cls(info.status, info.message, info.code, info.param)


def model_not_found(model: str) -> ErrorInfo:
    return ErrorInfo(
        status=404,
        message=f"The model `{model}` does not exist or you do not have access to it.",
        code="model_not_found",
        param="model",
    )


def model_not_allowed(model: str) -> ErrorInfo:
    """The tenant's admin left `model` out of its allow-list (PUT /v1/admin/models)."""
    return ErrorInfo(
        status=403,
        message=f"The model `{model}` is not enabled for this tenant.",
        code="model_not_allowed",
        param="model",
    )


def no_worker(pool: str) -> ErrorInfo:
    return ErrorInfo(
        status=503,
        message=f"No worker of pool `{pool}` is available; try again later.",
        code="no_worker_available",
    )


WORKER_BUSY = "worker_busy"


def worker_busy(pool: str, capacity: int) -> ErrorInfo:
    """A worker's refusal when it holds as many generations as it may (its slots and its
    queue); the caller offers the request to the pool again, then answers 503."""
    return ErrorInfo(
        status=503,
        message=f"Every worker of pool `{pool}` that was asked is full "
        f"({capacity} generations each); try again later.",
        code=WORKER_BUSY,
    )


def upstream_timeout(what: str) -> ErrorInfo:
    return ErrorInfo(status=504, message=f"Upstream timeout: {what}.", code="upstream_timeout")


def stage_lost(stage: str, what: str) -> ErrorInfo:
    """A stage that held the request died mid-way (it went silent past `stream_idle_s`):
    `runtime_lost` or `worker_lost`. A 503: asking again is served by another replica."""
    return ErrorInfo(
        status=503,
        message=f"The {stage} serving this request stopped answering ({what}); try again.",
        code=f"{stage}_lost",
    )
