"""llama.cpp in process (llama-cpp-python): chat and completions with real token streaming.

JSON output is enforced by a grammar (constrained decoding): llama.cpp's own JSON grammar for
`json_object`, and for `json_schema` its schema converter with the string rule made strict
(the converter admits raw control characters inside strings, which is not JSON: raw newlines
and prose ran on inside a string value). The end of the text can only be sampled once the
grammar has closed every string and object, so an answer ends as valid JSON or is cut by the
token limit (finish_reason "length").
Logprobs need logits for every token, which slows prompt processing threefold, so a
second instance with `logits_all` is loaded only when a request asks for them.
"""

from __future__ import annotations

import importlib
import json
import os
import re
import threading
from pathlib import Path
from typing import Any

from libs.events import Delta, GenerateRequest, Usage
from services.inference_router.engine import Emit, merged_params

# JSON's string character: anything but a quote, a backslash or a control character, or an
# escape (RFC 8259, section 7).
_STRICT_CHAR = (
    r'char ::= [^"\\\x7F\x00-\x1F] | "\\" (["\\/bfnrt] | "u" [0-9a-fA-F] [0-9a-fA-F] '
    r"[0-9a-fA-F] [0-9a-fA-F])"
)
_CHAR_RULE = re.compile(r"^char ::= .*$", re.MULTILINE)


def json_grammar(fmt: dict[str, Any] | None) -> str | None:
    """The GBNF grammar that admits only JSON answers for OpenAI's response_format, or None."""
    from llama_cpp import llama_grammar

    kind = (fmt or {}).get("type")
    if kind == "json_object":
        return llama_grammar.JSON_GBNF
    if kind != "json_schema":
        return None
    schema = ((fmt or {}).get("json_schema") or {}).get("schema") or {"type": "object"}
    grammar = llama_grammar.json_schema_to_gbnf(json.dumps(schema))
    strict, count = _CHAR_RULE.subn(lambda _: _STRICT_CHAR, grammar)
    if count == 0 and "string" in grammar:
        raise RuntimeError("llama.cpp's schema grammar has no `char` rule to make strict")
    return strict


def resolve_model_file(spec: dict[str, Any], home: Path) -> Path:
    """Where the GGUF file is: inside a PyPI package, assembled from one, or a plain path."""
    if "path" in spec:
        return Path(spec["path"])
    if "package" in spec:
        module = importlib.import_module(spec["package"])
        return Path(module.__file__ or "").parent / spec["file"]
    if "assemble" in spec:
        module = importlib.import_module(spec["assemble"])
        target = home / "models" / module.MODEL_NAME
        if not target.exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            module.assemble(target)
        return target
    raise ValueError(f"model spec {spec!r} names no path, package or assemble")


class LlamaCppEngine:
    runs_inline = False

    def __init__(
        self,
        model_file: Path,
        n_ctx: int = 2048,
        n_threads: int = 0,
        defaults: dict[str, Any] | None = None,
        **_: Any,
    ) -> None:
        self.model_file = model_file
        self.n_ctx = n_ctx
        self.n_threads = n_threads or os.cpu_count() or 1
        self.defaults = defaults or {}
        self._plain: Any = None
        self._with_logits: Any = None
        self._lock = threading.Lock()

    def _model(self, logits_all: bool) -> Any:
        from llama_cpp import Llama

        if logits_all:
            if self._with_logits is None:
                self._with_logits = Llama(
                    model_path=str(self.model_file),
                    n_ctx=self.n_ctx,
                    n_threads=self.n_threads,
                    logits_all=True,
                    verbose=False,
                )
            return self._with_logits
        if self._plain is None:
            self._plain = Llama(
                model_path=str(self.model_file),
                n_ctx=self.n_ctx,
                n_threads=self.n_threads,
                verbose=False,
            )
        return self._plain

    def warm_up(self) -> None:
        self._model(False)

    def generate(self, request: GenerateRequest, emit: Emit) -> Usage:
        with self._lock:
            llm = self._model(request.params.logprobs)
            usage = Usage()
            for choice in range(request.params.n):
                prompt, completion = self._one_choice(llm, request, choice, emit)
                usage.prompt_tokens = prompt
                usage.completion_tokens += completion
            return usage

    def _one_choice(
        self, llm: Any, request: GenerateRequest, choice: int, emit: Emit
    ) -> tuple[int, int]:
        params = merged_params(request, self.defaults)
        if "seed" in params and choice:
            params["seed"] += choice
        p = request.params
        if request.kind == "chat":
            gbnf = json_grammar(p.response_format)
            stream = llm.create_chat_completion(
                messages=[m.model_dump(exclude_none=True) for m in request.messages],
                stream=True,
                logprobs=p.logprobs,
                top_logprobs=p.top_logprobs if p.logprobs else None,
                grammar=_grammar(gbnf) if gbnf else None,
                **params,
            )
        else:
            stream = llm.create_completion(
                prompt=request.prompt or "",
                stream=True,
                logprobs=p.top_logprobs if p.logprobs else None,
                **params,
            )
        prompt_tokens = 0
        completion_tokens = 0
        for chunk in stream:
            c = chunk["choices"][0]
            text = c["delta"].get("content") or "" if request.kind == "chat" else c.get("text", "")
            if text and not prompt_tokens:
                # The prompt has been evaluated, the first sampled token not yet.
                prompt_tokens = llm.n_tokens
            if text:
                completion_tokens += 1
            if not text and not c.get("finish_reason"):
                continue
            emit(
                Delta(
                    index=choice,
                    content=text,
                    logprobs=_logprobs(c.get("logprobs"), request.kind, p.top_logprobs or 0),
                    finish_reason=c.get("finish_reason"),
                )
            )
        return prompt_tokens or llm.n_tokens, completion_tokens


def _grammar(gbnf: str) -> Any:
    from llama_cpp import LlamaGrammar

    return LlamaGrammar.from_string(gbnf, verbose=False)


def _logprobs(raw: Any, kind: str, top: int) -> list[dict[str, Any]] | None:
    """Per-token entries in the chat shape, whichever shape llama.cpp produced.

    llama.cpp adds the sampled token to the alternatives when it is not among the
    best; OpenAI lists exactly `top_logprobs` alternatives, best first.
    """
    if not raw:
        return None
    entries = _entries(raw, kind)
    for entry in entries:
        best = sorted(entry["top_logprobs"], key=lambda t: -t["logprob"])
        entry["top_logprobs"] = best[:top]
    return entries


def _entries(raw: Any, kind: str) -> list[dict[str, Any]]:
    if kind == "chat":
        return [
            {
                "token": e["token"],
                "logprob": float(e["logprob"]),
                "bytes": list(e["token"].encode()),
                "top_logprobs": [
                    {
                        "token": t["token"],
                        "logprob": float(t["logprob"]),
                        "bytes": list(t["token"].encode()),
                    }
                    for t in e.get("top_logprobs") or []
                ],
            }
            for e in raw.get("content") or []
        ]
    return [
        {
            "token": token,
            "logprob": float(lp) if lp is not None else 0.0,
            "top_logprobs": [{"token": t, "logprob": float(v)} for t, v in (top or {}).items()],
        }
        for token, lp, top in zip(
            raw.get("tokens") or [],
            raw.get("token_logprobs") or [],
            raw.get("top_logprobs") or [],
            strict=False,
        )
    ]
