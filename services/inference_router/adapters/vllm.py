"""vLLM on a GPU: continuous batching, LoRA adapters per request, JSON by structured output.

vLLM pins its own torch, so this adapter runs in the GPU worker's own environment
(`pip install .[vllm]` there). One background thread steps the engine; each
`generate()` call (one per worker thread) adds a request and blocks on its outputs, so
many requests share every batch. Nothing here imports vllm until an engine is built.
"""

from __future__ import annotations

import queue
import threading
import uuid
from typing import Any

from libs.events import Delta, GenerateRequest, Usage
from libs.tool_calls import forced_format, prompt_messages
from services.inference_router.adapters.tool_calling import calling_emit
from services.inference_router.engine import Emit, merged_params


def sampling_kwargs(request: GenerateRequest, defaults: dict[str, Any]) -> dict[str, Any]:
    """vLLM SamplingParams arguments for an OpenAI-style request (pure: tested without vLLM)."""
    params = merged_params(request, defaults)
    p = request.params
    kwargs: dict[str, Any] = {
        "n": p.n,
        "temperature": params.get("temperature", 1.0),
        "top_p": params.get("top_p", 1.0),
        "max_tokens": params.get("max_tokens"),
        "stop": params.get("stop") or None,
        "seed": params.get("seed"),
    }
    if p.logprobs:
        kwargs["logprobs"] = p.top_logprobs or 0
    # A forced tool choice is the JSON Schema of one call (libs/tool_calls.py).
    fmt = p.response_format or forced_format(p) or {}
    if fmt.get("type") == "json_schema":
        kwargs["json_schema"] = (fmt.get("json_schema") or {}).get("schema") or {"type": "object"}
    elif fmt.get("type") == "json_object":
        kwargs["json_schema"] = {"type": "object"}
    return kwargs


class VllmEngine:
    runs_inline = False
    max_concurrency = 256

    def __init__(
        self,
        model: str,
        max_model_len: int = 4096,
        gpu_memory_utilization: float = 0.85,
        enable_lora: bool = False,
        max_loras: int = 4,
        defaults: dict[str, Any] | None = None,
        **_: Any,
    ) -> None:
        from vllm import EngineArgs, LLMEngine

        args = EngineArgs(
            model=model,
            max_model_len=max_model_len,
            gpu_memory_utilization=gpu_memory_utilization,
            enable_lora=enable_lora,
            max_loras=max_loras,
        )
        self.engine = LLMEngine.from_engine_args(args)
        self.tokenizer = self.engine.get_tokenizer()
        self.defaults = defaults or {}
        self._lock = threading.Lock()
        self._outputs: dict[str, queue.Queue[Any]] = {}
        self._wake = threading.Event()
        threading.Thread(target=self._loop, name="vllm-step", daemon=True).start()

    def _loop(self) -> None:
        while True:
            with self._lock:
                busy = self.engine.has_unfinished_requests()
                outputs = self.engine.step() if busy else []
            for out in outputs:
                q = self._outputs.get(out.request_id)
                if q is not None:
                    q.put(out)
            if not busy:
                self._wake.wait(0.05)
                self._wake.clear()

    def _sampling(self, request: GenerateRequest) -> Any:
        from vllm import SamplingParams
        from vllm.sampling_params import RequestOutputKind

        kwargs = sampling_kwargs(request, self.defaults)
        schema = kwargs.pop("json_schema", None)
        if schema is not None:
            try:
                from vllm.sampling_params import StructuredOutputsParams

                kwargs["structured_outputs"] = StructuredOutputsParams(json=schema)
            except ImportError:  # vLLM before structured outputs were renamed
                from vllm.sampling_params import GuidedDecodingParams

                kwargs["guided_decoding"] = GuidedDecodingParams(json=schema)
        return SamplingParams(output_kind=RequestOutputKind.DELTA, **kwargs)

    def generate(self, request: GenerateRequest, emit: Emit) -> Usage:
        emit = calling_emit(request.params, emit)
        if request.kind == "chat":
            # Tools in the system message, in the Hermes format the calls are parsed in.
            messages = prompt_messages(request.messages, request.params)
            prompt = self.tokenizer.apply_chat_template(
                [m.model_dump(exclude_none=True) for m in messages],
                tokenize=False,
                add_generation_prompt=True,
            )
        else:
            prompt = request.prompt or ""
        lora = None
        if request.adapter:
            from vllm.lora.request import LoRARequest

            lora = LoRARequest(request.adapter, abs(hash(request.adapter)) % 2**31, request.adapter)
        request_id = uuid.uuid4().hex
        outputs: queue.Queue[Any] = queue.Queue()
        self._outputs[request_id] = outputs
        usage = Usage()
        try:
            with self._lock:
                self.engine.add_request(
                    request_id, prompt, self._sampling(request), lora_request=lora
                )
            self._wake.set()
            finished = False
            while not finished:
                out = outputs.get()
                usage.prompt_tokens = len(out.prompt_token_ids or [])
                for choice in out.outputs:
                    usage.completion_tokens += len(choice.token_ids)
                    emit(
                        Delta(
                            index=choice.index,
                            content=choice.text,
                            finish_reason=choice.finish_reason,
                            logprobs=self._logprobs(choice),
                        )
                    )
                finished = out.finished
        finally:
            self._outputs.pop(request_id, None)
        return usage

    def _logprobs(self, choice: Any) -> list[dict[str, Any]] | None:
        if not choice.logprobs:
            return None
        entries = []
        for token_id, alternatives in zip(choice.token_ids, choice.logprobs, strict=False):
            chosen = alternatives[token_id]
            best = sorted(alternatives.values(), key=lambda lp: lp.rank or 0)
            entries.append(
                {
                    "token": chosen.decoded_token,
                    "logprob": chosen.logprob,
                    "bytes": list((chosen.decoded_token or "").encode()),
                    "top_logprobs": [
                        {
                            "token": lp.decoded_token,
                            "logprob": lp.logprob,
                            "bytes": list((lp.decoded_token or "").encode()),
                        }
                        for lp in best
                        if lp.rank is not None and lp.rank >= 1
                    ],
                }
            )
        return entries
