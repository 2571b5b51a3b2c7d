"""Typed, versioned event models of the platform: every message on the bus is one of these.

Each model carries `v`, its schema version; a consumer rejects versions it does not know.
Field names follow OpenAI's where an OpenAI concept exists.
"""

from __future__ import annotations

import time
from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field, StrictBool, StrictInt, StrictStr, field_validator

from libs.context import RequestContext
from libs.errors import ErrorInfo

EVENTS_VERSION = 1


class FunctionCall(BaseModel):
    """A function the model called: its name and its arguments as JSON text (OpenAI's)."""

    name: str
    arguments: str = "{}"


class ToolCall(BaseModel):
    """One call in an assistant message's `tool_calls`."""

    id: str
    type: Literal["function"] = "function"
    function: FunctionCall


class ChatMessage(BaseModel):
    role: str
    content: str | None = None
    name: str | None = None
    # An assistant message that called tools, and a `tool` message answering one call.
    tool_calls: list[ToolCall] | None = None
    tool_call_id: str | None = None


class FunctionDefinition(BaseModel):
    """A function the model may call (OpenAI's `tools[].function`)."""

    name: str = Field(pattern=r"^[A-Za-z0-9_-]{1,64}$")
    description: str | None = None
    # A JSON Schema object; absent: the function takes no arguments.
    parameters: dict[str, Any] = Field(default_factory=lambda: {"type": "object", "properties": {}})
    strict: bool | None = None


class ToolDefinition(BaseModel):
    type: Literal["function"] = "function"
    function: FunctionDefinition


class NamedToolChoice(BaseModel):
    """`tool_choice: {"type": "function", "function": {"name": ...}}`: call this one."""

    class Name(BaseModel):
        name: str

    type: Literal["function"] = "function"
    function: Name


ToolChoice = Literal["auto", "none", "required"] | NamedToolChoice


class GenerationParams(BaseModel):
    """Sampling and output controls, as the OpenAI API names them."""

    temperature: float | None = None
    top_p: float | None = None
    max_tokens: int | None = None
    stop: list[str] = Field(default_factory=list)
    seed: int | None = None
    n: int = 1
    logprobs: bool = False
    top_logprobs: int | None = None
    # {"type": "json_object"} or {"type": "json_schema", "json_schema": {...}}
    response_format: dict[str, Any] | None = None
    user: str | None = None
    # Tool calling (libs/tool_calls.py): the functions the model may call, and how.
    tools: list[ToolDefinition] | None = None
    tool_choice: ToolChoice | None = None
    parallel_tool_calls: bool | None = None


class Usage(BaseModel):
    prompt_tokens: int = 0
    completion_tokens: int = 0
    # The digest of the LoRA adapter that produced the answer (None: the base model alone);
    # reported to the client as `system_fingerprint` and kept in the request's audit entry.
    adapter_digest: str | None = None

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


class RagOptions(BaseModel):
    """Extension field `rag` of /v1/chat/completions: retrieve from a vector store."""

    enabled: bool = True
    collection: str = Field(default="", max_length=256)  # a vector store id or name
    top_k: int = Field(default=5, ge=1, le=50)
    # OpenAI's vector store search `filters` shape (eq, ne, in, and, or).
    filters: dict[str, Any] | None = None
    # Flag the answer's sentences that no retrieved chunk supports (`grounding` field).
    grounding: bool = False
    # Rewrite the last message into a standalone search query with the conversation
    # (a small model, through the router); None: the service's default.
    rewrite_query: bool | None = None


class MemoryOptions(BaseModel):
    """Extension field `memory`: recall the user's memories, remember this turn."""

    enabled: bool = True
    conversation_id: str | None = None


class Citation(BaseModel):
    """A retrieved chunk the answer may cite as [n]."""

    index: int
    chunk_id: str
    file_id: str
    vector_store_id: str = ""
    filename: str = ""
    page: int | None = None
    score: float = 0.0
    quote: str = ""


class GroundedSentence(BaseModel):
    """One sentence of an answer and whether a retrieved chunk supports it."""

    choice: int = 0
    text: str
    supported: bool
    citation: int | None = None  # the [n] of the supporting chunk
    score: float = 0.0


class MemoryItem(BaseModel):
    id: str
    type: Literal["user", "feedback", "project", "reference"] = "user"
    text: str
    score: float = 0.0


class ChatRequested(BaseModel):
    """gateway -> agent_runtime (JetStream work queue): run one turn."""

    v: Literal[1] = 1
    ctx: RequestContext
    model: str
    kind: Literal["chat", "completion"] = "chat"
    messages: list[ChatMessage] = Field(default_factory=list)
    prompt: str | None = None
    params: GenerationParams = Field(default_factory=GenerationParams)
    stream: bool = True
    created: int = Field(default_factory=lambda: int(time.time()))
    # Where the runtime sends the turn's events: chat.stream.<gateway>.<request_id>.
    reply_subject: str = ""
    # 2 and up: the gateway published the turn again because the runtime that took it
    # went silent before any token reached the client (services/gateway/turn_client.py).
    attempt: int = 1
    rag: RagOptions | None = None
    memory: MemoryOptions | None = None


class ToolCallDelta(BaseModel):
    """A piece of one tool call of a choice, as OpenAI streams it: the first piece of a
    call carries its `id` and `name`, the rest fragments of its `arguments`."""

    index: int  # the call's place in the choice's `tool_calls`
    id: str | None = None
    name: str | None = None
    arguments: str = ""


class Delta(BaseModel):
    """A piece of one choice's output."""

    index: int = 0
    content: str = ""
    logprobs: list[dict[str, Any]] | None = None
    finish_reason: str | None = None
    # Set on a choice's first delta when an adapter serves it: its digest, so a stream names
    # what produced it from the first chunk on (`system_fingerprint`).
    adapter_digest: str | None = None
    tool_calls: list[ToolCallDelta] | None = None


class ToolStep(BaseModel):
    """A server-side tool an agent called, and its result as the model saw it (after the
    guardrails' context check); `approval_id` when the call waits for an approval."""

    call_id: str
    name: str
    arguments: str = "{}"
    output: str | None = None
    outcome: str = "ok"
    approval_id: str | None = None


class TurnEvent(BaseModel):
    """worker -> agent_runtime and agent_runtime -> gateway: what the turn produced so far.

    A message may carry several deltas (they are coalesced under load); `usage`, `error`
    and `done` come once, at the end.
    """

    v: Literal[1] = 1
    deltas: list[Delta] = Field(default_factory=list)
    usage: Usage | None = None
    error: ErrorInfo | None = None
    done: bool = False
    # Sent once, before the first delta, when the turn used retrieval / memories.
    citations: list[Citation] | None = None
    memories: list[MemoryItem] | None = None
    # Sent once, before the last event, when the request asked for the grounding check.
    grounding: list[GroundedSentence] | None = None
    # An agent turn's tool calls as they complete (the Responses API shows them).
    tool_steps: list[ToolStep] | None = None
    # Nothing produced, but alive: the runtime says so to the gateway and the worker to its
    # runtime every `heartbeat_s` (sent as a request: the reply says whether anyone still
    # waits, libs/rpc.py `ReplyRouter`). Silence for `stream_idle_s` means the sender died.
    heartbeat: bool | None = None


class Upstream(BaseModel):
    """A tenant's own settings for an external provider (its admin's
    `PUT /v1/admin/providers/{name}`), which replace the pool's static ones for its
    requests: where to send (`base_url`), with which key (`api_key`: sealed,
    libs.secret_box `enc:v1:...`, opened only by the worker that sends it; empty: none),
    and the upstream's name of the model. Set by the router on the route, per pool."""

    base_url: str
    api_key: str = ""
    model: str


class GenerateRequest(BaseModel):
    """agent_runtime -> inference_router -> worker: generate and stream to `deltas_subject`."""

    v: Literal[1] = 1
    ctx: RequestContext
    model: str
    kind: Literal["chat", "completion"] = "chat"
    messages: list[ChatMessage] = Field(default_factory=list)
    prompt: str | None = None
    params: GenerationParams = Field(default_factory=GenerationParams)
    # Set by the caller's generation client (libs/generation.py) to its replica's inbox.
    deltas_subject: str = ""
    # Set when nothing is to be done to the output (no output screening, memory or
    # grounding): the worker streams to the client's subject too, with these headers, and
    # the runtime only watches its own copy (timeouts, the outcome). One hop less a token.
    client_subject: str | None = None
    client_headers: dict[str, str] = Field(default_factory=dict)
    # Filled in by the router from the registry.
    pool: str | None = None
    adapter: str | None = None
    timeout_s: float | None = None
    # An external pool's tenant settings (RouteReply.upstreams[pool]); None: the pool's own.
    upstream: Upstream | None = None


class TurnCancelled(BaseModel):
    """gateway -> every agent_runtime replica (core NATS chat.cancel): the turn's client is
    gone (it disconnected, or the gateway gave up waiting); the replica running it stops it
    and cancels its generation."""

    v: Literal[1] = 1
    ctx: RequestContext
    reply_subject: str  # the turn's (one attempt's) subject: ChatRequested.reply_subject
    # not_admitted: the turn started ahead of its admission (gateway quotas.Headroom),
    # and the limits refused it.
    reason: Literal["client_disconnected", "timeout", "runtime_lost", "not_admitted"]


class GenerationCancelled(BaseModel):
    """agent_runtime or memory -> every worker (core NATS inference.cancel): stop the
    generation that streams to `deltas_subject`; a worker that runs it stops its engine at
    the next token, one still queued never starts."""

    v: Literal[1] = 1
    ctx: RequestContext
    deltas_subject: str
    reason: Literal["client_gone", "timeout", "worker_lost", "cancelled"]


class GenerateAccepted(BaseModel):
    """Reply to a GenerateRequest: a worker took it, or why none did."""

    v: Literal[1] = 1
    accepted: bool
    worker: str | None = None
    error: ErrorInfo | None = None
    # The pool's limit on the wait for each token, set by the router from the registry.
    timeout_s: float | None = None


class RouteRequest(BaseModel):
    """agent_runtime -> inference_router: which pool serves this model for this tenant."""

    v: Literal[1] = 1
    ctx: RequestContext
    model: str
    kind: Literal["chat", "completion"] = "chat"


class RouteReply(BaseModel):
    v: Literal[1] = 1
    pool: str | None = None
    adapter: str | None = None
    timeout_s: float | None = None
    # The model's retrieval default, for chats that do not say `rag` themselves.
    rag: RagOptions | None = None
    error: ErrorInfo | None = None
    # Failover: every pool that may serve it, in order (`pool` first); the runtime moves to
    # the next on an error before the first token (libs.failover). Empty: `pool` alone.
    pools: list[str] = Field(default_factory=list)
    # Some pool of `pools` is an external provider's: the input leaves the platform.
    external: bool = False
    # The pools of `pools` that are external providers' (pool -> provider), for the audit.
    providers: dict[str, str] = Field(default_factory=dict)
    # The external pools whose tenant set its own endpoint, key or model name (pool ->
    # Upstream, the key still sealed); the worker of that pool sends there instead.
    upstreams: dict[str, Upstream] = Field(default_factory=dict)


class EmbedRequest(BaseModel):
    v: Literal[1] = 1
    ctx: RequestContext
    model: str
    inputs: list[str]
    pool: str | None = None


class EmbedReply(BaseModel):
    v: Literal[1] = 1
    vectors: list[list[float]] = Field(default_factory=list)
    prompt_tokens: int = 0
    error: ErrorInfo | None = None


class ModelInfo(BaseModel):
    id: str
    kind: Literal["chat", "completion", "embedding"]
    pool: str
    owned_by: str = "enclave"
    created: int = 0
    # Filled for the admin view only (ModelsRequest.admin): the pool's engine, the external
    # provider it reaches, whether a worker answers on the pool now, and whether the
    # tenant's allow-list lets the model through.
    engine: str = ""
    provider: str | None = None
    serving: bool | None = None
    allowed: bool = True


class ModelsRequest(BaseModel):
    v: Literal[1] = 1
    tenant: str | None = None
    # The admin API's view: every model the tenant could see, each with `allowed`, the
    # engine and whether a worker serves its pool (probed); else the allowed ones only.
    admin: bool = False


class ModelsReply(BaseModel):
    v: Literal[1] = 1
    models: list[ModelInfo] = Field(default_factory=list)


# -- audit (issue 4) --

AUDIT_TOKEN = r"^[A-Za-z0-9_.:-]{1,64}$"
AUDIT_MAX_INT = 2**53 - 1  # RFC 8785 numbers are IEEE doubles: keep integers exact
AuditValue = Annotated[StrictStr | StrictBool | StrictInt, Field(union_mode="left_to_right")]


class AuditEvent(BaseModel):
    """any service -> audit (JetStream `audit.<tenant>.<kind>`): one thing that happened.

    Content is carried as digests (`sha256:<hex>`), never as text: no raw PII or secrets.
    No floats anywhere, so that the chain's canonical encoding (RFC 8785) is exact.
    """

    v: Literal[1] = 1
    id: str = Field(pattern=r"^[0-9a-f]{32}$")  # the idempotency key
    tenant: str = Field(min_length=1, max_length=128)
    kind: str = Field(pattern=AUDIT_TOKEN)  # subject token: the emitting stage
    action: str = Field(pattern=AUDIT_TOKEN)
    time: str  # UTC, `YYYY-MM-DDTHH:MM:SS.ffffffZ`: sorts as text
    service: str = ""
    actor: str = ""
    role: str = ""
    request_id: str = ""
    policy_version: str | None = None
    model: str | None = None
    adapter: str | None = None
    outcome: str = "ok"
    digests: dict[Annotated[str, Field(pattern=AUDIT_TOKEN)], str] = Field(default_factory=dict)
    attrs: dict[Annotated[str, Field(pattern=AUDIT_TOKEN)], AuditValue] = Field(
        default_factory=dict
    )

    @field_validator("attrs")
    @classmethod
    def _exact_ints(cls, attrs: dict[str, Any]) -> dict[str, Any]:
        for key, value in attrs.items():
            if isinstance(value, int) and abs(value) > AUDIT_MAX_INT:
                raise ValueError(f"attrs.{key}: integers must stay within ±2**53")
        return attrs


class AuditSearch(BaseModel):
    """gateway -> audit (request/reply): entries of one tenant's chain matching filters."""

    v: Literal[1] = 1
    tenant: str
    request_id: str | None = None
    actor: str | None = None
    action: str | None = None
    since: str | None = None
    until: str | None = None
    after_seq: int = 0
    limit: int = Field(default=100, ge=1, le=500)
    ctx: RequestContext | None = None  # who asks: the read is audited


class AuditVerifyRequest(BaseModel):
    """gateway -> audit (request/reply): verify a range of one tenant's chain."""

    v: Literal[1] = 1
    tenant: str
    from_seq: int = Field(default=1, ge=1)
    to_seq: int | None = None
    ctx: RequestContext | None = None  # who asks: the read is audited


class AuditExportRequest(BaseModel):
    """gateway -> audit (request/reply): one page of an export bundle.

    Without `upto` the service signs a fresh checkpoint at the head and answers with the
    bundle's header and checkpoint lines and the entry count; the pages follow up to it.
    """

    v: Literal[1] = 1
    tenant: str
    upto: int | None = None
    after_seq: int = 0
    limit: int = Field(default=500, ge=1, le=1000)
    # Paged export (libs.audit.export_lines): with `upto`, "entries" pages by seq;
    # "checkpoints" pages the stored checkpoints by id (`after_seq` is the id cursor),
    # those stored before the export's own (`before_id`, from the start reply).
    part: Literal["entries", "checkpoints"] = "entries"
    before_id: int | None = None
    ctx: RequestContext | None = None  # who asks: the read is audited


class AuditReply(BaseModel):
    """audit -> gateway: the answer to AuditSearch, AuditVerifyRequest or AuditExportRequest."""

    v: Literal[1] = 1
    entries: list[dict[str, Any]] = Field(default_factory=list)
    lines: list[str] = Field(default_factory=list)
    next_after_seq: int | None = None
    count: int = 0
    ok: bool | None = None
    first_bad_seq: int | None = None
    reason: str | None = None
    head_hash: str | None = None
    error: ErrorInfo | None = None
    # The start of an export: the line that ends the bundle (its export checkpoint), and
    # that checkpoint's id (the bound of the checkpoint pages).
    trailer: list[str] = Field(default_factory=list)
    checkpoint_id: int | None = None


class RetrieveRequest(BaseModel):
    """agent_runtime -> memory (request/reply): the context pack for a new turn."""

    v: Literal[1] = 1
    ctx: RequestContext
    user: str
    query: str
    conversation_id: str | None = None
    rag: RagOptions | None = None
    memories: bool = False
    token_budget: int = 1200
    # The turns before `query` (user and assistant), for rewriting it into a search query.
    history: list[ChatMessage] = Field(default_factory=list)
    # The request's pseudonyms (placeholder -> real value): retrieved text is screened with
    # them, so a value the user already named keeps its placeholder.
    pseudonyms: dict[str, str] = Field(default_factory=dict)


class RetrieveReply(BaseModel):
    v: Literal[1] = 1
    citations: list[Citation] = Field(default_factory=list)
    memories: list[MemoryItem] = Field(default_factory=list)
    recent: list[ChatMessage] = Field(default_factory=list)
    # The system message built from all of the above, within the token budget.
    context: str = ""
    # The cited chunks' texts as the model sees them, in `citations` order.
    chunks: list[str] = Field(default_factory=list)
    # The request's pseudonyms with those the screening of the retrieved text added (real
    # values in memories and the conversation buffer, as placeholders in `context`); the
    # runtime restores them in the answer for this user.
    pseudonyms: dict[str, str] = Field(default_factory=dict)
    error: ErrorInfo | None = None


class GroundRequest(BaseModel):
    """agent_runtime -> memory (request/reply): which sentences of the answers the
    retrieved chunks do not support."""

    v: Literal[1] = 1
    ctx: RequestContext
    answers: dict[int, str]  # choice index -> the answer as the client saw it
    chunks: list[str]
    citations: list[int] = Field(default_factory=list)  # the [n] of each chunk


class GroundReply(BaseModel):
    v: Literal[1] = 1
    sentences: list[GroundedSentence] = Field(default_factory=list)
    error: ErrorInfo | None = None


class MemoryStoreRequested(BaseModel):
    """agent_runtime -> memory (JetStream): a finished turn, to extract memories from."""

    v: Literal[1] = 1
    ctx: RequestContext
    user: str
    conversation_id: str | None = None
    messages: list[ChatMessage] = Field(default_factory=list)
    answer: str = ""
    # The turn's pseudonyms (placeholder -> real value): `messages` and `answer` hold the
    # placeholders the model saw; memory extracts from those and stores the real values.
    pseudonyms: dict[str, str] = Field(default_factory=dict)


# -- the memory API (gateway -> memory, request/reply memory.rag): one model per operation --


class FileOp(BaseModel):
    """`files.content`: the file's bytes as `{"id", "purpose", "content"}` (UTF-8 text),
    for the gateway to hand a `fine-tune` file to the trainer."""

    op: Literal["files.get", "files.delete", "files.content"]
    file_id: str


class FilesList(BaseModel):
    op: Literal["files.list"] = "files.list"
    purpose: str | None = None  # only the files of this purpose


class VectorStoresList(BaseModel):
    op: Literal["vector_stores.list"] = "vector_stores.list"


class VectorStoreOp(BaseModel):
    op: Literal["vector_stores.get", "vector_stores.delete", "vector_stores.files.list"]
    vector_store_id: str


class VectorStoreBodyOp(BaseModel):
    """An operation that takes OpenAI's request body as it came (the memory service
    validates it, with OpenAI's messages): create a store, search one, add a file to one."""

    op: Literal["vector_stores.create", "vector_stores.search", "vector_stores.files.create"]
    vector_store_id: str = ""
    body: dict[str, Any] = Field(default_factory=dict)


class VectorStoreFileOp(BaseModel):
    op: Literal["vector_stores.files.get", "vector_stores.files.delete"]
    vector_store_id: str
    file_id: str


class MemoriesOp(BaseModel):
    """The caller's own memories; admin and developer keys may name a `user`."""

    op: Literal["memories.list", "memories.delete"]
    user: str | None = None
    memory_id: str | None = None


class TenantDataDelete(BaseModel):
    """A whole tenant's memory and RAG data (admin of that tenant only)."""

    op: Literal["tenant.delete"] = "tenant.delete"


MemoryOperation = Annotated[
    FileOp
    | FilesList
    | VectorStoresList
    | VectorStoreOp
    | VectorStoreBodyOp
    | VectorStoreFileOp
    | MemoriesOp
    | TenantDataDelete,
    Field(discriminator="op"),
]


class RagRequest(BaseModel):
    """gateway -> memory (request/reply): one files / vector stores / memories operation.
    A refusal comes back as the bus's error reply (libs/rpc.py), with its status."""

    v: Literal[2] = 2
    ctx: RequestContext
    operation: MemoryOperation


class RagReply(BaseModel):
    """memory -> gateway: the OpenAI-shaped object of the operation."""

    v: Literal[2] = 2
    body: dict[str, Any] = Field(default_factory=dict)


# -- guardrails (request/reply guardrails.input / guardrails.output) --


class GuardrailCheck(BaseModel):
    """agent_runtime, gateway or memory -> guardrails: screen texts under the tenant's policy.

    direction "input": the messages a model is about to see (PII actions, injection on user
    messages, indirect injection on tool messages, topic control on the last user message).
    direction "context": retrieved RAG chunks or tool results, screened for indirect injection
    and PII, one score per text. direction "output": a window of model output (secrets, PII
    re-check, content policy); its verdict's entities carry their replacements.
    """

    v: Literal[1] = 1
    ctx: RequestContext
    direction: Literal["input", "output", "context"] = "input"
    messages: list[ChatMessage] = Field(default_factory=list)
    # An agent's policy below the tenant's (the HTTP check calls it `policy`).
    agent: str | None = None
    # Output checks: the digest of the LoRA adapter that produced the text, for the
    # verdict's audit entry (every entry written once a request's adapter is known has it).
    adapter: str | None = None
    # Pseudonyms already handed out in this request (placeholder -> real value), so that a
    # value seen again gets the same placeholder.
    pseudonyms: dict[str, str] = Field(default_factory=dict)
    # Output checks: "json" when the text is a JSON document (a json_object / json_schema
    # answer, tool-call arguments): it is rewritten only inside string values and stays
    # valid, or is blocked (rule output.structure) if it does not parse.
    structure: Literal["text", "json"] = "text"
    # The input is about to leave the platform (an external provider's pool): always
    # screened, never spared by the runtime's input passthrough.
    external: bool = False
    # Input checks: screen every message in full even once one is blocked (the HTTP check,
    # whose caller reads the redacted text and entities). A chat's check stops at its first
    # block instead: no model sees any of it, and a long jailbreak would otherwise spend ten
    # times its classifier's time in the PII models (services/guardrails/README.md).
    report: bool = False


class GuardrailEntity(BaseModel):
    type: str
    start: int
    end: int
    score: float
    # Which of the check's messages the span is in, what the policy does with it and the
    # text that replaces it (empty for "allow").
    message: int = 0
    action: str = "redact"
    replacement: str = ""


class GuardrailVerdict(BaseModel):
    """guardrails -> caller: the decision, the rewritten texts, and why."""

    v: Literal[1] = 1
    allowed: bool
    # The messages' contents after the policy's actions (same order as the check's).
    texts: list[str] = Field(default_factory=list)
    entities: list[GuardrailEntity] = Field(default_factory=list)
    injection_score: float = 0.0
    # Per message: the injection score (0 where the message was not screened for it).
    scores: list[float] = Field(default_factory=list)
    reasons: list[str] = Field(default_factory=list)
    # The rule that blocked, e.g. "injection.threshold" or "pii.entities.US_SSN".
    rule: str | None = None
    policy_version: str = ""
    # placeholder -> real value; it lives only for the request and is never stored.
    pseudonyms: dict[str, str] = Field(default_factory=dict)
    error: ErrorInfo | None = None
    # Input verdicts: whether the effective policy screens this turn's output at all.
    screen_output: bool = True
    # Context verdicts: the texts (indexes into the check's messages) to leave out.
    flagged: list[int] = Field(default_factory=list)
    # Input verdicts: > 0 when the tenant's effective policy checks nothing on input, so
    # the caller may let that tenant's input through unasked for this many seconds (or
    # until guardrails.policy.changed): the guardrails are then no hop of its turns.
    passthrough_s: float = 0.0


class PolicyGet(BaseModel):
    """The tenant's own policy document (or its agent's), the merged policy and version."""

    op: Literal["policy.get"] = "policy.get"
    agent: str | None = None


class PolicyPut(BaseModel):
    """Replace the tenant's (or its agent's) document: YAML or JSON text, checked by the
    guardrails' parser and merge rules (a lower level may only restrict)."""

    op: Literal["policy.put"] = "policy.put"
    agent: str | None = None
    document: str


class PolicyDelete(BaseModel):
    op: Literal["policy.delete"] = "policy.delete"
    agent: str | None = None


PolicyOperation = Annotated[PolicyGet | PolicyPut | PolicyDelete, Field(discriminator="op")]


class PolicyRequest(BaseModel):
    """gateway -> guardrails (request/reply guardrails.policies): one operation on the
    context's tenant's guardrail policy documents (the admin API, /v1/admin/policy)."""

    v: Literal[1] = 1
    ctx: RequestContext
    operation: PolicyOperation


class PolicyReply(BaseModel):
    v: Literal[1] = 1
    body: dict[str, Any] = Field(default_factory=dict)
    error: ErrorInfo | None = None


class AuditActions:
    """Actions of audit events that the platform records about itself (libs.audit has a
    helper for each): who managed keys, read the chain, acted as admin, and turns the
    runtime redelivered or dropped."""

    KEY_CREATED = "key.created"
    KEY_REVOKED = "key.revoked"
    AUDIT_READ = "audit.read"  # a search of the chain
    AUDIT_VERIFY = "audit.verify"
    AUDIT_EXPORT = "audit.export"
    ADMIN = "admin"  # prefix: `admin.<what>`, e.g. admin.tenant_data.delete
    TURN_REDELIVERED = "turn.redelivered"
    TURN_DROPPED = "turn.dropped"
    QUARANTINED = "audit.quarantined"  # a poisoned outbox event, moved aside
    ACCESS_DENIED = "access.denied"  # a credential tried another tenant (libs.rbac)
    EXTERNAL_CALL = "external.call"  # a request sent to a provider outside the platform


class KeyRevoked(BaseModel):
    """`enclave keys revoke` (or the admin API) -> every gateway replica (core NATS
    `keys.revoked`): forget this key now, not when its cache entry expires."""

    v: Literal[1] = 1
    key_id: str
    tenant: str


# -- sandbox (request/reply sandbox.exec, queue group "sandbox") --


class SandboxFile(BaseModel):
    """A file of a sandbox session: relative to its work dir, content in base64."""

    path: str = Field(min_length=1, max_length=255)
    content_b64: str


class SandboxExecRequest(BaseModel):
    """gateway or agent_runtime -> sandbox: run untrusted code once, in a fresh sandbox."""

    v: Literal[1] = 1
    ctx: RequestContext
    language: Literal["python", "bash"]
    code: str
    files: list[SandboxFile] = Field(default_factory=list)
    # Wall-clock limit; None: the service's default. Above the service's maximum: a 400.
    timeout_s: float | None = None
    # Who asks, for the audit entry: "api" (POST /v1/sandbox/exec) or a tool's name.
    tool: str = "api"


class SandboxExecReply(BaseModel):
    """sandbox -> caller. status: "ok" (exit 0), "error" (the code exited non-zero),
    "timeout" (wall-clock limit), "killed" (a resource limit ended it; `reason` says
    which). `error` is set instead when the request was refused or no sandbox could run.
    """

    v: Literal[1] = 1
    status: Literal["ok", "timeout", "killed", "error"] = "error"
    exit_code: int | None = None
    stdout: str = ""
    stderr: str = ""
    # Files the code created or changed in the work dir.
    files: list[SandboxFile] = Field(default_factory=list)
    reason: str | None = None
    # Output or files beyond the limits were left out.
    truncated: bool = False
    duration_ms: int = 0
    error: ErrorInfo | None = None


# -- trainer (fine-tuning jobs on the JetStream work queue trainer.jobs) --


class FineTuningJobRequested(BaseModel):
    """gateway (or a schedule) -> trainer: train a LoRA adapter for the caller's tenant.

    The training file travels as its JSONL text (the submitter resolved the file id);
    the trainer validates it line by line. `eval_set` is the tenant's eval set
    (services/trainer/evals.py), run on the base model and on the new adapter.
    """

    v: Literal[1] = 1
    ctx: RequestContext
    job_id: str
    model: str
    training_file: str
    training_data: str
    validation_file: str | None = None
    validation_data: str | None = None
    hyperparameters: dict[str, Any] = Field(default_factory=dict)
    seed: int | None = None
    suffix: str | None = None
    metadata: dict[str, str] | None = None
    eval_set: dict[str, Any] | None = None
    created_at: int = Field(default_factory=lambda: int(time.time()))


class FineTuningJobStatus(BaseModel):
    """trainer -> whoever listens on trainer.status.<job>: a job changed or made progress."""

    v: Literal[1] = 1
    tenant: str
    job_id: str
    status: str
    job: dict[str, Any]  # OpenAI's fine_tuning.job object
    event: dict[str, Any] | None = None  # the fine_tuning.job.event that says what happened
    adapter: dict[str, Any] | None = None  # public_id, digest, base_model, version, status


class FineTuningCancel(BaseModel):
    """Broadcast to every trainer replica: stop this job (the one running it stops)."""

    v: Literal[1] = 1
    tenant: str
    job_id: str


class JobsCreate(BaseModel):
    """POST /v1/fine_tuning/jobs: the trainer stores the job (`validating_files`), puts it
    on its work queue and answers the job object. The files travel as their JSONL text
    (the gateway read them from the memory service, where `/v1/files` keeps them)."""

    op: Literal["jobs.create"] = "jobs.create"
    model: str
    training_file: str
    training_data: str
    validation_file: str | None = None
    validation_data: str | None = None
    hyperparameters: dict[str, Any] = Field(default_factory=dict)
    seed: int | None = None
    suffix: str | None = None
    metadata: dict[str, str] | None = None
    eval_set: dict[str, Any] | None = None


class JobsList(BaseModel):
    op: Literal["jobs.list"] = "jobs.list"
    limit: int = Field(default=20, ge=1, le=100)
    after: str | None = None


class JobOp(BaseModel):
    """One job: retrieve it, cancel it, or list its events or checkpoints (newest first)."""

    op: Literal["jobs.retrieve", "jobs.cancel", "jobs.events", "jobs.checkpoints"]
    job_id: str
    limit: int = Field(default=20, ge=1, le=1000)
    after: str | None = None


class AdaptersList(BaseModel):
    """The caller's adapter versions (all of them, or of one base model)."""

    op: Literal["adapters.list"] = "adapters.list"
    base_model: str | None = None


class AdapterResolve(BaseModel):
    """`tenant/base:ft-vN` or `tenant/base:ft` -> base model and digest (own tenant only)."""

    op: Literal["adapters.resolve"] = "adapters.resolve"
    model: str


class AdapterRollback(BaseModel):
    op: Literal["adapters.rollback"] = "adapters.rollback"
    base_model: str


class TenantErase(BaseModel):
    """The tenant's erasure (a platform operator only; the gateway's DELETE
    /v1/admin/tenant): its jobs, adapter versions and bundles."""

    op: Literal["tenant.erase"] = "tenant.erase"


class EvalSetPut(BaseModel):
    """Store (or replace) one of the caller's eval sets by name (services/trainer/evals.py's
    shape). `model`: the base model whose serving version the nightly run evaluates."""

    op: Literal["evals.sets.put"] = "evals.sets.put"
    name: str = Field(min_length=1, max_length=200)
    eval_set: dict[str, Any]
    model: str | None = None


class EvalSetsList(BaseModel):
    op: Literal["evals.sets.list"] = "evals.sets.list"


class EvalsRun(BaseModel):
    """Run the caller's eval set `eval_set` on `model` (a base model or the caller's
    adapter) and on the version serving that base model; the report is stored. `wait`:
    answer the finished report (else the run, `in_progress`, to retrieve later)."""

    op: Literal["evals.run"] = "evals.run"
    eval_set: str
    model: str
    judge_model: str | None = None
    wait: bool = False


class EvalsList(BaseModel):
    op: Literal["evals.list"] = "evals.list"
    eval_set: str | None = None
    limit: int = Field(default=20, ge=1, le=100)


class EvalRetrieve(BaseModel):
    op: Literal["evals.retrieve"] = "evals.retrieve"
    run_id: str


class FeedbackCreate(BaseModel):
    """A rating of one of the tenant's completions (POST
    /v1/chat/completions/{completion_id}/feedback): up or down, with an optional
    correction. Refused (403) unless the tenant opted in to learning from feedback."""

    op: Literal["feedback.create"] = "feedback.create"
    completion_id: str = Field(min_length=1, max_length=200)
    rating: Literal["up", "down"]
    correction: str | None = Field(default=None, max_length=20_000)


class LearningGet(BaseModel):
    op: Literal["learning.get"] = "learning.get"


class LearningConfigure(BaseModel):
    """A tenant admin's settings of learning from feedback (services/trainer/learning.py);
    fields left out keep their value."""

    op: Literal["learning.configure"] = "learning.configure"
    feedback: bool | None = None
    retention_days: int | None = Field(default=None, ge=1, le=3650)
    base_model: str | None = None
    eval_set: str | None = None
    min_examples: int | None = Field(default=None, ge=1, le=100_000)
    hyperparameters: dict[str, Any] | None = None


TrainerOperation = Annotated[
    JobsCreate
    | JobsList
    | JobOp
    | AdaptersList
    | AdapterResolve
    | AdapterRollback
    | TenantErase
    | EvalSetPut
    | EvalSetsList
    | EvalsRun
    | EvalsList
    | EvalRetrieve
    | FeedbackCreate
    | LearningGet
    | LearningConfigure,
    Field(discriminator="op"),
]


class TrainerRequest(BaseModel):
    """-> trainer (request/reply trainer.api): one typed operation on the caller's tenant's
    jobs and adapters (gateway: the fine-tuning API and /v1/models; router: resolve)."""

    v: Literal[2] = 2
    ctx: RequestContext
    operation: TrainerOperation


class TrainerReply(BaseModel):
    v: Literal[1] = 1
    status: int = 200
    body: Any = None
    error: ErrorInfo | None = None


class TurnLogged(BaseModel):
    """runtime -> trainer (core NATS `trainer.turns`, queue group `trainer`): one finished
    chat or completion turn as screened, for tenants that opted in to learning from
    feedback (the trainer drops the others). `messages` is the input the model saw
    (pseudonyms in place of what the guardrails replaced), `answer` choice 0 as shown,
    real values replaced by their placeholders again."""

    v: Literal[1] = 1
    ctx: RequestContext
    completion_id: str
    kind: Literal["chat", "completion"]
    model: str
    adapter: str | None = None
    messages: list[dict[str, Any]]
    answer: str
    created_at: int = Field(default_factory=lambda: int(time.time()))


class ModelsChanged(BaseModel):
    """trainer / `enclave adapters` / workers -> everyone (core broadcast `models.changed`).

    `promoted` / `rolled_back`: the public id `tenant/base:ft` now resolves to `digest`
    (it was `previous`); routers and runtimes drop cached routes, workers load the new
    version and drain the old. `load_failed`: a worker could not load `digest` (why in
    `reason`) and keeps serving `previous`. `drained`: the old version's last in-flight
    request ended and it was unloaded. `access`: the tenant's model allow-list changed
    (the gateway's PUT /v1/admin/models): every cached route of that tenant ends (the
    model fields are empty).
    """

    v: Literal[1] = 1
    kind: Literal["promoted", "rolled_back", "load_failed", "drained", "access"]
    tenant: str
    base_model: str
    public_id: str
    digest: str
    previous: str | None = None
    reason: str | None = None
    worker: str | None = None


# -- agents (services/agent_runtime/agent_loop.py) --


class DelegateRequested(BaseModel):
    """agent_runtime -> agent_runtime: an agent hands a focused task to a subagent, as a
    child turn. `ctx` is the parent's (its request id and trace), so parent and child are
    one trace and one audit thread; `depth` is the child's (the parent's + 1)."""

    v: Literal[1] = 1
    ctx: RequestContext
    agent: str
    task: str
    depth: int = Field(ge=1)
    parent_agent: str = ""
    user: str = ""
    # What is left of the parent's wall time: the child stops by then whatever its own limit.
    wall_s_left: float | None = None


class DelegateResult(BaseModel):
    """The subagent's answer to its parent: its final text, or why it stopped."""

    v: Literal[1] = 1
    agent: str
    output: str = ""
    outcome: Literal["ok", "limit", "error"] = "ok"
    reason: str | None = None
    steps: int = 0
    usage: Usage = Field(default_factory=Usage)
    error: ErrorInfo | None = None


class ResponseCancelled(BaseModel):
    """gateway -> every gateway and runtime replica (core broadcast `responses.cancel`): a
    background response of the Responses API was cancelled; the gateway replica running it
    stops reading, the runtime replica running its turn stops it."""

    v: Literal[1] = 1
    tenant: str
    response_id: str
    # The turn's request id: the runtime running it stops it too.
    request_id: str | None = None


# -- approvals (services/agent_runtime: a tool call that waits for an approver) --


class ApprovalRecord(BaseModel):
    """A paused agent run waiting for a decision on one tool call (JetStream KV bucket
    `approvals`, key = id). The runtime writes it when the run pauses and when it ends;
    the gateway when an approver decides. `state` is the runtime's paused run."""

    v: Literal[1] = 1
    id: str = Field(pattern=r"^apr_[0-9a-f]{24}$")
    tenant: str
    agent: str
    tool: str
    call_id: str
    arguments: str = "{}"
    status: Literal["pending", "approved", "rejected", "completed", "failed"] = "pending"
    ctx: RequestContext  # the paused request's
    created_at: int = Field(default_factory=lambda: int(time.time()))
    decided_by: str | None = None
    decided_at: int | None = None
    reason: str | None = None
    # After the resumed run: its answer (through the output guardrail), or the approval
    # it paused on next.
    output: str | None = None
    next_approval: str | None = None
    state: dict[str, Any] = Field(default_factory=dict)

    def public(self) -> dict[str, Any]:
        """The approval as the API shows it (no run state)."""
        body = self.model_dump(exclude={"v", "ctx", "state"})
        body["object"] = "approval"
        body["request_id"] = self.ctx.request_id
        return body


class AgentResumeRequested(BaseModel):
    """gateway -> agent_runtime (JetStream work queue `agent.resume`): an approver decided
    (the record says how); go on with the paused run."""

    v: Literal[1] = 1
    ctx: RequestContext  # the approver's
    approval_id: str


# -- skills (gateway -> agent_runtime, request/reply agent.skills) --


class SkillFileData(BaseModel):
    """One file of a skill folder: its path in the folder, content in base64."""

    path: str = Field(min_length=1, max_length=255)
    content_b64: str


class SkillsRequest(BaseModel):
    """gateway -> agent_runtime: list, read, upload or delete the tenant's SKILL.md skills.
    A refusal (a malformed SKILL.md: the file and the problem) is the bus's error reply."""

    v: Literal[1] = 1
    ctx: RequestContext
    op: Literal["list", "get", "put", "delete"]
    name: str | None = None
    files: list[SkillFileData] = Field(default_factory=list)


class SkillsReply(BaseModel):
    v: Literal[1] = 1
    body: dict[str, Any] = Field(default_factory=dict)
