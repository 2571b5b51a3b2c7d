"""Memory extraction benchmark: precision, recall and F1 of the extracted memories on a
small labeled set of turns, for the model path, the fallback, and their combination.

The set (bench/data/extraction_set.json, written by hand) holds 80 user messages with the
memories one should keep from each as (type, key fact): all four types, turns with no
memory at all (questions, small talk, requests), several facts in one turn, facts said in
the third person or indirectly. 56 are split into a tuning half and a held-out half
(alternating within the strata no memory / one / several); 24 more, the blind part, were
written after the extractor was tuned and never used to change it. All are reported.

The real extraction path runs: the prompt and JSON schema of services/memory/extraction.py,
SmolLM2-135M-Instruct from deploy/models.yaml loaded in process by the worker's own
LlamaCppEngine (the schema becomes a llama.cpp grammar there), the request built as the
memory service's RouterLLM builds it (temperature 0, 200 tokens), then extraction's checks.

Matching needs no model: a predicted memory matches an expected one when the predicted
text's content words cover at least 60 % of the expected key fact's content words
(lower-cased, stop words dropped, a plural "s" stripped); pairs are matched one to one,
best coverage first. Precision = matched / predicted, recall = matched / expected, type
accuracy = matched pairs whose type is right, false memory = share of the no-memory turns
where anything was extracted.

    python -m bench.extraction
"""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from services.memory import extraction

DATA = Path(__file__).parent / "data" / "extraction_set.json"
MIN_COVER = 0.6
MODEL = "smollm2-135m-instruct"
MAX_TOKENS = 200  # what services/memory/adapters/router_llm.py asks for

Fact = tuple[str, str]
SPLITS = ("tuning", "held-out", "blind", "all")

_TOKEN = re.compile(r"[a-z0-9]+")
_STOP_WORDS = """a an the is am are was were be been being to of in on at for and or but so by from
    with as into about after over under than then there this that these those it its
    i me my mine we us our you your he him his she her they them their m s t re ll ve d
    user users do does did have has had will would should can could must please
    also just very really usually always"""
_STOP = frozenset(_STOP_WORDS.split())


def content_words(text: str) -> set[str]:
    """Lower-cased words without stop words; a plural `s` stripped from longer words."""
    out = set()
    for word in _TOKEN.findall(text.lower()):
        if word in _STOP or (len(word) == 1 and not word.isdigit()):
            continue
        if len(word) > 3 and word.endswith("s") and not word.endswith("ss"):
            word = word[:-1]
        out.add(word)
    return out


def coverage(expected: str, predicted: str) -> float:
    """Share of the expected key fact's content words found in the predicted text."""
    keys = content_words(expected)
    return len(keys & content_words(predicted)) / len(keys) if keys else 0.0


def match(predicted: list[Fact], expected: list[Fact]) -> list[tuple[int, int]]:
    """(expected index, predicted index) pairs, one to one, best coverage first."""
    scored = []
    for e, (_, fact) in enumerate(expected):
        for p, (_, text) in enumerate(predicted):
            c = coverage(fact, text)
            if c >= MIN_COVER:
                scored.append((-c, e, p))
    pairs: list[tuple[int, int]] = []
    used_e: set[int] = set()
    used_p: set[int] = set()
    for _, e, p in sorted(scored):
        if e not in used_e and p not in used_p:
            pairs.append((e, p))
            used_e.add(e)
            used_p.add(p)
    return sorted(pairs)


@dataclass
class Score:
    expected: int = 0
    predicted: int = 0
    matched: int = 0
    typed: int = 0  # matched pairs with the right type
    empty_turns: int = 0
    empty_turns_with_memory: int = 0

    def add(self, predicted: list[Fact], expected: list[Fact]) -> None:
        pairs = match(predicted, expected)
        self.expected += len(expected)
        self.predicted += len(predicted)
        self.matched += len(pairs)
        self.typed += sum(predicted[p][0] == expected[e][0] for e, p in pairs)
        if not expected:
            self.empty_turns += 1
            self.empty_turns_with_memory += bool(predicted)

    @property
    def precision(self) -> float:
        return self.matched / self.predicted if self.predicted else 0.0

    @property
    def recall(self) -> float:
        return self.matched / self.expected if self.expected else 0.0

    @property
    def f1(self) -> float:
        p, r = self.precision, self.recall
        return 2 * p * r / (p + r) if p + r else 0.0

    @property
    def type_accuracy(self) -> float:
        return self.typed / self.matched if self.matched else 0.0

    @property
    def false_memory(self) -> float:
        return self.empty_turns_with_memory / self.empty_turns if self.empty_turns else 0.0


def load_set(path: Path = DATA) -> list[dict[str, Any]]:
    """The labeled items, each with `split` set to `tuning`, `held-out` or `blind`."""
    doc = json.loads(path.read_text())
    items: list[dict[str, Any]] = doc["items"]
    seen = [0, 0, 0]
    for item in items:
        stratum = min(len(item["expected"]), 2)
        item["split"] = "tuning" if seen[stratum] % 2 == 0 else "held-out"
        seen[stratum] += 1
    for item in doc.get("blind", []):
        item["split"] = "blind"
        items.append(item)
    for item in items:
        item["expected"] = [(t, f) for t, f in item["expected"]]
    return items


def user_texts(item: dict[str, Any]) -> list[str]:
    """What the memory service extracts from: the turn's last user message."""
    return [item["user"]]


SYSTEMS: dict[str, Callable[[str, list[str]], list[Fact]]] = {
    "model only": extraction.from_model,
    "fallback only": lambda raw, said: extraction.fallback(said),
    "service (both)": extraction.parse,
}


def score(
    items: Iterable[dict[str, Any]], raws: dict[str, str], system: Callable[..., list[Fact]]
) -> Score:
    out = Score()
    for item in items:
        said = user_texts(item)
        out.add(system(raws.get(item["id"], ""), said), item["expected"])
    return out


def load_engine(n_threads: int = 0) -> Any:
    """The worker's engine for the extraction model, as deploy/models.yaml configures it."""
    from libs.settings import Settings
    from services.inference_router.adapters.llamacpp import LlamaCppEngine, resolve_model_file
    from services.inference_router.registry import load_registry

    settings = Settings()
    registry = load_registry(settings.models_file)
    pool = registry.pools[registry.models[MODEL].pool]
    options = {k: v for k, v in pool.items() if k not in ("engine", "model")}
    options["n_threads"] = n_threads or os.cpu_count() or 1
    engine = LlamaCppEngine(resolve_model_file(pool["model"], settings.home), **options)
    engine.warm_up()
    return engine


def generate(engine: Any, said: list[str]) -> str:
    """The model's raw answer, requested exactly as the memory service's RouterLLM does."""
    from libs.context import RequestContext
    from libs.events import ChatMessage, GenerateRequest, GenerationParams

    request = GenerateRequest(
        ctx=RequestContext(tenant="bench", request_id="bench-extraction"),
        model=MODEL,
        messages=[
            ChatMessage(role=m["role"], content=m["content"]) for m in extraction.messages_for(said)
        ],
        params=GenerationParams(
            temperature=0.0, max_tokens=MAX_TOKENS, response_format=extraction.RESPONSE_FORMAT
        ),
        deltas_subject="bench",
    )
    parts: list[str] = []
    engine.generate(request, lambda delta: parts.append(delta.content or ""))
    return "".join(parts)


def run_model(items: list[dict[str, Any]], engine: Any = None) -> dict[str, str]:
    engine = engine or load_engine()
    return {item["id"]: generate(engine, user_texts(item)) for item in items}


def table(items: list[dict[str, Any]], raws: dict[str, str]) -> list[str]:
    head = f"{'system':<16}{'split':<10}{'P':>6}{'R':>6}{'F1':>6}{'type':>6}{'false':>7}"
    lines = [head, "-" * len(head)]
    for name, system in SYSTEMS.items():
        for split in SPLITS:
            part = [i for i in items if split in ("all", i["split"])]
            s = score(part, raws, system)
            lines.append(
                f"{name:<16}{split:<10}{s.precision:>6.2f}{s.recall:>6.2f}{s.f1:>6.2f}"
                f"{s.type_accuracy:>6.2f}{s.false_memory:>7.2f}"
            )
    return lines


def main() -> None:
    items = load_set()
    n_exp = sum(len(i["expected"]) for i in items)
    n_empty = sum(not i["expected"] for i in items)
    print(f"{len(items)} turns, {n_exp} expected memories, {n_empty} turns with none")
    start = time.perf_counter()
    engine = load_engine()
    loaded = time.perf_counter()
    raws = run_model(items, engine)
    done = time.perf_counter()
    print(
        f"model {MODEL}: loaded in {loaded - start:.1f} s, "
        f"{(done - loaded) / len(items) * 1000:.0f} ms per turn"
    )
    print(f"match: predicted content words cover >= {MIN_COVER:.0%} of the key fact's")
    print("\n".join(table(items, raws)))


if __name__ == "__main__":
    main()
