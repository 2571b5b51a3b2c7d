"""LoRA fine-tuning and generation with peft on transformers, on CPU.

transformers reads the base model straight from its GGUF file (dequantised to float32:
SmolLM2-135M-Instruct loads in ≈ 13-40 s on 2 cores); it is loaded once per process and
kept. A job injects a fresh LoRA (q/v projections by default), trains it, saves its
state dict as `adapter.safetensors` with peft's `adapter_config.json`, and removes it
again, so the next job starts from the untouched base model.

Only the assistant messages with weight 1 are learned: every other token's label is
-100. Held-out loss is the mean token loss over the same learned tokens of the held-out
examples. Generation is greedy (temperature 0) and seeded, so answers are repeatable.
"""

from __future__ import annotations

import json
import math
import random
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from peft import LoraConfig, get_peft_model, get_peft_model_state_dict, set_peft_model_state_dict
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors
from transformers import AutoModelForCausalLM, AutoTokenizer

from services.trainer.engine import Cancelled, StepCallback, TrainResult, TrainSettings
from services.trainer.training_file import Example


@dataclass(frozen=True)
class Encoded:
    ids: list[int]
    labels: list[int]


def _messages(example: Example | Sequence[Mapping[str, str]]) -> list[dict[str, str]]:
    if isinstance(example, Example):
        return [{"role": m.role, "content": m.content} for m in example.messages]
    return [{"role": m["role"], "content": m["content"]} for m in example]


class PeftEngine:
    """One base model in memory; LoRA training and (adapter) generation on it, one at a time."""

    def __init__(self, model_dir: Path, gguf_file: str, base_model: str, threads: int = 0) -> None:
        if threads > 0:
            torch.set_num_threads(threads)
        self.base_model = base_model
        self.tokenizer = AutoTokenizer.from_pretrained(model_dir, gguf_file=gguf_file)
        self.model: Any = AutoModelForCausalLM.from_pretrained(
            model_dir, gguf_file=gguf_file, dtype=torch.float32
        )
        self.model.eval()
        self.lock = threading.Lock()  # one job or generation at a time on the shared model

    # -- tokens --
    def _template(self, messages: list[dict[str, str]], generation_prompt: bool) -> list[int]:
        ids = self.tokenizer.apply_chat_template(
            messages, add_generation_prompt=generation_prompt, tokenize=True, return_dict=False
        )
        return list(ids)

    def encode(self, example: Example) -> Encoded:
        """The conversation's tokens, labels only on the assistant turns it learns from."""
        messages = _messages(example)
        ids = self._template(messages, False)
        labels = [-100] * len(ids)
        for i, m in enumerate(example.messages):
            if m.role != "assistant" or m.weight != 1:
                continue
            start = len(self._template(messages[:i], True))
            end = len(self._template(messages[: i + 1], False))
            labels[start:end] = ids[start:end]
        return Encoded(ids, labels)

    def _batch(self, items: Sequence[Encoded]) -> dict[str, torch.Tensor]:
        width = max(len(e.ids) for e in items)
        pad = int(self.tokenizer.pad_token_id or 0)
        ids = torch.full((len(items), width), pad, dtype=torch.long)
        labels = torch.full((len(items), width), -100, dtype=torch.long)
        mask = torch.zeros((len(items), width), dtype=torch.long)
        for row, e in enumerate(items):
            ids[row, : len(e.ids)] = torch.tensor(e.ids)
            labels[row, : len(e.labels)] = torch.tensor(e.labels)
            mask[row, : len(e.ids)] = 1
        return {"input_ids": ids, "attention_mask": mask, "labels": labels}

    def _loss(self, model: Any, items: Sequence[Encoded]) -> float | None:
        """Mean loss per learned token over `items` (None without items)."""
        if not items:
            return None
        total, count = 0.0, 0
        with torch.no_grad():
            for e in items:
                batch = self._batch([e])
                n = int((batch["labels"][:, 1:] != -100).sum())
                if n == 0:
                    continue
                total += float(model(**batch).loss) * n
                count += n
        return total / count if count else None

    # -- training --
    def train(
        self,
        train: Sequence[Example],
        held_out: Sequence[Example],
        cfg: TrainSettings,
        *,
        on_step: StepCallback | None = None,
        cancelled: threading.Event | None = None,
    ) -> TrainResult:
        with self.lock:
            return self._train(train, held_out, cfg, on_step, cancelled)

    def _train(
        self,
        train: Sequence[Example],
        held_out: Sequence[Example],
        cfg: TrainSettings,
        on_step: StepCallback | None,
        cancelled: threading.Event | None,
    ) -> TrainResult:
        started = time.monotonic()
        torch.manual_seed(cfg.seed)
        encoded = [self.encode(e) for e in train]
        held = [self.encode(e) for e in held_out]
        loss_before = self._loss(self.model, held)
        lora = LoraConfig(
            r=cfg.rank,
            lora_alpha=cfg.alpha,
            target_modules=list(cfg.target_modules),
            lora_dropout=0.0,
            bias="none",
            task_type="CAUSAL_LM",
        )
        peft_model = get_peft_model(self.model, lora)
        try:
            params = [p for p in peft_model.parameters() if p.requires_grad]
            optimizer = torch.optim.AdamW(params, lr=cfg.learning_rate, weight_decay=0.0)
            order = random.Random(cfg.seed)
            per_epoch = math.ceil(len(encoded) / cfg.batch_size)
            total = per_epoch * cfg.epochs
            step, tokens, losses = 0, 0, []
            peft_model.train()
            for _ in range(cfg.epochs):
                indices = list(range(len(encoded)))
                order.shuffle(indices)
                for start in range(0, len(indices), cfg.batch_size):
                    if cancelled is not None and cancelled.is_set():
                        raise Cancelled()
                    items = [encoded[i] for i in indices[start : start + cfg.batch_size]]
                    out = peft_model(**self._batch(items))
                    out.loss.backward()
                    optimizer.step()
                    optimizer.zero_grad()
                    step += 1
                    tokens += sum(len(e.ids) for e in items)
                    losses.append(float(out.loss))
                    if on_step is not None:
                        on_step(step, total, losses[-1])
            peft_model.eval()
            loss_after = self._loss(peft_model, held)
            files = self._adapter_files(peft_model, lora)
        finally:
            # Take the LoRA layers out again: the next job starts from the base model.
            self.model = peft_model.unload()
            self.model.eval()
        return TrainResult(
            adapter_files=files,
            loss_before=loss_before,
            loss_after=loss_after,
            steps=step,
            trained_tokens=tokens,
            train_losses=losses,
            seconds=time.monotonic() - started,
        )

    def _adapter_files(self, peft_model: Any, lora: LoraConfig) -> dict[str, bytes]:
        state = {
            k: v.detach().contiguous() for k, v in get_peft_model_state_dict(peft_model).items()
        }
        config = lora.to_dict()
        config["base_model_name_or_path"] = self.base_model
        return {
            "adapter.safetensors": save_safetensors(state),
            "adapter_config.json": json.dumps(config, sort_keys=True, default=_jsonable).encode(),
        }

    # -- generation --
    def generate(
        self,
        prompts: Sequence[Sequence[Mapping[str, str]]],
        adapter_files: Mapping[str, bytes] | None = None,
        *,
        max_new_tokens: int = 48,
        seed: int = 0,
    ) -> list[str]:
        """Greedy answers of the base model, or of the base model with an adapter's files."""
        with self.lock:
            model: Any = self.model
            if adapter_files is not None:
                model = self._with_adapter(adapter_files)
            try:
                return [self._answer(model, _messages(p), max_new_tokens, seed) for p in prompts]
            finally:
                if adapter_files is not None:
                    self.model = model.unload()
                    self.model.eval()

    def _with_adapter(self, files: Mapping[str, bytes]) -> Any:
        config = json.loads(files["adapter_config.json"])
        config.pop("base_model_name_or_path", None)
        lora = LoraConfig(
            **{k: v for k, v in config.items() if k in LoraConfig.__dataclass_fields__}
        )
        peft_model = get_peft_model(self.model, lora)
        result = set_peft_model_state_dict(
            peft_model, load_safetensors(files["adapter.safetensors"])
        )
        unexpected = list(getattr(result, "unexpected_keys", None) or [])
        if unexpected:
            self.model = peft_model.unload()
            raise ValueError(f"adapter weights do not fit: {unexpected[:3]}")
        peft_model.eval()
        return peft_model

    def _answer(self, model: Any, messages: list[dict[str, str]], limit: int, seed: int) -> str:
        torch.manual_seed(seed)
        ids = torch.tensor([self._template(messages, True)])
        with torch.no_grad():
            out = model.generate(
                input_ids=ids,
                attention_mask=torch.ones_like(ids),
                max_new_tokens=limit,
                do_sample=False,
                pad_token_id=self.tokenizer.pad_token_id,
            )
        return str(self.tokenizer.decode(out[0][ids.shape[1] :], skip_special_tokens=True)).strip()


def _jsonable(value: Any) -> Any:
    if isinstance(value, set | frozenset):
        return sorted(value)
    if hasattr(value, "value"):  # enums
        return value.value
    return str(value)
