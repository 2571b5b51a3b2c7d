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

from services.memory import grounding, rerank
from services.memory.adapters.embedder import Embedder
from services.memory.adapters.qdrant_edge import EdgeBackend
from services.memory.rag import fused_search
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


# Paraphrase set: distinct documents, questions that share few words with their answer.
PARAPHRASE: list[tuple[str, str]] = [
    (
        "Employees receive twenty-five days of paid annual leave, plus public holidays.",
        "How much vacation time do staff get?",
    ),
    (
        "The cafeteria on the ground floor serves lunch between noon and two.",
        "When can I eat a midday meal in the canteen?",
    ),
    (
        "Expense claims must be filed within thirty days together with the receipts.",
        "What is the deadline for getting reimbursed for costs I paid?",
    ),
    (
        "Laptops are replaced every four years by the IT department.",
        "How often do we get a new notebook computer?",
    ),
    (
        "Visitors must sign in at reception and wear a badge at all times.",
        "What do guests have to do when they arrive at the building?",
    ),
    (
        "Parental leave lasts sixteen weeks at full salary for either parent.",
        "How long can a mother or father stay home after a baby is born?",
    ),
    (
        "The office is closed between Christmas and New Year.",
        "Are we working during the winter holidays?",
    ),
    (
        "Passwords are rotated every ninety days and need twelve characters.",
        "How frequently must I change my login secret?",
    ),
    (
        "Remote work is allowed up to three days a week with manager approval.",
        "Can I work from home, and how often?",
    ),
    (
        "Bicycles may be parked in the basement garage next to the showers.",
        "Where do I leave my bike?",
    ),
    ("Salaries are paid on the twenty-fifth of each month.", "What day does my pay arrive?"),
    (
        "Fire drills take place twice a year; assemble in the north car park.",
        "Where should we gather when the alarm goes off?",
    ),
    (
        "New hires get a mentor for their first six months.",
        "Will someone guide me when I join the company?",
    ),
    (
        "Printing in colour requires a code from the facilities team.",
        "How do I get access to make coloured copies?",
    ),
    (
        "Conference travel is booked through the internal travel portal only.",
        "How do I arrange flights to attend an event?",
    ),
    (
        "Sick days need a doctor's note after three consecutive days of absence.",
        "When do I need a medical certificate for being ill?",
    ),
    (
        "The gym in building B is free for staff and open from six in the morning.",
        "Is there somewhere to exercise at work?",
    ),
    (
        "Customer data must never be copied onto personal USB sticks.",
        "May I put client information on my own thumb drive?",
    ),
    (
        "Meeting rooms are reserved through the calendar, at most two weeks ahead.",
        "How far in advance can I book a room for a meeting?",
    ),
    ("Pets are not allowed in the office, except assistance dogs.", "Can I bring my dog to work?"),
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


DEPTH = 40
RERANKERS: list[tuple[str, rerank.Reranker]] = [
    ("rrf 1:1", rerank.WeightedRRF(1.0, 1.0)),
    ("rrf .3:1", rerank.WeightedRRF(0.3, 1.0)),
    ("rrf .1:1", rerank.WeightedRRF(0.1, 1.0)),
    ("score .7", rerank.ScoreFusion(0.7)),
    ("score .6", rerank.ScoreFusion(0.6)),
    ("score .5 *", rerank.DEFAULT),
    ("score .4", rerank.ScoreFusion(0.4)),
    ("score .3", rerank.ScoreFusion(0.3)),
]


def _score(ranked: list[list[int]], answers: list[int]) -> tuple[float, float]:
    hits5 = sum(1 for r, a in zip(ranked, answers, strict=True) if a in r[:5])
    rr = sum(1.0 / (r.index(a) + 1) for r, a in zip(ranked, answers, strict=True) if a in r)
    return hits5 / len(answers), rr / len(answers)


def quality(embedder: Embedder, tmp: Path) -> list[tuple[str, float, float, float, float]]:
    """Per mode: recall@5 and MRR on the identifier questions, then on the paraphrases."""
    rng = random.Random(SEED)
    docs, questions = build_corpus(rng)
    questions = rng.sample(questions, min(QUERIES, len(questions)))
    n_ids = len(questions)
    for text, question in PARAPHRASE:
        questions.append((question, len(docs)))
        docs.append(text)
    answers = [a for _, a in questions]
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

    def row(name: str, ranked: list[list[int]]) -> tuple[str, float, float, float, float]:
        ids = _score(ranked[:n_ids], answers[:n_ids])
        para = _score(ranked[n_ids:], answers[n_ids:])
        return (name, *ids, *para)

    rows = []
    for mode in ("dense", "sparse", "hybrid"):
        ranked = []
        for (q, _), qv in zip(questions, qdense, strict=True):
            found = scope.search(
                "bench_chunks",
                [],
                10,
                dense=qv.tolist(),
                sparse=embedder.sparse_query(q),
                mode=mode,  # type: ignore[arg-type]
            )
            ranked.append([h.payload["doc"] for h in found])
        rows.append(row(mode, ranked))
    # The re-ranking stage: both lists fetched (as rag.py does), fused here.
    pools = []
    for (q, _), qv in zip(questions, qdense, strict=True):
        lists = []
        for mode in ("dense", "sparse"):
            found = scope.search(
                "bench_chunks",
                [],
                DEPTH,
                dense=qv.tolist(),
                sparse=embedder.sparse_query(q),
                mode=mode,  # type: ignore[arg-type]
            )
            lists.append([(h.id, h.score, h.payload) for h in found])
        pools.append((q, rerank.merge(lists[0], lists[1])))
    for name, reranker in RERANKERS:
        ranked = [[c.payload["doc"] for c in reranker.rerank(q, pool)[:10]] for q, pool in pools]
        rows.append(row(name, ranked))
    stores.close()
    return rows


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
        rows = quality(embedder, tmp)
        print(
            f"Retrieval quality: {N_DOCS + len(PARAPHRASE)} documents; {QUERIES} questions "
            f"naming identifiers, {len(PARAPHRASE)} paraphrased (seed {SEED})"
        )
        print(f"{'mode':<10} {'ids R@5':>8} {'ids MRR':>8} {'para R@5':>9} {'para MRR':>9}")
        for mode, r1, m1, r2, m2 in rows:
            print(f"{mode:<10} {r1:>8.3f} {m1:>8.3f} {r2:>9.3f} {m2:>9.3f}")
        print("(* the default re-ranker; hybrid = Qdrant's own equal-weight RRF in one query)")
        by = {m: r1 for m, r1, *_ in rows}
        gain = by["score .5 *"] - by["dense"]
        print(f"hybrid (default fusion) - dense recall@5 (ids): {gain:+.3f} (target >= +0.05)")
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
