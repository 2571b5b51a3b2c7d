"""vLLM on a GPU: continuous batching, LoRA adapters per request, JSON by structured output.

vLLM pins its own torch, so this adapter runs in the GPU worker's own environment
(`pip install .[vllm]` there). One background thread steps the engine; each
`generate()` call (one per worker thread) adds a request and blocks on its outputs, so
many requests share every batch. Nothing here imports vllm until an engine is built.
"""

from __future__ import annotations

import os
import queue
import threading
import uuid
from pathlib import Path
from typing import Any

from libs.adapter_bundle import is_digest
from libs.events import Delta, GenerateRequest, Usage
from libs.tool_calls import forced_format, prompt_messages
from services.inference_router.adapter_choice import AdapterKey, AdapterRefused, wanted
from services.inference_router.adapters.adapter_store import AdapterStore, site_trusted_keys
from services.inference_router.adapters.tool_calling import calling_emit
from services.inference_router.engine import Emit, merged_params


class LoraIds:
    """vLLM LoRA names and ids from adapter digests (pure: tested without vLLM).

    vLLM caches an adapter under its integer id: an id from `hash(name)` differs per
    process and can collide, and one name reloaded with new weights kept the old cache
    (vllm issues 47724, 42125). Here the name IS the digest, and each digest gets its own
    id, counted from 1 in the order first seen and never reused, so two versions (or two
    tenants' adapters) never share an id and one id always means the same weights.
    """

    def __init__(self) -> None:
        self._ids: dict[str, int] = {}
        self._lock = threading.Lock()

    def name_and_id(self, digest: str) -> tuple[str, int]:
        if not is_digest(digest):
            raise ValueError(
                f"vLLM serves adapters by digest (sha256:...), not by name: {digest!r}"
            )
        with self._lock:
            if digest not in self._ids:
                self._ids[digest] = len(self._ids) + 1
            return digest, self._ids[digest]


class LoraSource:
    """Verified adapters for vLLM: the bundle checked (adapter_store), then written once in
    peft's layout (`adapter_model.safetensors`, `adapter_config.json`) under
    `<out_root>/<hex>/`, the directory vLLM loads. vLLM serves pinned digests only: the
    alias `tenant/base:ft` moves by hot swap, which this engine does not run."""

    def __init__(self, store: AdapterStore, out_root: Path) -> None:
        self.store = store
        self.out_root = out_root
        self.ids = LoraIds()
        self._verified: set[AdapterKey] = set()

    def lora(self, request: GenerateRequest) -> tuple[str, int, str] | None:
        """(name, id, path) of the request's adapter for a LoRARequest; None: the base model."""
        want = wanted(request.adapter, request.ctx.tenant, self.store.base_model)
        if want is None:
            return None
        if want.digest is None:
            raise AdapterRefused(
                f"this worker serves adapters by digest only, not the alias {want.alias!r}",
                status=400,
                code="invalid_adapter",
            )
        key = AdapterKey(want.tenant, want.digest)
        target = self.out_root / want.digest.removeprefix("sha256:")
        if key not in self._verified:
            files = self.store.verified_files(key)  # refuses what does not verify
            if not target.exists():
                tmp = target.with_name(f".{target.name}.tmp{os.getpid()}")
                tmp.mkdir(parents=True, exist_ok=True)
                (tmp / "adapter_model.safetensors").write_bytes(files["adapter.safetensors"])
                (tmp / "adapter_config.json").write_bytes(files["adapter_config.json"])
                os.replace(tmp, target)
            self._verified.add(key)
        name, lora_id = self.ids.name_and_id(want.digest)
        return name, lora_id, str(target)


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
        home: str | None = None,
        base_model: str | None = None,
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
        # Adapters come only from verified bundles under <home>/adapters (LoraSource);
        # without `home` and `base_model` every adapter request is refused.
        self.loras: LoraSource | None = None
        if enable_lora and home and base_model:
            root = Path(home)
            store = AdapterStore(root / "adapters", site_trusted_keys(root), base_model)
            self.loras = LoraSource(store, root / "vllm-loras")
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

            if self.loras is None:
                raise AdapterRefused(
                    "this worker serves no adapters (enable_lora, home and base_model unset)",
                    status=400,
                    code="invalid_adapter",
                )
            found = self.loras.lora(request)
            lora = LoRARequest(*found) if found else None
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
