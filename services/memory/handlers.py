"""The memory service's use cases: RAG operations, the context pack, memory extraction,
and deletion (a document, a vector store, a user's memories, a whole tenant)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from libs.audit import digest
from libs.context import RequestContext
from libs.errors import EnclaveError
from libs.events import (
    ChatMessage,
    FileOp,
    FilesList,
    GroundedSentence,
    GroundReply,
    GroundRequest,
    GuardrailVerdict,
    MemoriesOp,
    MemoryItem,
    MemoryOperation,
    MemoryStoreRequested,
    RagReply,
    RagRequest,
    RetrieveReply,
    RetrieveRequest,
    TenantDataDelete,
    VectorStoreBodyOp,
    VectorStoreFileOp,
    VectorStoreOp,
    VectorStoresList,
)
from libs.guard_window import restore
from services.memory import extraction, grounding, rewrite
from services.memory.adapters.mem0_memory import Memories
from services.memory.adapters.redis_buffer import ConversationBuffer
from services.memory.adapters.router_llm import RouterLLM
from services.memory.rag import Rag
from services.memory.retrieval import context_pack, memory_user

log = logging.getLogger("enclave.memory")
# Retrieved texts in, the guardrails' "context" verdict out.
# (ctx, texts, the request's pseudonyms) -> the context verdict
Screen = Callable[[RequestContext, list[str], dict[str, str]], Awaitable[GuardrailVerdict]]
# An audit record: action, who asked, outcome, and the ids and digests touched (no content).
Record = Callable[..., Awaitable[Any]]
# Operations that change or remove a tenant's data: each one goes into the audit chain.
AUDITED_OPS = {
    "files.delete",
    "vector_stores.create",
    "vector_stores.delete",
    "vector_stores.files.create",
    "vector_stores.files.delete",
    "memories.delete",
    "tenant.delete",
}
AUDITED_IDS = ("file_id", "vector_store_id", "memory_id")
MEMORY_LIMIT = 5
RECENT_BUDGET = 300


class MemoryService:
    def __init__(
        self,
        rag: Rag,
        memories: Memories,
        buffer: ConversationBuffer,
        llm: RouterLLM | None,
        screen: Screen | None = None,
        record: Record | None = None,
        rewrite_query: bool = True,
        rewrite_timeout_s: float = 5.0,
    ) -> None:
        self.rag = rag
        self.memories = memories
        self.buffer = buffer
        self.llm = llm
        self.screen = screen
        self.record = record
        # Whether RAG queries are rewritten when a request does not say.
        self.rewrite_query = rewrite_query
        self.rewrite_timeout_s = rewrite_timeout_s

    # -- gateway operations: each raises `EnclaveError` to refuse (libs/rpc.py sends it) --
    async def upload(
        self, ctx: RequestContext, filename: str, purpose: str, data: bytes
    ) -> RagReply:
        attrs: dict[str, Any] = {"bytes": len(data), "purpose": purpose}
        digests = {"content": digest(data), "filename": digest(filename)}
        body = await self._audited(
            "files.upload", ctx, attrs, digests, self.rag.upload(ctx, filename, purpose, data)
        )
        return RagReply(body=body)

    async def rag_op(self, req: RagRequest) -> RagReply:
        ctx, op = req.ctx, req.operation
        work = self._run(ctx, op)
        if op.op not in AUDITED_OPS:
            return RagReply(body=await work)
        ids = {k: str(getattr(op, k)) for k in AUDITED_IDS if getattr(op, k, None)}
        user = getattr(op, "user", None)
        # An end user's id may itself be personal data: only its digest is kept.
        users = {"user": digest(str(user))} if user else {}
        return RagReply(body=await self._audited(op.op, ctx, ids, users, work))

    async def _run(self, ctx: RequestContext, op: MemoryOperation) -> dict[str, Any]:
        rag = self.rag
        match op:
            case FilesList():
                return await rag.file_list(ctx, op.purpose)
            case FileOp(op="files.get"):
                return await rag.file_get(ctx, op.file_id)
            case FileOp(op="files.content"):
                return await rag.file_content(ctx, op.file_id)
            case FileOp():
                return await rag.file_delete(ctx, op.file_id)
            case VectorStoresList():
                return await rag.store_list(ctx)
            case VectorStoreOp(op="vector_stores.get"):
                return await rag.store_get(ctx, op.vector_store_id)
            case VectorStoreOp(op="vector_stores.delete"):
                return await rag.store_delete(ctx, op.vector_store_id)
            case VectorStoreOp():
                return await rag.member_list(ctx, op.vector_store_id)
            case VectorStoreBodyOp(op="vector_stores.create"):
                return await rag.store_create(ctx, op.body)
            case VectorStoreBodyOp(op="vector_stores.search"):
                return await rag.search(ctx, op.vector_store_id, op.body)
            case VectorStoreBodyOp():
                return await rag.member_add(ctx, op.vector_store_id, op.body)
            case VectorStoreFileOp(op="vector_stores.files.get"):
                return await rag.member_get(ctx, op.vector_store_id, op.file_id)
            case VectorStoreFileOp():
                return await rag.member_delete(ctx, op.vector_store_id, op.file_id)
            case MemoriesOp(op="memories.list"):
                return await self.list_memories(ctx, op.user)
            case MemoriesOp():
                return await self.delete_memories(ctx, op.user, op.memory_id)
            case TenantDataDelete():
                return await self.delete_tenant(ctx)

    async def _audited(
        self,
        action: str,
        ctx: RequestContext,
        attrs: dict[str, Any],
        digests: dict[str, str],
        work: Awaitable[dict[str, Any]],
    ) -> dict[str, Any]:
        """`work`'s result, recorded in the audit chain whether it succeeded or failed."""
        status = 200
        try:
            body = await work
        except EnclaveError as exc:
            status = exc.info.status
            raise
        except Exception:
            status = 500
            raise
        finally:
            if self.record is not None:
                if action == "files.upload" and status == 200:
                    attrs = {"file_id": body.get("id", ""), **attrs}
                await self.record(
                    action,
                    ctx,
                    outcome="ok" if status == 200 else "error",
                    attrs={"status": status, **{k: v for k, v in attrs.items() if v}},
                    digests=digests,
                )
        return body

    # -- memories --
    async def list_memories(self, ctx: RequestContext, user: str | None) -> dict[str, Any]:
        uid = memory_user(ctx.actor, ctx.role, user)
        found = await asyncio.to_thread(self.memories.all, ctx.tenant, uid)
        return {
            "object": "list",
            "data": [
                {
                    "id": m["id"],
                    "object": "memory",
                    "type": (m.get("metadata") or {}).get("type", "user"),
                    "text": m.get("memory", ""),
                    "created_at": m.get("created_at"),
                }
                for m in found
            ],
        }

    async def delete_memories(
        self, ctx: RequestContext, user: str | None, memory_id: str | None
    ) -> dict[str, Any]:
        uid = memory_user(ctx.actor, ctx.role, user)
        if memory_id:
            ok = await asyncio.to_thread(self.memories.delete_memory, ctx.tenant, uid, memory_id)
            if not ok:
                raise EnclaveError(404, f"No memory found with id '{memory_id}'.", "not_found")
            return {"id": memory_id, "object": "memory.deleted", "deleted": True}
        count = await asyncio.to_thread(self.memories.delete_user, ctx.tenant, uid)
        buffers = await self.buffer.delete(ctx.tenant, uid)
        return {"object": "memory.deleted", "deleted": True, "memories": count, "buffers": buffers}

    async def delete_tenant(self, ctx: RequestContext) -> dict[str, Any]:
        if ctx.role not in ("admin", "platform_operator"):
            raise EnclaveError(
                403,
                "Only an admin or a platform operator may delete a tenant's data.",
                "insufficient_permissions",
            )
        await self.rag.delete_tenant(ctx.tenant)
        await asyncio.to_thread(self.memories.delete_tenant, ctx.tenant)
        await self.buffer.delete(ctx.tenant)
        return {"object": "tenant.deleted", "tenant": ctx.tenant, "deleted": True}

    # -- a new turn's context --
    async def retrieve(self, req: RetrieveRequest) -> RetrieveReply:
        ctx = req.ctx
        uid = memory_user(ctx.actor, ctx.role, req.user)
        chunks = []
        query = req.query
        earlier: list[ChatMessage] | None = None

        async def conversation() -> list[ChatMessage]:
            """The conversation buffer's recent turns, read once for this request."""
            nonlocal earlier
            if earlier is None:
                earlier = (
                    await self.buffer.recent(ctx.tenant, uid, req.conversation_id, RECENT_BUDGET)
                    if req.conversation_id
                    else []
                )
            return earlier

        rag = req.rag is not None and req.rag.enabled
        try:
            if req.rag is not None and req.rag.enabled:
                store = await self.rag.repo.store(ctx.tenant, req.rag.collection)
                if store is None:
                    raise EnclaveError(
                        404,
                        f"No vector store found with id '{req.rag.collection}'.",
                        "not_found",
                        "rag.collection",
                    )
                if self._rewrites(req):
                    query = await self._rewritten(req, conversation)
                found = await self.rag.retrieve(
                    ctx, [store.id], query, req.rag.top_k, req.rag.filters, req.user
                )
                chunks = [(cit, text) for cit, text, _ in found]
            memories: list[MemoryItem] = []
            recent = []
            if req.memories:
                hits = await asyncio.to_thread(
                    self.memories.search, ctx.tenant, uid, req.query, MEMORY_LIMIT
                )
                memories = [
                    MemoryItem(
                        id=h["id"],
                        type=(h.get("metadata") or {}).get("type", "user"),
                        text=h.get("memory", ""),
                        score=float(h.get("score") or 0.0),
                    )
                    for h in hits
                ]
                recent = await conversation()
            pseudonyms = dict(req.pseudonyms)
            if self.screen is not None and (chunks or memories or recent):
                chunks, memories, recent, pseudonyms = await self._screened(
                    ctx, chunks, memories, recent, pseudonyms
                )
        except EnclaveError as exc:
            return RetrieveReply(error=exc.info)
        context, kept = context_pack(chunks, memories, recent, req.token_budget, rag)
        return RetrieveReply(
            citations=kept,
            memories=memories,
            recent=recent,
            context=context,
            chunks=[text for _, text in chunks[: len(kept)]],
            pseudonyms=pseudonyms,
        )

    async def ground(self, req: GroundRequest) -> GroundReply:
        """The grounding check of finished answers against the chunks they were given."""
        judged = await asyncio.to_thread(
            grounding.check_answers, req.answers, req.chunks, self.rag.embedder.dense
        )
        cites = req.citations or list(range(1, len(req.chunks) + 1))
        return GroundReply(
            sentences=[
                GroundedSentence(
                    choice=choice,
                    text=s.sentence,
                    supported=s.supported,
                    citation=cites[s.chunk] if s.chunk is not None else None,
                    score=s.score,
                )
                for choice, s in judged
            ]
        )

    def _rewrites(self, req: RetrieveRequest) -> bool:
        asked = req.rag.rewrite_query if req.rag is not None else None
        return self.llm is not None and (self.rewrite_query if asked is None else asked)

    async def _rewritten(
        self, req: RetrieveRequest, conversation: Callable[[], Awaitable[list[ChatMessage]]]
    ) -> str:
        """The query as a standalone search query, from the turns before it (the request's,
        else the conversation buffer's). Without earlier turns the question is its own
        context and no model is asked; without a usable rewrite, `rewrite.with_last_turn`."""
        history = [(m.role, m.content or "") for m in req.history if m.content]
        if not history:
            history = [(m.role, m.content or "") for m in await conversation() if m.content]
        if not history or self.llm is None:
            return req.query
        fallback = rewrite.with_last_turn(req.query, history)
        try:
            async with asyncio.timeout(self.rewrite_timeout_s):
                raw = await self.llm.complete(
                    req.ctx,
                    rewrite.messages_for(req.query, history),
                    max_tokens=rewrite.MAX_TOKENS,
                    stop=rewrite.STOP,
                )
        except Exception:  # retrieval goes on without the model's rewrite
            log.warning("query rewriting through the router failed", exc_info=True)
            return fallback
        query = rewrite.parse(raw, req.query, history)
        return fallback if query == req.query else query

    # -- a finished turn --
    async def _screened(
        self,
        ctx: RequestContext,
        chunks: list[Any],
        memories: list[MemoryItem],
        recent: list[ChatMessage],
        pseudonyms: dict[str, str],
    ) -> tuple[list[Any], list[MemoryItem], list[ChatMessage], dict[str, str]]:
        """Indirect injection: retrieved text is screened before any model sees it; what the
        guardrail flags is left out, and the rest goes on as the guardrail rewrote it (PII:
        memories and the conversation buffer hold real values, the model gets placeholders,
        numbered after the request's own `pseudonyms`; the extended mapping is returned)."""
        assert self.screen is not None
        texts = (
            [text for _, text in chunks]
            + [m.text for m in memories]
            + [m.content or "" for m in recent]
        )
        verdict = await self.screen(ctx, texts, pseudonyms)
        if verdict.error is not None:
            raise EnclaveError.of(verdict.error)
        out = verdict.texts if len(verdict.texts) == len(texts) else texts
        flagged = set(verdict.flagged)
        n, k = len(chunks), len(chunks) + len(memories)
        kept_chunks = [(c, out[i]) for i, (c, _) in enumerate(chunks) if i not in flagged]
        kept_memories = [
            m.model_copy(update={"text": out[n + i]})
            for i, m in enumerate(memories)
            if n + i not in flagged
        ]
        kept_recent = [
            m.model_copy(update={"content": out[k + i]})
            for i, m in enumerate(recent)
            if k + i not in flagged
        ]
        return kept_chunks, kept_memories, kept_recent, {**pseudonyms, **verdict.pseudonyms}

    async def store(self, event: MemoryStoreRequested) -> list[str]:
        """Pseudonyms stay true: the turn arrives as the model saw it (placeholders such as
        `<PERSON_1>`, which mean something else in the next request) with its mapping; the
        extraction model sees the placeholders only, and what is stored (memories, the
        conversation buffer) holds the real values, for this user only."""
        ctx = event.ctx
        uid = memory_user(ctx.actor, ctx.role, event.user)
        last_user = [m for m in event.messages if m.role == "user"][-1:]
        if event.conversation_id:
            turn = [
                m.model_copy(update={"content": restore(m.content or "", event.pseudonyms)})
                for m in last_user
            ]
            if event.answer:
                answer = restore(event.answer, event.pseudonyms)
                turn.append(ChatMessage(role="assistant", content=answer))
            await self.buffer.append(ctx.tenant, uid, event.conversation_id, turn)
        said = [m.content or "" for m in last_user]
        if not any(s.strip() for s in said):
            return []
        raw = ""
        if self.llm is not None:
            try:
                raw = await self.llm.complete(
                    ctx, extraction.messages_for(said), extraction.RESPONSE_FORMAT
                )
            except Exception:  # extraction must not lose the turn: fall back below
                log.warning("memory extraction through the router failed", exc_info=True)
        facts = [
            (kind, restore(text, event.pseudonyms)) for kind, text in extraction.parse(raw, said)
        ]
        if not facts:
            return []
        ids: list[str] = []
        stored = await asyncio.to_thread(self.memories.all, ctx.tenant, uid)
        for kind, text in extraction.new_facts(facts, [m.get("memory") or "" for m in stored]):
            ids += await asyncio.to_thread(
                self.memories.add, ctx.tenant, uid, kind, text, event.conversation_id or ""
            )
        return ids
