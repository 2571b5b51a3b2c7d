"""Which base models the trainer can fine-tune, and where their GGUF files are.

The public model ids and the pools that serve them come from the model registry file
(deploy/models.yaml, ENCLAVE_MODELS_FILE); a pool's model spec names a GGUF file inside a
PyPI package (`{package, file}`) or a plain `path`, and the trainer finds it there the
way the inference router does. Only llama.cpp chat models with a GGUF file qualify.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml


@dataclass(frozen=True)
class BaseModel:
    id: str
    directory: Path
    gguf_file: str


def _gguf(spec: dict[str, Any]) -> tuple[Path, str] | None:
    if "path" in spec:
        path = Path(spec["path"])
        return path.parent, path.name
    if "package" in spec and "file" in spec:
        module = importlib.import_module(spec["package"])
        return Path(module.__file__ or "").parent, str(spec["file"])
    return None


def trainable_models(models_file: Path) -> dict[str, BaseModel]:
    registry = yaml.safe_load(models_file.read_text()) or {}
    pools: dict[str, Any] = registry.get("pools") or {}
    out: dict[str, BaseModel] = {}
    for model in registry.get("models") or []:
        pool = pools.get(model.get("pool", ""), {})
        if model.get("kind") != "chat" or pool.get("engine") != "llamacpp":
            continue
        found = _gguf(pool.get("model") or {})
        if found is not None:
            out[model["id"]] = BaseModel(model["id"], found[0], found[1])
    return out
