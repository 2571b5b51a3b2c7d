"""Structured JSON logs, one object a line, with no prompt, PII or secret in them.

`setup_logging(service, pool)` is called once at process start (`enclave serve`): every
record of every logger (the platform's, FastStream's, uvicorn's) goes to stderr as

    {"ts", "level", "logger", "service", "pool", "msg", "request_id", "trace_id", "span_id",
     "exc"?, ...extra fields}

`request_id` comes from the record's own `extra={"request_id": ...}`, else from `bind(ctx)`
(a context variable: a handler wraps its work in `with logs.bind(ctx): ...`), else from the
active span's `enclave.request_id` attribute (every hop's span has it, with tracing on);
`trace_id` and `span_id` from the active OpenTelemetry span, else from the bound context's
`traceparent`.

Redaction happens when a record is made (a log record factory), so a handler or formatter
that is not ours never sees the raw text either:
- extra fields that carry content (prompt, messages, content, text, input, query,
  completion, body...) are replaced by `[redacted]`, whatever they hold (by the formatter:
  `extra` is set on a record after the factory made it);
- in the message, its arguments and the exception text: e-mail addresses, API-key-like
  tokens (`sk-...`, `Bearer ...`, `key=...`, long random strings), card and IBAN numbers,
  international phone numbers, JSON content fields (`"content": "..."`) and pydantic's
  `input_value=...` (a validation error quotes the input it refused).
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import logging
import os
import re
import sys
import threading
import time
import traceback
from collections.abc import Iterator
from typing import Any

from opentelemetry import trace

from libs.context import RequestContext

REDACTED = "[redacted]"
# Extra fields whose value is content, never logged whatever it holds.
CONTENT_FIELDS = frozenset(
    {
        "prompt",
        "prompts",
        "messages",
        "message_content",
        "content",
        "text",
        "texts",
        "input",
        "query",
        "completion",
        "output",
        "body",
        "document",
        "chunk",
        "answer",
        "password",
        "secret",
        "token",
        "api_key",
        "authorization",
    }
)
_CONTENT_KEYS = "|".join(sorted(CONTENT_FIELDS))
PATTERNS: tuple[tuple[re.Pattern[str], str], ...] = (
    # A validation error quotes the refused input: input_value='...' up to the next field.
    (
        re.compile(r"input_value=(?:'(?:[^'\\]|\\.)*'|\"(?:[^\"\\]|\\.)*\"|[^,\]\n]*)"),
        "input_value=" + REDACTED,
    ),
    # JSON or repr of a content field: "content": "..." / 'prompt': '...'
    (
        re.compile(
            rf"""(["'](?:{_CONTENT_KEYS})["']\s*:\s*)(?:"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*')""",
            re.IGNORECASE,
        ),
        r"\1" + f'"{REDACTED}"',
    ),
    (re.compile(r"(?i)\bbearer\s+[^\s\"',;]+"), "Bearer " + REDACTED),
    (
        re.compile(
            r"(?i)\b(password|passwd|secret|token|api[_-]?key|access[_-]?key|authorization)"
            r"(\s*[:=]\s*)[\"']?[^\s\"',;&]+"
        ),
        r"\1\2" + REDACTED,
    ),
    (re.compile(r"[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}"), "[email]"),
    # Keys with a known prefix (OpenAI, Anthropic, GitHub, Slack, AWS, Stripe, Enclave's own).
    (
        re.compile(
            r"\b(?:sk|pk|rk|ek|api|key|tok|ghp|gho|ghs|ghu|xox[abpr]|AKIA|ASIA|sk_live|pk_live)"
            r"[-_]?[A-Za-z0-9_\-]{12,}"
        ),
        "[secret]",
    ),
    # Long random-looking strings (tokens, keys): 32+ characters with digits and letters.
    (re.compile(r"\b(?=[A-Za-z_\-]*\d)(?=[0-9_\-]*[A-Za-z])[A-Za-z0-9_\-]{32,}\b"), "[secret]"),
    (re.compile(r"\b[A-Z]{2}\d{2}(?: ?[A-Z0-9]{4}){2,7}(?: ?[A-Z0-9]{1,4})?\b"), "[iban]"),
    (re.compile(r"\b\d(?:[ -]?\d){12,18}\b"), "[number]"),
    (re.compile(r"\+\d[\d ()-]{7,}\d"), "[phone]"),
)

_bound: contextvars.ContextVar[RequestContext | None] = contextvars.ContextVar(
    "enclave_log_context", default=None
)


def redact(text: str) -> str:
    for pattern, replacement in PATTERNS:
        text = pattern.sub(replacement, text)
    return text


@contextlib.contextmanager
def bind(ctx: RequestContext) -> Iterator[None]:
    """Records logged inside carry this request's id (and trace, when no span is active)."""
    token = _bound.set(ctx)
    try:
        yield
    finally:
        _bound.reset(token)


_STANDARD = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {
    "message",
    "asctime",
    "taskName",
}


def _redact_record(record: logging.LogRecord) -> logging.LogRecord:
    try:
        message = record.getMessage()
    except Exception:  # a bad format string: keep what there is
        message = f"{record.msg} {record.args}"
    record.msg, record.args = redact(message), None
    if record.exc_info and record.exc_info[0] is not None:
        record.exc_text = redact("".join(traceback.format_exception(*record.exc_info)).rstrip())
        record.exc_info = None
    elif record.exc_text:
        record.exc_text = redact(record.exc_text)
    if record.stack_info:
        record.stack_info = redact(record.stack_info)
    return record


class JsonFormatter(logging.Formatter):
    def __init__(self, service: str, pool: str | None = None) -> None:
        super().__init__()
        self.service, self.pool = service, pool

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "service": self.service,
            "msg": record.getMessage(),
        }
        if self.pool:
            out["pool"] = self.pool
        ctx = _bound.get()
        span = trace.get_current_span()
        # A hop's span carries its request (libs/telemetry.attributes).
        attrs = getattr(span, "attributes", None) or {}
        out["request_id"] = (
            getattr(record, "request_id", None)
            or (ctx.request_id if ctx else None)
            or attrs.get("enclave.request_id")
        )
        trace_id, span_id = _trace_ids(span, ctx)
        out["trace_id"] = getattr(record, "trace_id", None) or trace_id
        out["span_id"] = span_id
        if tenant := ctx.tenant if ctx else attrs.get("enclave.tenant"):
            out["tenant"] = tenant
        if record.exc_text:
            out["exc"] = record.exc_text
        # Extra fields are set after the record factory ran: redacted here.
        for name, value in vars(record).items():
            if name in _STANDARD or name in out or name.startswith("_"):
                continue
            if name.lower() in CONTENT_FIELDS:
                out[name] = REDACTED
            elif isinstance(value, int | float | bool | None):
                out[name] = value
            else:
                out[name] = redact(str(value))
        return json.dumps(out, ensure_ascii=False)


def _trace_ids(current: trace.Span, ctx: RequestContext | None) -> tuple[str | None, str | None]:
    span = current.get_span_context()
    if span.is_valid:
        return format(span.trace_id, "032x"), format(span.span_id, "016x")
    if ctx is not None:
        parts = ctx.traceparent.split("-")
        if len(parts) == 4:
            return parts[1], parts[2]
    return None, None


def setup_logging(service: str, pool: str | None = None, level: str | None = None) -> None:
    """Every logger's records, redacted, as JSON lines on stderr, from `level` on (else
    ENCLAVE_LOG_LEVEL, else info). Idempotent."""
    base = logging.getLogRecordFactory()
    if not getattr(base, "_enclave_redacting", False):

        def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
            return _redact_record(base(*args, **kwargs))

        factory._enclave_redacting = True  # type: ignore[attr-defined]
        logging.setLogRecordFactory(factory)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter(service, pool))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel((level or os.environ.get("ENCLAVE_LOG_LEVEL") or "info").upper())
    # Libraries that brought their own handler (FastStream's, uvicorn's) write through ours.
    with contextlib.suppress(ImportError):
        import faststream  # noqa: F401
    for logger in list(logging.root.manager.loggerDict.values()):
        if isinstance(logger, logging.Logger) and logger.handlers:
            logger.handlers.clear()
            logger.propagate = True
    # A line per migration plugin, and per outgoing HTTP request (its URL): warnings only.
    for noisy in ("alembic", "httpx", "httpcore"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    logging.captureWarnings(True)
    # Uncaught exceptions, of the main thread or another, as records too: redacted JSON.
    sys.excepthook = _log_uncaught
    threading.excepthook = _log_thread_exception


def _log_uncaught(kind: type[BaseException], exc: BaseException, tb: Any) -> None:
    logging.getLogger("enclave.uncaught").critical("uncaught exception", exc_info=(kind, exc, tb))


def _log_thread_exception(args: threading.ExceptHookArgs) -> None:
    if args.exc_type is SystemExit or args.exc_value is None:
        return
    logging.getLogger("enclave.uncaught").error(
        "uncaught exception in thread %s",
        args.thread.name if args.thread else "?",
        exc_info=(args.exc_type, args.exc_value, args.exc_traceback),
    )
