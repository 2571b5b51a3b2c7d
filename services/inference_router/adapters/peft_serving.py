"""transformers + peft on CPU: one base model, several tenants' LoRA adapters loaded at once.

The serving path chosen for adapters (services/inference_router/README.md says why and what
it costs). transformers reads the base model straight from its GGUF file (dequantised to
float32), exactly as the trainer does, so an adapter serves on the weights it was trained
on. Adapters are peft LoRA modules named from their digest (`lora_<hex>`); a request
selects one for its generation (or none: the base model with every adapter disabled).
What is loaded, swapped and drained is decided by hot_swap.HotSwap; bundles are verified
by adapter_store.AdapterStore before a byte of them is loaded.

One generation at a time (max_concurrency 1; the model is shared and peft's active
adapter is per model). Greedy at temperature 0 (or None with no default), else sampled with
the request's seed. Each choice's first delta carries the adapter's digest, and the usage
names it too.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from peft import LoraConfig, PeftModel, get_peft_model, set_peft_model_state_dict
from safetensors.torch import load as load_safetensors
from transformers import AutoModelForCausalLM, AutoTokenizer
from transformers.generation.streamers import BaseStreamer

from libs.events import Delta, GenerateRequest, ModelsChanged, Usage
from services.inference_router.adapter_choice import AdapterKey, AdapterRefused, wanted
from services.inference_router.adapters.adapter_store import AdapterStore
from services.inference_router.engine import Emit, merged_params
from services.inference_router.hot_swap import HotSwap


class _DeltaStreamer(BaseStreamer):
    """Turns generated token ids into text deltas as they come (whole characters only)."""

    def __init__(self, tokenizer: Any, index: int, emit: Emit, digest: str | None) -> None:
        self.tokenizer = tokenizer
        self.index = index
        self.emit = emit
        self.digest = digest
        self.ids: list[int] = []
        self.sent = ""
        self.prompt_seen = False
        self.first = True

    def put(self, value: Any) -> None:
        if not self.prompt_seen:  # generate() hands the prompt over first
            self.prompt_seen = True
            return
        self.ids.extend(int(t) for t in value.reshape(-1).tolist())
        text = self.tokenizer.decode(self.ids, skip_special_tokens=True)
        if text.endswith("\ufffd"):  # half a character: wait for the rest
            return
        self._send(text[len(self.sent) :], None)
        self.sent = text

    def _send(self, content: str, finish: str | None) -> None:
        if not content and finish is None:
            return
        digest = self.digest if self.first else None
        self.first = False
        self.emit(
            Delta(index=self.index, content=content, finish_reason=finish, adapter_digest=digest)
        )

    def end(self) -> None:
        pass


class PeftServingEngine:
    runs_inline = False
    max_concurrency = 1

    def __init__(
        self,
        model_dir: Path,
        gguf_file: str,
        base_model: str,
        store: AdapterStore,
        *,
        threads: int = 0,
        defaults: dict[str, Any] | None = None,
        publish: Callable[[ModelsChanged], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
        worker: str | None = None,
        max_loaded: int = 8,
        **_: Any,
    ) -> None:
        if threads > 0:
            torch.set_num_threads(threads)
        self.base_model = base_model
        self.store = store
        self.defaults = defaults or {}
        self.tokenizer = AutoTokenizer.from_pretrained(model_dir, gguf_file=gguf_file)
        self.model: Any = AutoModelForCausalLM.from_pretrained(
            model_dir, gguf_file=gguf_file, dtype=torch.float32
        )
        self.model.eval()
        self.published: list[ModelsChanged] = []
        self._publish = publish or self.published.append
        self._model_lock = threading.RLock()  # generation and (un)loading, one at a time
        self.swap = HotSwap(
            self, clock, base_model=base_model, max_loaded=max_loaded, worker=worker
        )

    # -- SwapPorts --
    def load(self, key: AdapterKey) -> None:
        files = self.store.verified_files(key)  # refuses what does not verify
        config = json.loads(files["adapter_config.json"])
        config.pop("base_model_name_or_path", None)
        lora = LoraConfig(
            **{k: v for k, v in config.items() if k in LoraConfig.__dataclass_fields__}
        )
        state = load_safetensors(files["adapter.safetensors"])
        name = key.lora_name
        with self._model_lock:
            if isinstance(self.model, PeftModel):
                if name in self.model.peft_config:
                    return  # the same digest: the same weights (another tenant's key)
                self.model.add_adapter(name, lora)
            else:
                self.model = get_peft_model(self.model, lora, adapter_name=name)
            result = set_peft_model_state_dict(self.model, state, adapter_name=name)
            unexpected = list(getattr(result, "unexpected_keys", None) or [])
            missing = [k for k in getattr(result, "missing_keys", None) or [] if name in k]
            if unexpected or missing:
                self._drop(name)
                raise AdapterRefused(
                    f"adapter {key.digest} does not fit {self.base_model}: unexpected"
                    f" {unexpected[:2]}, missing {missing[:2]}",
                    status=400,
                    code="invalid_adapter",
                )
            self.model.eval()

    def unload(self, key: AdapterKey) -> None:
        still_used = any(k.digest == key.digest for k in self.swap.versions if k != key)
        if not still_used:
            with self._model_lock:
                self._drop(key.lora_name)

    def publish(self, event: ModelsChanged) -> None:
        self._publish(event)

    def set_publisher(self, publish: Callable[[ModelsChanged], None]) -> None:
        """Where the hot swap's events go (the worker: `models.changed`)."""
        self._publish = publish

    def _drop(self, name: str) -> None:
        if not isinstance(self.model, PeftModel) or name not in self.model.peft_config:
            return
        if len(self.model.peft_config) == 1:
            self.model = self.model.unload()  # the last one: back to the plain base model
        else:
            if self.model.active_adapter == name:
                other = next(n for n in self.model.peft_config if n != name)
                self.model.set_adapter(other)
            self.model.delete_adapter(name)
        self.model.eval()

    def adapters_loaded(self) -> list[str]:
        return sorted(self.model.peft_config) if isinstance(self.model, PeftModel) else []

    # -- GenerationEngine --
    def generate(self, request: GenerateRequest, emit: Emit) -> Usage:
        want = wanted(request.adapter, request.ctx.tenant, self.base_model)
        lease = self.swap.acquire(want) if want is not None else None
        try:
            digest = lease.key.digest if lease else None
            name = lease.key.lora_name if lease else None
            with self._model_lock:
                usage = Usage(adapter_digest=digest)
                for choice in range(request.params.n):
                    prompt, completion = self._one_choice(request, choice, name, digest, emit)
                    usage.prompt_tokens = prompt
                    usage.completion_tokens += completion
                return usage
        finally:
            if lease is not None:
                self.swap.release(lease)

    def _one_choice(
        self,
        request: GenerateRequest,
        choice: int,
        name: str | None,
        digest: str | None,
        emit: Emit,
    ) -> tuple[int, int]:
        params = merged_params(request, self.defaults)
        if request.kind == "chat":
            messages = [m.model_dump(exclude_none=True) for m in request.messages]
            ids = list(
                self.tokenizer.apply_chat_template(
                    messages, add_generation_prompt=True, tokenize=True, return_dict=False
                )
            )
        else:
            ids = list(self.tokenizer(request.prompt or "")["input_ids"])
        limit = int(params.get("max_tokens") or 256)
        temperature = float(params.get("temperature") or 0.0)
        torch.manual_seed(int(params.get("seed") or 0) + choice)
        sampling: dict[str, Any] = {"do_sample": False}
        if temperature > 0:
            sampling = {
                "do_sample": True,
                "temperature": temperature,
                "top_p": float(params.get("top_p") or 1.0),
            }
        streamer = _DeltaStreamer(self.tokenizer, choice, emit, digest)
        tensor = torch.tensor([ids])
        kwargs = dict(
            input_ids=tensor,
            attention_mask=torch.ones_like(tensor),
            max_new_tokens=limit,
            pad_token_id=self.tokenizer.pad_token_id,
            streamer=streamer,
            **sampling,
        )
        with torch.no_grad():
            if name is None:
                if isinstance(self.model, PeftModel):
                    with self.model.disable_adapter():
                        out = self.model.generate(**kwargs)
                else:
                    out = self.model.generate(**kwargs)
            else:
                if not isinstance(self.model, PeftModel) or name not in self.model.peft_config:
                    raise RuntimeError(f"adapter {digest} is leased but not loaded")
                self.model.set_adapter(name)
                out = self.model.generate(**kwargs)
        produced = int(out.shape[1]) - len(ids)
        streamer._send("", "length" if produced >= limit else "stop")
        return len(ids), produced


def model_location(spec: dict[str, Any], home: Path) -> tuple[Path, str]:
    """The directory and GGUF file name of a pool's model spec (as llama.cpp finds it)."""
    from services.inference_router.adapters.llamacpp import resolve_model_file

    path = resolve_model_file(spec, home)
    return path.parent, path.name


def from_pool(settings: Any, pool: dict[str, Any]) -> PeftServingEngine:
    """The engine a registry pool `{engine: peft, model: {...}, base_model: <id>}` names.

    Bundles come from `<home>/adapters/`, trusted keys from `<home>/trainer.pub` and
    `<home>/adapter-keys/` (adapter_store.site_trusted_keys).
    """
    from services.inference_router.adapters.adapter_store import site_trusted_keys

    home = Path(settings.home)
    model_dir, gguf_file = model_location(pool["model"], home)
    base_model = str(pool["base_model"])
    store = AdapterStore(home / "adapters", site_trusted_keys(home), base_model)
    options = {k: v for k, v in pool.items() if k not in ("engine", "model", "base_model")}
    options.setdefault("threads", settings.worker_threads)
    return PeftServingEngine(model_dir, gguf_file, base_model, store, **options)
