"""libs/logs.py: JSON lines with request and trace ids; no prompt, PII or secret survives."""

from __future__ import annotations

import io
import json
import logging
import sys
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from opentelemetry.sdk.trace import TracerProvider
from pydantic import BaseModel, ValidationError

from libs import logs
from libs.context import RequestContext
from libs.telemetry import attributes

EMAIL = "jane.doe@example.com"
TOKEN = "sk-live-4f9Qz8XkT2mB7rLw1YcV0pNe"
KEY = "enclave_0123abcd4567ef89_Zx9yW8vU7tS6rQ5pO4nM3lK2jI1hG0fE9dC8bA7zY6x"


@pytest.fixture
def captured() -> Iterator[io.StringIO]:
    root = logging.getLogger()
    saved = root.handlers[:], root.level, logging.getLogRecordFactory()
    hooks = sys.excepthook, threading.excepthook
    logs.setup_logging("gateway", "p1")
    out = io.StringIO()
    root.handlers[0].stream = out  # type: ignore[attr-defined]
    try:
        yield out
    finally:
        root.handlers[:], _, factory = saved
        root.setLevel(saved[1])
        logging.setLogRecordFactory(factory)
        sys.excepthook, threading.excepthook = hooks


def lines(out: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(x) for x in out.getvalue().splitlines()]


def test_each_record_is_one_json_object_with_request_and_trace_ids(
    captured: io.StringIO,
) -> None:
    ctx = RequestContext(tenant="acme", request_id="req-abc123")
    log = logging.getLogger("enclave.test")
    with logs.bind(ctx):
        log.info("turn done in %d ms", 12)
    tracer = TracerProvider().get_tracer("t")
    with tracer.start_as_current_span("hop") as span:
        log.warning("inside a span", extra={"request_id": "req-x", "tokens": 3})
    with tracer.start_as_current_span("hop", attributes=attributes(ctx)):
        log.info("in a hop")
    log.info("outside")
    first, second, hop, third = lines(captured)
    assert hop["request_id"] == "req-abc123" and hop["tenant"] == "acme" and hop["trace_id"]
    assert first["msg"] == "turn done in 12 ms" and first["request_id"] == "req-abc123"
    assert first["trace_id"] == ctx.traceparent.split("-")[1] and first["tenant"] == "acme"
    assert first["service"] == "gateway" and first["pool"] == "p1" and first["level"] == "info"
    assert second["trace_id"] == format(span.get_span_context().trace_id, "032x")
    assert second["request_id"] == "req-x" and second["tokens"] == 3
    assert third["request_id"] is None and third["trace_id"] is None


class Chat(BaseModel):
    max_tokens: int


def test_prompts_pii_and_secrets_never_reach_the_output(captured: io.StringIO) -> None:
    log = logging.getLogger("enclave.test")
    prompt = f"Mail {EMAIL} my key {TOKEN}, card 4111 1111 1111 1111, call +44 20 7946 0958"
    log.info("user said %s", prompt)
    log.info("body %s", json.dumps({"messages": [{"role": "user", "content": "the secret plan"}]}))
    log.info("checked", extra={"prompt": "the secret plan", "text": "x", "key_id": KEY})
    log.info("auth header Authorization: Bearer %s; api_key=%s", KEY, "hunter2hunter2")
    refused = {"max_tokens": f"write to {EMAIL} about the secret plan"}
    try:
        Chat.model_validate(refused)  # (a traceback shows this source line, not the values)
    except ValidationError:
        log.exception("bad request")
    why = f"upstream refused {TOKEN}"
    try:
        raise RuntimeError(why)
    except RuntimeError:
        logging.getLogger("faststream").error("handler failed", exc_info=True)
    text = captured.getvalue()
    for leaked in (EMAIL, TOKEN, KEY, "4111 1111", "7946", "hunter2", "the secret plan"):
        assert leaked not in text, leaked
    got = lines(captured)
    assert len(got) == 6
    assert got[0]["msg"].startswith("user said Mail [email] my key [secret]")
    assert got[2]["prompt"] == "[redacted]" and got[2]["text"] == "[redacted]"
    assert "input_value=[redacted]" in got[4]["exc"] and "ValidationError" in got[4]["exc"]
    assert "RuntimeError: upstream refused [secret]" in got[5]["exc"]


def test_a_foreign_handler_sees_the_redacted_text_too(captured: io.StringIO) -> None:
    other = io.StringIO()
    handler = logging.StreamHandler(other)
    lib = logging.getLogger("somelib")
    lib.addHandler(handler)
    try:
        lib.warning("contact %s", EMAIL)
    finally:
        lib.removeHandler(handler)
    assert EMAIL not in other.getvalue() and "[email]" in other.getvalue()


def test_ordinary_words_and_ids_are_kept() -> None:
    text = "route smollm2-135m-instruct pool=instant took 2026 ms at 2026-11-29 17:00 req-1f2e"
    assert logs.redact(text) == text


def test_an_uncaught_exception_in_a_thread_is_a_redacted_record(captured: io.StringIO) -> None:
    def fail() -> None:
        raise ValueError(f"cannot reach {EMAIL}")

    worker = threading.Thread(target=fail, name="monitor")
    worker.start()
    worker.join()
    (record,) = lines(captured)
    assert record["level"] == "error" and "thread monitor" in record["msg"]
    assert "ValueError: cannot reach [email]" in record["exc"] and EMAIL not in record["exc"]
