"""The AsyncAPI 3 document of the bus: every subject of `libs/subjects.py`, every event of
`libs/events.py` (their pydantic JSON schemas), who sends and who receives, queue groups,
JetStream streams and consumers, and the raw nats-py subscriptions along with FastStream's.

`python -m libs.asyncapi` writes docs/asyncapi.json; tests/deploy/test_asyncapi.py checks
that the committed file equals a fresh generation (so it cannot go stale), that it is valid
AsyncAPI 3.0, and that every subject and every event is in it.
"""

from __future__ import annotations

import functools
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from libs import events
from libs.context import REQUEST_ID_HEADER, TENANT_HEADER, TRACEPARENT_HEADER, WORKER_HEADER
from libs.settings import REPO_ROOT
from libs.subjects import SUBJECTS_VERSION, Subjects

DOCUMENT = REPO_ROOT / "docs" / "asyncapi.json"
REF = "#/components/schemas/{model}"


@dataclass(frozen=True)
class Receiver:
    services: tuple[str, ...]
    queue: str | None = None  # a NATS queue group: one replica gets each message
    # How it subscribes: "faststream", "nats-py" (a raw callback on the hot path), or
    # "jetstream" (a durable consumer).
    client: str = "faststream"
    durable: str | None = None
    subscribe: str | None = None  # the subscription's subject, where it is a wildcard


@dataclass(frozen=True)
class Channel:
    """One subject: its address (with {parameters}), its message and the reply's."""

    id: str
    subject: str  # the `Subjects` member that names it
    address: str
    summary: str
    messages: tuple[type[BaseModel] | str, ...]
    senders: tuple[str, ...]
    receiver: Receiver
    replies: tuple[type[BaseModel], ...] = ()
    stream: str | None = None  # the `Subjects` member naming its JetStream stream
    parameters: dict[str, str] = field(default_factory=dict)
    # Subjects members that subscribe to it with a wildcard.
    wildcards: tuple[str, ...] = ()


_s = Subjects()
# The stages that emit audit events (libs/audit.py: AuditPublisher).
AUDITED = ("gateway", "agent_runtime", "guardrails", "memory", "audit")
BYTES = "RawBytes"  # memory.upload: the file itself, its metadata in headers
EMPTY = "Empty"  # guardrails.policy.changed: nothing but the subject

CHANNELS: tuple[Channel, ...] = (
    Channel(
        "chatRequested",
        "chat_requested",
        _s.chat_requested,
        "Run one chat or completion turn (JetStream work queue; acked when the turn is done).",
        (events.ChatRequested,),
        ("gateway",),
        Receiver(("agent_runtime",), "agent_runtime", "jetstream", "agent_runtime"),
        stream="chat_stream_name",
    ),
    Channel(
        "chatStream",
        "chat_stream",
        _s.chat_stream("{gateway}", "{request_id}"),
        "The turn's events for the gateway replica that holds the client's connection.",
        (events.TurnEvent,),
        ("agent_runtime", "worker"),
        Receiver(("gateway",), client="nats-py", subscribe=_s.chat_streams_of("{gateway}")),
        parameters={"gateway": "The gateway replica's id.", "request_id": "The request's id."},
        wildcards=("chat_streams_of",),
    ),
    Channel(
        "chatCancel",
        "chat_cancel",
        _s.chat_cancel,
        "A turn's client is gone (disconnected, or the gateway stopped waiting): the runtime"
        " replica that runs the turn stops it and cancels its generation.",
        (events.TurnCancelled,),
        ("gateway",),
        Receiver(("agent_runtime",), client="nats-py"),
    ),
    Channel(
        "inferenceCancel",
        "inference_cancel",
        _s.inference_cancel,
        "Stop one generation (its deltas subject): the worker running it stops its engine at"
        " the next token; a queued one never starts.",
        (events.GenerationCancelled,),
        ("agent_runtime", "memory"),
        Receiver(("worker",), client="nats-py"),
    ),
    Channel(
        "inferenceRoute",
        "inference_route",
        _s.inference_route,
        "Which pool, adapter and timeout serve a model for a tenant (cached by the runtime).",
        (events.RouteRequest,),
        ("agent_runtime",),
        Receiver(("inference_router",), "inference_router"),
        replies=(events.RouteReply,),
    ),
    Channel(
        "inferenceGenerate",
        "inference_generate",
        _s.inference_generate,
        "Resolve a model and hand the generation to its pool in one request.",
        (events.GenerateRequest,),
        ("memory",),
        Receiver(("inference_router",), "inference_router", "nats-py"),
        replies=(events.GenerateAccepted,),
    ),
    Channel(
        "inferenceEmbed",
        "inference_embed",
        _s.inference_embed,
        "Embed texts with a model of kind embedding.",
        (events.EmbedRequest,),
        ("gateway",),
        Receiver(("inference_router",), "inference_router"),
        replies=(events.EmbedReply,),
    ),
    Channel(
        "inferenceModels",
        "inference_models",
        _s.inference_models,
        "The models a tenant sees.",
        (events.ModelsRequest,),
        ("gateway",),
        Receiver(("inference_router",), "inference_router"),
        replies=(events.ModelsReply,),
    ),
    Channel(
        "inferenceWorker",
        "inference_worker",
        _s.inference_worker("{pool}"),
        "A pool's workers: accept a generation at once and stream it, or embed.",
        (events.GenerateRequest, events.EmbedRequest),
        ("agent_runtime", "inference_router"),
        Receiver(("worker",), "{pool}", "nats-py"),
        replies=(events.GenerateAccepted, events.EmbedReply),
        parameters={"pool": "The worker pool (deploy/models.yaml); also the queue group."},
    ),
    Channel(
        "inferenceDeltas",
        "inference_deltas",
        _s.inference_deltas("{runtime}", "{key}"),
        "Token deltas of one generation, coalesced, for the replica that asked for it.",
        (events.TurnEvent,),
        ("worker",),
        Receiver(
            ("agent_runtime", "memory"),
            client="nats-py",
            subscribe=_s.inference_deltas_of("{runtime}"),
        ),
        parameters={"runtime": "The asking replica's id.", "key": "The generation's key."},
        wildcards=("inference_deltas_of",),
    ),
    Channel(
        "guardrailsInput",
        "guardrails_input",
        _s.guardrails_input,
        "Screen a turn's input, or retrieved context (direction input or context).",
        (events.GuardrailCheck,),
        ("agent_runtime", "gateway", "memory"),
        Receiver(("guardrails",), "guardrails", "nats-py"),
        replies=(events.GuardrailVerdict,),
    ),
    Channel(
        "guardrailsOutput",
        "guardrails_output",
        _s.guardrails_output,
        "Screen a window of model output.",
        (events.GuardrailCheck,),
        ("agent_runtime", "gateway"),
        Receiver(("guardrails",), "guardrails", "nats-py"),
        replies=(events.GuardrailVerdict,),
    ),
    Channel(
        "guardrailsPolicyChanged",
        "guardrails_policy_changed",
        _s.guardrails_policy_changed,
        "A policy document changed: every runtime replica drops its cached passthroughs.",
        (EMPTY,),
        ("guardrails",),
        Receiver(("agent_runtime",), client="nats-py"),
    ),
    Channel(
        "guardrailsPolicies",
        "guardrails_policies",
        _s.guardrails_policies,
        "One operation on a tenant's guardrail policy documents (get, put, delete; the"
        " tenant's own or an agent's), checked by the guardrails' parser and merge rules.",
        (events.PolicyRequest,),
        ("gateway",),
        Receiver(("guardrails",), "guardrails", "nats-py"),
        replies=(events.PolicyReply,),
    ),
    Channel(
        "modelsChanged",
        "models_changed",
        _s.models_changed,
        "An adapter was promoted or rolled back (cached routes end now; workers load the"
        " new version and drain the old), failed to load on a worker, or was drained; or a"
        " tenant's model allow-list changed (its cached routes end).",
        (events.ModelsChanged,),
        ("trainer", "worker", "gateway"),
        Receiver(("worker", "agent_runtime", "memory", "inference_router"), client="nats-py"),
    ),
    Channel(
        "memoryRetrieve",
        "memory_retrieve",
        _s.memory_retrieve,
        "The context pack of a new turn: retrieved chunks, memories, recent turns.",
        (events.RetrieveRequest,),
        ("agent_runtime",),
        Receiver(("memory",), "memory", "nats-py"),
        replies=(events.RetrieveReply,),
    ),
    Channel(
        "memoryStore",
        "memory_store",
        _s.memory_store,
        "A finished turn to extract memories from (JetStream work queue, a shared pull consumer).",
        (events.MemoryStoreRequested,),
        ("agent_runtime",),
        Receiver(("memory",), None, "jetstream", "memory"),
        stream="memory_stream_name",
    ),
    Channel(
        "memoryRag",
        "memory_rag",
        _s.memory_rag,
        "One files / vector stores / memories operation of the OpenAI-shaped API.",
        (events.RagRequest,),
        ("gateway", "agent_runtime"),
        Receiver(("memory",), "memory", "nats-py"),
        replies=(events.RagReply,),
    ),
    Channel(
        "memoryUpload",
        "memory_upload",
        _s.memory_upload,
        "A file upload: the bytes as payload; enclave-ctx, enclave-filename, enclave-purpose "
        "headers.",
        (BYTES,),
        ("gateway",),
        Receiver(("memory",), "memory", "nats-py"),
        replies=(events.RagReply,),
    ),
    Channel(
        "memoryGround",
        "memory_ground",
        _s.memory_ground,
        "Which sentences of the answers the retrieved chunks do not support.",
        (events.GroundRequest,),
        ("agent_runtime",),
        Receiver(("memory",), "memory", "nats-py"),
        replies=(events.GroundReply,),
    ),
    Channel(
        "sandboxExec",
        "sandbox_exec",
        _s.sandbox_exec,
        "Run untrusted code once, in a fresh sandbox (POST /v1/sandbox/exec). The replica "
        "that takes it answers twice: at once an empty message whose enclave-accepted header "
        "names its sandbox.alive subject, then the reply (libs/rpc.py, Peer.alive_s).",
        (events.SandboxExecRequest,),
        ("gateway", "agent_runtime"),
        Receiver(("sandbox",), "sandbox", "nats-py"),
        replies=(events.SandboxExecReply,),
    ),
    Channel(
        "sandboxAlive",
        "sandbox_alive",
        _s.sandbox_alive("{replica}"),
        "Liveness ping of the sandbox replica that runs a caller's exec (core request/reply, "
        "an empty answer; no responders: the replica is gone, the caller answers 503 "
        "sandbox_lost and never runs the exec again).",
        (EMPTY,),
        ("gateway", "agent_runtime"),
        Receiver(("sandbox",), None, "nats-py"),
        parameters={"replica": "The sandbox replica: host name and process id."},
    ),
    Channel(
        "agentDelegate",
        "agent_delegate",
        _s.agent_delegate,
        "Delegate: an agent hands a focused task to a subagent as a child turn, with the "
        "parent's context and depth; the reply is the subagent's typed result.",
        (events.DelegateRequested,),
        ("agent_runtime",),
        Receiver(("agent_runtime",), "agent_runtime"),
        replies=(events.DelegateResult,),
    ),
    Channel(
        "keysRevoked",
        "keys_revoked",
        _s.keys_revoked,
        "A revoked API key: every gateway replica forgets it at once.",
        (events.KeyRevoked,),
        ("gateway",),
        Receiver(("gateway",)),
    ),
    Channel(
        "agentSkills",
        "agent_skills",
        _s.agent_skills,
        "A tenant's SKILL.md skills through the API: list, read, upload (checked whole; a "
        "malformed SKILL.md is refused naming the file and the problem), delete.",
        (events.SkillsRequest,),
        ("gateway",),
        Receiver(("agent_runtime",), "agent_runtime", "nats-py"),
        replies=(events.SkillsReply,),
    ),
    Channel(
        "agentResume",
        "agent_resume",
        _s.agent_resume,
        "An approver decided on a tool call a paused agent run waits on: resume the run "
        "(JetStream work queue; acked once the resumed run has ended).",
        (events.AgentResumeRequested,),
        ("gateway",),
        Receiver(("agent_runtime",), None, "jetstream", "agent_runtime_resume"),
        stream="agent_stream_name",
    ),
    Channel(
        "approvalEntry",
        "approval_entry",
        _s.approval_entry("{tenant}", "{approval_id}"),
        "A paused agent run and the approval it waits for (a key of the JetStream KV bucket "
        "of approvals): written by the runtime when the run pauses and ends, and by the "
        "gateway when an approver decides (compare-and-set on the revision).",
        (events.ApprovalRecord,),
        ("agent_runtime", "gateway"),
        Receiver(("agent_runtime", "gateway"), None, "nats-py"),
        parameters={"tenant": "The tenant.", "approval_id": "The approval's id."},
    ),
    Channel(
        "responsesCancel",
        "responses_cancel",
        _s.responses_cancel,
        "A background response of the Responses API was cancelled: the gateway replica "
        "reading it stops, and the runtime replica running its turn stops the turn.",
        (events.ResponseCancelled,),
        ("gateway",),
        Receiver(("gateway", "agent_runtime"), None, "nats-py"),
    ),
    Channel(
        "trainerJobs",
        "trainer_jobs",
        _s.trainer_jobs,
        "A fine-tuning job to run (JetStream work queue; acked when the job has ended).",
        (events.FineTuningJobRequested,),
        ("trainer",),
        Receiver(("trainer",), None, "jetstream", "trainer"),
        stream="trainer_stream_name",
    ),
    Channel(
        "trainerStatus",
        "trainer_status",
        _s.trainer_status("{job_id}"),
        "A fine-tuning job changed state or made progress.",
        (events.FineTuningJobStatus,),
        ("trainer",),
        Receiver(("gateway",), subscribe=_s.trainer_status_all),
        parameters={"job_id": "The fine-tuning job's id."},
        wildcards=("trainer_status_all",),
    ),
    Channel(
        "trainerCancel",
        "trainer_cancel",
        _s.trainer_cancel,
        "Stop a fine-tuning job (every trainer replica hears it; the one running it stops).",
        (events.FineTuningCancel,),
        ("trainer",),
        Receiver(("trainer",)),
    ),
    Channel(
        "trainerApi",
        "trainer_api",
        _s.trainer_api,
        "One typed operation on a tenant's fine-tuning jobs (create, list, retrieve, cancel,"
        " events, checkpoints) or adapters (list, resolve, rollback).",
        (events.TrainerRequest,),
        ("gateway", "inference_router"),
        Receiver(("trainer",), "trainer"),
        replies=(events.TrainerReply,),
    ),
    Channel(
        "trainerTurns",
        "trainer_turns",
        _s.trainer_turns,
        "A finished turn as screened (input with pseudonyms, the answer as shown, real "
        "values replaced by placeholders), kept by the trainer for tenants that opted in "
        "to learning from feedback (best effort, core NATS).",
        (events.TurnLogged,),
        ("agent_runtime",),
        Receiver(("trainer",), "trainer", "nats-py"),
    ),
    Channel(
        "audit",
        "audit",
        _s.audit("{tenant}", "{kind}"),
        "One thing that happened, for the tenant's hash chain (JetStream, kept a week).",
        (events.AuditEvent,),
        AUDITED,
        Receiver(("audit",), None, "jetstream", "audit", subscribe=_s.audit_all),
        stream="audit_stream_name",
        parameters={
            "tenant": "The tenant as one subject token.",
            "kind": "The emitting stage.",
        },
        wildcards=("audit_all",),
    ),
    Channel(
        "auditApiSearch",
        "audit_api_search",
        _s.audit_api_search,
        "Entries of one tenant's chain matching filters.",
        (events.AuditSearch,),
        ("gateway",),
        Receiver(("audit",), "audit"),
        replies=(events.AuditReply,),
    ),
    Channel(
        "auditApiVerify",
        "audit_api_verify",
        _s.audit_api_verify,
        "Verify a range of one tenant's chain.",
        (events.AuditVerifyRequest,),
        ("gateway",),
        Receiver(("audit",), "audit"),
        replies=(events.AuditReply,),
    ),
    Channel(
        "auditApiExport",
        "audit_api_export",
        _s.audit_api_export,
        "One page of a tenant's export bundle.",
        (events.AuditExportRequest,),
        ("gateway",),
        Receiver(("audit",), "audit"),
        replies=(events.AuditReply,),
    ),
)
STREAM_MEMBERS = (
    "chat_stream_name",
    "memory_stream_name",
    "audit_stream_name",
    "trainer_stream_name",
    "agent_stream_name",
    "approvals_bucket_name",
    "learning_bucket_name",
)


def subject_members() -> set[str]:
    """Every member of `Subjects` that names a subject (not a stream, not a helper)."""
    return {
        name
        for name in vars(Subjects)
        if not name.startswith("_") and name != "prefix" and name not in STREAM_MEMBERS
    }


def _message_name(message: type[BaseModel] | str) -> str:
    return message if isinstance(message, str) else message.__name__


def _schemas() -> dict[str, Any]:
    models = sorted(
        {m for c in CHANNELS for m in (*c.messages, *c.replies) if not isinstance(m, str)},
        key=lambda m: m.__name__,
    )
    _, top = models_json_schema([(m, "validation") for m in models], ref_template=REF)
    schemas: dict[str, Any] = dict(sorted(top.get("$defs", {}).items()))
    for schema in schemas.values():
        _plain_discriminators(schema)
    schemas[BYTES] = {"type": "string", "format": "binary", "description": "Raw bytes."}
    schemas[EMPTY] = {"type": "string", "maxLength": 0, "description": "An empty payload."}
    return schemas


def _plain_discriminators(node: Any) -> None:
    """AsyncAPI 3's schema object names a discriminator by its property only (a string);
    pydantic writes OpenAPI's object with a mapping (the typed memory requests)."""
    if isinstance(node, dict):
        found = node.get("discriminator")
        if isinstance(found, dict) and "propertyName" in found:
            node["discriminator"] = found["propertyName"]
        for value in node.values():
            _plain_discriminators(value)
    elif isinstance(node, list):
        for value in node:
            _plain_discriminators(value)


def _headers() -> dict[str, Any]:
    return {
        "type": "object",
        "description": "NATS headers: the request context (libs/context.py).",
        "properties": {
            TENANT_HEADER: {"type": "string"},
            REQUEST_ID_HEADER: {"type": "string"},
            TRACEPARENT_HEADER: {"type": "string", "description": "W3C trace context."},
            WORKER_HEADER: {"type": "string", "description": "Set by the worker on deltas."},
        },
    }


def _operation(
    channel: Channel, action: str, services: tuple[str, ...], receiver: Receiver | None
) -> dict[str, Any]:
    ref = f"#/channels/{channel.id}"
    op: dict[str, Any] = {
        "action": action,
        "channel": {"$ref": ref},
        "summary": channel.summary,
        "messages": [{"$ref": f"{ref}/messages/{_message_name(m)}"} for m in channel.messages],
        "x-enclave-services": list(services),
    }
    if receiver is not None:
        op["x-enclave-client"] = receiver.client
        if receiver.queue:
            op["bindings"] = {"nats": {"queue": receiver.queue, "bindingVersion": "0.1.0"}}
        if receiver.subscribe:
            op["x-enclave-subscribe"] = receiver.subscribe
        if receiver.durable:
            op["x-enclave-jetstream"] = {
                "stream": getattr(_s, channel.stream or ""),
                "durable": receiver.durable,
            }
    if channel.replies:
        op["reply"] = {
            "channel": {"$ref": "#/channels/replyInbox"},
            "messages": [
                {"$ref": f"#/channels/replyInbox/messages/{m.__name__}"} for m in channel.replies
            ],
        }
    return op


def document() -> dict[str, Any]:
    """The AsyncAPI 3.0 document of the bus (without a bus prefix)."""
    messages: dict[str, Any] = {}
    for model in sorted(
        {m for c in CHANNELS for m in (*c.messages, *c.replies)}, key=_message_name
    ):
        name = _message_name(model)
        doc = "" if isinstance(model, str) else (model.__doc__ or "").strip()
        messages[name] = {
            "name": name,
            "title": name,
            "summary": doc.splitlines()[0] if doc else name,
            "contentType": "application/octet-stream" if model == BYTES else "application/json",
            "headers": {"$ref": "#/components/schemas/ContextHeaders"},
            "payload": {"$ref": REF.format(model=name)},
        }
    channels: dict[str, Any] = {}
    operations: dict[str, Any] = {}
    for channel in CHANNELS:
        entry: dict[str, Any] = {
            "address": channel.address,
            "summary": channel.summary,
            "messages": {
                _message_name(m): {"$ref": f"#/components/messages/{_message_name(m)}"}
                for m in channel.messages
            },
            "x-enclave-subject": f"Subjects.{channel.subject}",
        }
        if channel.parameters:
            entry["parameters"] = {k: {"description": v} for k, v in channel.parameters.items()}
        if channel.stream:
            entry["x-enclave-stream"] = getattr(_s, channel.stream)
        if channel.wildcards:
            entry["x-enclave-wildcards"] = [f"Subjects.{w}" for w in channel.wildcards]
        channels[channel.id] = entry
        name = channel.id[0].upper() + channel.id[1:]
        if channel.senders:
            operations[f"send{name}"] = _operation(channel, "send", channel.senders, None)
        operations[f"receive{name}"] = _operation(
            channel, "receive", channel.receiver.services, channel.receiver
        )
    replies = sorted({m for c in CHANNELS for m in c.replies}, key=lambda m: m.__name__)
    channels["replyInbox"] = {
        "address": None,
        "summary": "The request's own NATS reply inbox (request/reply).",
        "messages": {m.__name__: {"$ref": f"#/components/messages/{m.__name__}"} for m in replies},
    }
    schemas = _schemas()
    schemas["ContextHeaders"] = _headers()
    return {
        "asyncapi": "3.0.0",
        "info": {
            "title": "Enclave bus",
            "version": f"{events.EVENTS_VERSION}.{SUBJECTS_VERSION}.0",
            "description": (
                "Every subject and event on the platform's NATS bus. Generated from "
                "libs/subjects.py and libs/events.py by `python -m libs.asyncapi`; subjects "
                "take the ENCLAVE_BUS_PREFIX prefix when one is set, stream names its "
                "upper-cased tag. Each event carries `v`, its schema version."
            ),
        },
        "defaultContentType": "application/json",
        "servers": {
            "nats": {
                "host": "127.0.0.1:4222",
                "protocol": "nats",
                "description": "NATS with JetStream (ENCLAVE_NATS_URL).",
            }
        },
        "channels": channels,
        "operations": operations,
        "components": {"messages": messages, "schemas": schemas},
    }


@functools.cache
def render() -> str:
    return json.dumps(document(), indent=2, ensure_ascii=False) + "\n"


def main(argv: list[str]) -> int:
    out = Path(argv[0]) if argv else DOCUMENT
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(render())
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
