"""RAG retrieval benchmark: quality (recall@5, MRR; dense vs hybrid) and latency (P50/P95
over 100,000 chunks on the embedded default, qdrant-edge, through the tenant scope).

The labeled set is built offline and deterministically (seeded): records of fictional
projects, people, places and codes, each document a short paragraph, with questions
whose answering document is known. Half the questions are paraphrases (what dense
vectors are good at), half name an identifier (what BM25 is good at) — the mix an
internal knowledge base gets. The latency part uses random vectors: it measures the
engine and the tenant filter, not the embedder.

    python -m bench.rag
"""

from __future__ import annotations

import random
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from services.memory.adapters.embedder import Embedder
from services.memory.adapters.qdrant_edge import EdgeBackend
from services.memory.vectors import CollectionSpec, Sparse, TenantStores, VectorPoint

SEED = 7
N_DOCS = 400
N_LATENCY = 100_000
TENANTS = 50
QUERIES = 200

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


def quality(embedder: Embedder, tmp: Path) -> list[tuple[str, float, float]]:
    rng = random.Random(SEED)
    docs, questions = build_corpus(rng)
    questions = rng.sample(questions, min(QUERIES, len(questions)))
    stores = TenantStores(
        EdgeBackend(tmp / "quality"), [CollectionSpec("bench_chunks", embedder.dim, sparse=True)]
    )
    scope = stores.scope("bench")
    dense = embedder.dense(docs)
    scope.upsert(
        "bench_chunks",
        [
            VectorPoint(str(i), dense[i].tolist(), {"doc": i}, embedder.sparse_doc(d))
            for i, d in enumerate(docs)
        ],
    )
    qdense = embedder.dense([q for q, _ in questions])
    rows = []
    for mode in ("dense", "sparse", "hybrid"):
        hits5 = 0
        rr = 0.0
        for (q, answer), qv in zip(questions, qdense, strict=True):
            found = scope.search(
                "bench_chunks",
                [],
                10,
                dense=qv.tolist(),
                sparse=embedder.sparse_query(q),
                mode=mode,  # type: ignore[arg-type]
            )
            ranks = [h.payload["doc"] for h in found]
            if answer in ranks[:5]:
                hits5 += 1
            if answer in ranks:
                rr += 1.0 / (ranks.index(answer) + 1)
        rows.append((mode, hits5 / len(questions), rr / len(questions)))
    stores.close()
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
    for mode in ("dense", "hybrid"):
        times = []
        for tenant, qv, sq in queries:
            v = (qv / np.linalg.norm(qv)).tolist()
            t = time.perf_counter()
            stores.scope(tenant).search("bench_chunks", [], 5, dense=v, sparse=sq, mode=mode)  # type: ignore[arg-type]
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
        rows = quality(embedder, tmp)
        print(f"Retrieval quality: {N_DOCS} documents, {QUERIES} labeled questions (seed {SEED})")
        print(f"{'mode':<8} {'recall@5':>9} {'MRR':>7}")
        for mode, recall, mrr in rows:
            print(f"{mode:<8} {recall:>9.3f} {mrr:>7.3f}")
        by = {m: (r, mrr) for m, r, mrr in rows}
        gain = by["hybrid"][0] - by["dense"][0]
        print(f"hybrid - dense recall@5: {gain:+.3f} (target >= +0.05)")
        lat = latency(embedder, tmp)
        print(
            f"\nRetrieval latency: {N_LATENCY:,} chunks, {TENANTS} tenants, qdrant-edge, "
            f"tenant-filtered, not optimized (load {lat['load_s']:.1f} s)"
        )
        print(f"{'mode':<8} {'P50 ms':>8} {'P95 ms':>8}")
        for mode in ("dense", "hybrid"):
            print(f"{mode:<8} {lat[mode + '_p50_ms']:>8.2f} {lat[mode + '_p95_ms']:>8.2f}")
        print(f"(query embedding with MiniLM: {lat['embed_query_ms']:.1f} ms; target P50 <= 30 ms)")


if __name__ == "__main__":
    main()
