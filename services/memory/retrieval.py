"""What retrieval decides, without I/O: filters, fusion, the context pack and its prompt.

- OpenAI's vector store search `filters` become storage conditions on file attributes
  (the tenant condition is not the caller's business: `vectors.TenantScope` adds it).
- Reciprocal rank fusion for any ranked lists (Qdrant fuses dense + BM25 server-side
  with the same formula; this one serves re-ranking and tests).
- The context pack: memories, recent turns and numbered document chunks within a token
  budget, near-duplicates dropped, and the instruction to answer only from it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from libs.events import ChatMessage, Citation, MemoryItem
from libs.rbac import Credential, end_user
from services.memory.chunking import approx_tokens
from services.memory.vectors import Cond

RRF_K = 60
QUOTE_CHARS = 300

INSTRUCTION = (
    "Answer the user's question using only the context below. If the context does not "
    "contain the answer, say that you don't know. Cite the sources you use as [n]."
)


class FilterError(ValueError):
    pass


def attribute_key(key: str) -> str:
    if not key or not key.replace("_", "").replace("-", "").isalnum():
        raise FilterError(f"invalid filter key `{key}`")
    return f"attributes.{key}"


def conditions(filters: dict[str, Any] | None) -> list[Cond]:
    """OpenAI's comparison / compound filters (eq, in, and) as conditions that all must hold."""
    if not filters:
        return []
    kind = filters.get("type")
    if kind == "and":
        out: list[Cond] = []
        for f in filters.get("filters") or []:
            out.extend(conditions(f))
        return out
    if kind == "eq":
        value = filters.get("value")
        if not isinstance(value, str | int | bool):
            raise FilterError("`eq` needs a string, integer or boolean value")
        return [Cond(attribute_key(str(filters.get("key"))), value)]
    if kind == "in":
        values = filters.get("value")
        if not isinstance(values, list) or not values:
            raise FilterError("`in` needs a non-empty list")
        return [Cond(attribute_key(str(filters.get("key"))), list(values))]
    raise FilterError(f"unsupported filter type `{kind}` (supported: eq, in, and)")


def acl_principals(actor: str, role: str, user: str | None) -> list[str]:
    """Who the caller is for chunk ACLs: its key, its role, and its end user: the one it
    names where its role may speak for end users (admin, developer), itself for a
    user-role key (naming another is 403), none otherwise (libs.rbac.end_user; the gateway
    applies the same rule, this is its defense in depth)."""
    out = [f"role:{role}"]
    if actor:
        out.append(f"key:{actor}")
    who = end_user(Credential(actor, "", frozenset({role})), user)
    if who:
        out.append(f"user:{who}")
    return out


def parse_acl(value: Any) -> list[str]:
    """File attribute `acl`: comma-separated principals (role:x, key:x, user:x, group:x)."""
    if value is None or value == "":
        return []
    items = value if isinstance(value, list) else str(value).split(",")
    return [str(i).strip() for i in items if str(i).strip()]


def rrf(rankings: Sequence[Sequence[str]], k: int = RRF_K) -> list[tuple[str, float]]:
    scores: dict[str, float] = {}
    for ranking in rankings:
        for rank, key in enumerate(ranking):
            scores[key] = scores.get(key, 0.0) + 1.0 / (k + rank + 1)
    return sorted(scores.items(), key=lambda kv: -kv[1])


def citation(index: int, payload: dict[str, Any], score: float, chunk_id: str) -> Citation:
    text = str(payload.get("text", ""))
    return Citation(
        index=index,
        chunk_id=chunk_id,
        file_id=str(payload.get("file_id", "")),
        vector_store_id=str(payload.get("vector_store_id", "")),
        filename=str(payload.get("filename", "")),
        page=payload.get("page"),
        score=score,
        quote=text[:QUOTE_CHARS],
    )


def _budgeted(title: str, entries: list[str], used: int, budget: int) -> tuple[str, int]:
    """The section's lines that fit the remaining token budget, and the tokens used then."""
    lines = [title]
    for line in entries:
        cost = approx_tokens(line)
        if used + cost > budget:
            break
        used += cost
        lines.append(line)
    return ("\n".join(lines) if len(lines) > 1 else ""), used


def context_pack(
    chunks: list[tuple[Citation, str]],
    memories: list[MemoryItem],
    recent: list[ChatMessage],
    budget: int,
    rag: bool,
) -> tuple[str, list[Citation]]:
    """The system message, and the citations that made it in (numbered from 1)."""
    parts: list[str] = [INSTRUCTION] if rag else []
    used = approx_tokens(INSTRUCTION) if rag else 0
    for title, entries in (
        ("What you remember about this user:", [f"- ({m.type}) {m.text}" for m in memories]),
        ("Earlier in this conversation:", [f"{m.role}: {m.content or ''}" for m in recent]),
    ):
        section, used = _budgeted(title, entries, used, budget)
        if section:
            parts.append(section)
    kept: list[Citation] = []
    if rag:
        lines = ["Context:"]
        for cit, text in chunks:
            n = len(kept) + 1
            source = cit.filename + (f", page {cit.page}" if cit.page else "")
            line = f"[{n}] ({source}) {text}"
            cost = approx_tokens(line)
            if used + cost > budget:
                break
            used += cost
            kept.append(cit.model_copy(update={"index": n}))
            lines.append(line)
        parts.append("\n".join(lines) if kept else "Context: (nothing relevant was found)")
    return "\n\n".join(parts), kept


def memory_user(actor: str, role: str, requested: str | None) -> str:
    """Whose memories: a `user` key is always itself; service keys name their end user."""
    if role in ("admin", "developer") and requested:
        return f"u:{requested}"
    return f"k:{actor}"
