"""An OpenAI-compatible HTTP server as an engine: OpenAI, Azure OpenAI, OpenRouter, or a
vLLM or llama.cpp server on another host. Streams (SSE) and passes the upstream's usage.

A pool names it in the registry:
    openai-eu: {engine: openai_compat, model: gpt-4o-mini,
                base_url: "https://api.openai.com/v1", api_key: "enc:v1:..."}
The API key is sealed with libs.secret_box (a plain key in the registry is refused); it
is opened once, when the engine is built, and sent only as the Authorization header.

A tenant's own settings for the provider (`GenerateRequest.upstream`, from its admin's
`PUT /v1/admin/providers/{name}`, put on the route by the router) replace the pool's for
that request: its address, its key (still sealed on the bus, opened here with the
platform's secret) and its name of the model. One client per (address, key digest),
kept for the next request (at most `MAX_UPSTREAMS`, the oldest dropped first).

`generate` is the worker's blocking call (it runs on a worker thread, many at once, over
one pooled httpx client); `agenerate` is the same over httpx's async client for callers
on an event loop. A failure raises `AttemptFailed` saying whether any token had been
emitted, which is what libs.failover needs to decide whether another pool may answer.
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections import OrderedDict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx

from libs.events import Delta, GenerateRequest, Upstream, Usage
from libs.failover import AttemptFailed
from libs.secret_box import PREFIX, SecretBox
from services.inference_router.engine import Emit, merged_params


def request_body(request: GenerateRequest, model: str, defaults: dict[str, Any]) -> dict[str, Any]:
    """The upstream request for a GenerateRequest: only what the client sent (pure)."""
    p = request.params
    body: dict[str, Any] = {
        "model": model,
        "stream": True,
        "stream_options": {"include_usage": True},
        **merged_params(request, defaults),
    }
    if p.n != 1:
        body["n"] = p.n
    if p.response_format:
        body["response_format"] = p.response_format
    if p.logprobs:
        if request.kind == "chat":
            body["logprobs"] = True
            if p.top_logprobs is not None:
                body["top_logprobs"] = p.top_logprobs
        else:
            body["logprobs"] = p.top_logprobs or 0
    if request.kind == "chat":
        body["messages"] = [m.model_dump(exclude_none=True) for m in request.messages]
    else:
        body["prompt"] = request.prompt or ""
    return body


def parse_chunk(data: dict[str, Any], kind: str) -> tuple[list[Delta], Usage | None]:
    """The deltas and usage of one streamed chunk (pure)."""
    deltas = []
    for choice in data.get("choices") or []:
        if kind == "chat":
            text = (choice.get("delta") or {}).get("content") or ""
            logprobs = (choice.get("logprobs") or {}).get("content")
        else:
            text = choice.get("text") or ""
            logprobs = None
        finish = choice.get("finish_reason")
        if text or finish or logprobs:
            deltas.append(
                Delta(
                    index=int(choice.get("index", 0)),
                    content=text,
                    finish_reason=finish,
                    logprobs=logprobs,
                )
            )
    usage = data.get("usage")
    if isinstance(usage, dict):
        return deltas, Usage(
            prompt_tokens=int(usage.get("prompt_tokens") or 0),
            completion_tokens=int(usage.get("completion_tokens") or 0),
        )
    return deltas, None


def sse_data(lines: Iterator[str]) -> Iterator[dict[str, Any]]:
    """The JSON payloads of an SSE stream's `data:` lines, up to `[DONE]` (pure)."""
    for line in lines:
        if not line.startswith("data:"):
            continue
        payload = line[5:].strip()
        if payload == "[DONE]":
            return
        if payload:
            yield json.loads(payload)


def open_api_key(api_key: str, home: Path | None) -> str:
    if not api_key:
        return ""
    if not api_key.startswith(PREFIX):
        raise ValueError("an openai_compat pool's api_key must be sealed (enc:v1:...)")
    if home is None:
        raise ValueError("a sealed api_key needs the home that holds its key")
    return SecretBox.at(home).open(api_key)


MAX_UPSTREAMS = 256


def _headers(key: str) -> dict[str, str]:
    headers = {"accept": "text/event-stream"}
    if key:
        headers["authorization"] = f"Bearer {key}"
    return headers


class _Target:
    """Where requests go: the address and the clients that send its key."""

    def __init__(self, base_url: str, headers: dict[str, str], timeout: Any) -> None:
        self.base_url = base_url.rstrip("/")
        self.headers = headers
        self.timeout = timeout
        self.client = httpx.Client(headers=headers, timeout=timeout)
        self.aclient: httpx.AsyncClient | None = None

    def async_client(self) -> httpx.AsyncClient:
        if self.aclient is None:
            self.aclient = httpx.AsyncClient(headers=self.headers, timeout=self.timeout)
        return self.aclient

    def url(self, request: GenerateRequest) -> str:
        path = "chat/completions" if request.kind == "chat" else "completions"
        return f"{self.base_url}/{path}"

    def close(self) -> None:
        self.client.close()


class OpenAICompatEngine:
    runs_inline = False
    max_concurrency = 64  # requests in flight per worker: each waits on the network

    def __init__(
        self,
        model: str,
        base_url: str,
        api_key: str = "",
        home: Path | None = None,
        timeout_s: float = 60.0,
        defaults: dict[str, Any] | None = None,
        name: str = "",
        **_: Any,
    ) -> None:
        self.model = model
        self.name = name or model
        self.base_url = base_url.rstrip("/")
        self.defaults = defaults or {}
        self.home = home
        self.timeout = httpx.Timeout(timeout_s, connect=min(timeout_s, 10.0))
        self.own = _Target(self.base_url, _headers(open_api_key(api_key, home)), self.timeout)
        self.client = self.own.client
        self._tenants: OrderedDict[tuple[str, str], _Target] = OrderedDict()
        self._lock = threading.Lock()  # generate runs on many threads

    def _target(self, upstream: Upstream | None) -> tuple[_Target, str]:
        """Where a request goes and the model it names there: the pool's own, or the
        tenant's (its client made once, then kept)."""
        if upstream is None:
            return self.own, self.model
        if not upstream.base_url:
            return self.own, upstream.model
        digest = hashlib.sha256(upstream.api_key.encode()).hexdigest()
        key = (upstream.base_url, digest)
        with self._lock:
            target = self._tenants.get(key)
            if target is not None:
                self._tenants.move_to_end(key)
            else:
                secret = open_api_key(upstream.api_key, self.home)
                target = _Target(upstream.base_url, _headers(secret), self.timeout)
                self._tenants[key] = target
                while len(self._tenants) > MAX_UPSTREAMS:
                    self._tenants.popitem(last=False)  # not closed: it may still stream
        return target, upstream.model

    def _failed(self, reason: str, started: bool) -> AttemptFailed:
        return AttemptFailed(self.name, reason, started)

    def generate(self, request: GenerateRequest, emit: Emit) -> Usage:
        target, model = self._target(request.upstream)
        body = request_body(request, model, self.defaults)
        state = _Stream(self.name, request.kind, emit)
        try:
            with target.client.stream("POST", target.url(request), json=body) as response:
                if response.status_code != 200:
                    response.read()
                    raise self._failed(_status_reason(response), started=False)
                for data in sse_data(response.iter_lines()):
                    state.take(data)
        except httpx.HTTPError as exc:
            raise self._failed(f"{type(exc).__name__}: {exc}", state.started) from exc
        return state.finish()

    async def agenerate(self, request: GenerateRequest, emit: Emit) -> Usage:
        target, model = self._target(request.upstream)
        body = request_body(request, model, self.defaults)
        state = _Stream(self.name, request.kind, emit)
        try:
            client = target.async_client()
            async with client.stream("POST", target.url(request), json=body) as response:
                if response.status_code != 200:
                    await response.aread()
                    raise self._failed(_status_reason(response), started=False)
                async for line in response.aiter_lines():
                    for data in sse_data(iter([line])):
                        state.take(data)
        except httpx.HTTPError as exc:
            raise self._failed(f"{type(exc).__name__}: {exc}", state.started) from exc
        return state.finish()

    def close(self) -> None:
        self.own.close()
        with self._lock:
            for target in self._tenants.values():
                target.close()
            self._tenants.clear()


class _Stream:
    """One response's progress: whether a token went out, and the usage."""

    def __init__(self, name: str, kind: str, emit: Emit) -> None:
        self.name = name
        self.kind = kind
        self.emit = emit
        self.started = False
        self.usage: Usage | None = None
        self.chunks = 0
        self.finished = False

    def take(self, data: dict[str, Any]) -> None:
        if "error" in data:
            raise AttemptFailed(self.name, f"upstream error: {data['error']}", self.started)
        deltas, usage = parse_chunk(data, self.kind)
        for delta in deltas:
            self.started = True
            self.chunks += 1 if delta.content else 0
            self.finished = self.finished or delta.finish_reason is not None
            self.emit(delta)
        if usage is not None:
            self.usage = usage

    def finish(self) -> Usage:
        if not self.finished:
            raise AttemptFailed(
                self.name, "the upstream stream ended without a finish", self.started
            )
        # An upstream that ignores stream_options sends no usage: one token a chunk.
        return self.usage or Usage(completion_tokens=self.chunks)


def _status_reason(response: httpx.Response) -> str:
    return f"HTTP {response.status_code}: {response.text[:200]}"
