"""Who may publish and subscribe what on the bus: one NATS user per service, and the
nats-server and Redis configurations that `enclave up` runs its own servers with.

Pure: it decides and renders; services/up.py writes the files and starts the servers.
Only the gateway reads `chat.stream.>` (the runtime and the workers write it); each
JetStream work queue is consumed by its one service; request subjects are served only by
the service that owns them, replies go back through `allow_responses`, and each service
reads only its own inbox.
"""

from __future__ import annotations

import json
import secrets
from dataclasses import dataclass

from libs.subjects import Subjects

# Every identity on the bus; `enclave up` itself connects as the gateway for its probe.
USERS = (
    "gateway",
    "agent_runtime",
    "inference_router",
    "worker",
    "guardrails",
    "memory",
    "audit",
    "sandbox",
    "trainer",
)
# Which services talk to Redis (the gateway's rate limits, memory's conversation buffer).
REDIS_USERS = ("gateway", "memory")


def inbox_prefix(user: str) -> str:
    """Where a service's request replies arrive: its own inbox, which no other may read.
    The gateway keeps the default (it connects without libs.bus)."""
    return "_INBOX" if user == "gateway" else f"_INBOX_{user}"


@dataclass(frozen=True)
class Permissions:
    publish: tuple[str, ...]
    subscribe: tuple[str, ...]
    # Messages a service may send to the reply subject of a request it received: one,
    # or two for the sandbox ("accepted" at once, then the reply: libs/rpc.py).
    responses: int = 1


def _consumes(stream: str) -> tuple[str, ...]:
    """Create, read and acknowledge a durable consumer on one stream, and nothing else."""
    return (
        f"$JS.API.CONSUMER.*.{stream}",
        f"$JS.API.CONSUMER.*.{stream}.>",
        f"$JS.API.CONSUMER.*.*.{stream}.>",  # DURABLE.CREATE and MSG.NEXT
        f"$JS.ACK.{stream}.>",
        f"$JS.FC.{stream}.>",
    )


def _key_value(bucket: str) -> tuple[str, ...]:
    """Create, read, list and write one JetStream KV bucket (its stream is KV_<bucket>)."""
    stream = f"KV_{bucket}"
    return (
        f"$KV.{bucket}.>",
        f"$JS.API.STREAM.INFO.{stream}",
        f"$JS.API.STREAM.CREATE.{stream}",
        f"$JS.API.STREAM.MSG.GET.{stream}",
        f"$JS.API.DIRECT.GET.{stream}",
        f"$JS.API.DIRECT.GET.{stream}.>",
        f"$JS.API.CONSUMER.CREATE.{stream}",
        f"$JS.API.CONSUMER.DELETE.{stream}.>",
        *_consumes(stream),
    )


def permissions(s: Subjects) -> dict[str, Permissions]:
    """Each service's allowed subjects under the platform's prefix."""
    streams = (
        s.chat_stream_name,
        s.memory_stream_name,
        s.audit_stream_name,
        s.trainer_stream_name,
        s.agent_stream_name,
    )
    # Paused agent runs: the runtime writes them, the gateway records decisions.
    approvals = _key_value(s.approvals_bucket_name)
    approval_entries = f"$KV.{s.approvals_bucket_name}.>"
    # The tenants that opted in to learning from feedback: the trainer writes, runtimes watch.
    learning = _key_value(s.learning_bucket_name)
    # Every service declares the streams at start (libs.bus.ensure_streams) and audits.
    common_pub = (
        "$JS.API.INFO",
        *(f"$JS.API.STREAM.{op}.{name}" for op in ("INFO", "CREATE", "UPDATE") for name in streams),
        # The metrics monitor of every stage reads each consumer's lag (libs.metrics).
        *(f"$JS.API.CONSUMER.INFO.{name}.*" for name in streams),
        s.audit_all,
    )
    chat_streams = s.chat_streams_of("*")
    deltas = s.inference_deltas_of("*")
    audit_api = (s.audit_api_search, s.audit_api_verify, s.audit_api_export)
    table = {
        "gateway": Permissions(
            publish=(
                s.chat_requested,
                s.chat_cancel,  # the client is gone: the runtime stops the turn
                s.inference_embed,
                s.inference_models,
                s.memory_rag,
                s.memory_upload,
                s.guardrails_input,
                s.guardrails_output,
                s.sandbox_exec,
                s.sandbox_alive("*"),  # is the replica running its exec still there
                # `enclave keys revoke` speaks as the gateway; every replica forgets the key.
                s.keys_revoked,
                # The fine-tuning API: the trainer stores and queues jobs, cancels them.
                s.trainer_api,
                *audit_api,
                # A cancelled background response, for the replica running it.
                s.responses_cancel,
                # Approvals: decisions on paused agent runs, and the resume they trigger.
                s.agent_resume,
                s.agent_skills,
                *approvals,
                # The admin API: a tenant's guardrail policy documents, its model allow-list
                # (every runtime's and router's cached routes of that tenant end).
                s.guardrails_policies,
                s.models_changed,
            ),
            subscribe=(
                chat_streams,
                s.keys_revoked,
                s.trainer_status_all,
                s.responses_cancel,
                approval_entries,
            ),
        ),
        "agent_runtime": Permissions(
            publish=(
                chat_streams,
                s.guardrails_input,
                s.guardrails_output,
                s.inference_route,
                s.inference_worker("*"),
                s.inference_cancel,
                s.memory_retrieve,
                s.memory_ground,
                s.memory_store,
                s.trainer_turns,  # a finished turn as screened (learning from feedback)
                *_consumes(s.chat_stream_name),
                # Agents: their tools (sandbox, file search) and delegated child turns.
                s.sandbox_exec,
                s.sandbox_alive("*"),
                s.memory_rag,
                s.agent_delegate,
                # Paused runs wait in the approvals bucket; decisions resume them.
                *approvals,
                *_consumes(s.agent_stream_name),
                *learning,  # watched: whose turns go to trainer.turns
            ),
            subscribe=(
                s.chat_requested,
                s.chat_cancel,
                deltas,
                s.guardrails_policy_changed,
                s.models_changed,  # cached routes of a promoted/rolled back adapter end
                s.agent_delegate,
                s.agent_resume,
                s.agent_skills,
                approval_entries,
                s.responses_cancel,  # a cancelled background response: stop its turn
            ),
        ),
        "inference_router": Permissions(
            # A tenant's `:ft` id unknown to the registry is resolved by the trainer's API.
            publish=(s.inference_worker("*"), s.trainer_api),
            subscribe=(
                s.inference_route,
                s.inference_generate,
                s.inference_embed,
                s.inference_models,
                s.models_changed,
            ),
        ),
        "worker": Permissions(
            # The worker streams straight to the client's subject when nothing is done to
            # the output (GenerateRequest.client_subject): it writes chat.stream, never reads.
            publish=(deltas, chat_streams, s.models_changed),  # load_failed, drained
            subscribe=(s.inference_worker("*"), s.inference_cancel, s.models_changed),
        ),
        "guardrails": Permissions(
            publish=(s.guardrails_policy_changed,),
            subscribe=(
                s.guardrails_input,
                s.guardrails_output,
                s.guardrails_policies,
                s.guardrails_policy_changed,
            ),
        ),
        "memory": Permissions(
            publish=(
                s.guardrails_input,
                s.inference_generate,
                # Extraction and rewriting: the shared generation client routes, then hands
                # the request to the pool itself (libs/generation.py).
                s.inference_route,
                s.inference_worker("*"),
                s.inference_cancel,
                *_consumes(s.memory_stream_name),
            ),
            subscribe=(
                s.memory_retrieve,
                s.memory_rag,
                s.memory_upload,
                s.memory_ground,
                s.memory_store,
                deltas,
                s.models_changed,  # its generation client's cached routes end
            ),
        ),
        "audit": Permissions(
            publish=_consumes(s.audit_stream_name),
            # Its pull subscriber fetches on its own inbox (services/audit/bootstrap.py).
            subscribe=(s.audit_all, *audit_api),
        ),
        # Its own liveness pings (sandbox.alive.<replica>) while it runs an exec.
        "sandbox": Permissions(
            publish=(), subscribe=(s.sandbox_exec, s.sandbox_alive("*")), responses=2
        ),
        "trainer": Permissions(
            # Promotions and rollbacks of adapters are announced to every worker and router.
            publish=(
                s.trainer_status("*"),
                s.models_changed,
                # jobs.create queues the stored job; jobs.cancel reaches the replica running it.
                s.trainer_jobs,
                s.trainer_cancel,
                *_consumes(s.trainer_stream_name),
                *learning,
            ),
            # The adapters of a tenant listed in /v1/models: the router asks trainer.api.
            subscribe=(s.trainer_jobs, s.trainer_api, s.trainer_cancel, s.trainer_turns),
        ),
    }
    return {
        user: Permissions(
            publish=(*common_pub, *p.publish),
            subscribe=(*p.subscribe, f"{inbox_prefix(user)}.>"),
            responses=p.responses,
        )
        for user, p in table.items()
    }


def new_passwords() -> dict[str, str]:
    """One random password per bus identity, and one for Redis (URL-safe characters)."""
    return {name: secrets.token_urlsafe(24) for name in (*USERS, "redis")}


def nats_config(
    s: Subjects, passwords: dict[str, str], host: str, port: int, store_dir: str
) -> str:
    """A nats-server configuration (JSON is valid NATS configuration syntax)."""
    users = [
        {
            "user": user,
            "password": passwords[user],
            "permissions": {
                "publish": {"allow": list(p.publish)},
                "subscribe": {"allow": list(p.subscribe)},
                # A service answers a request it received, on that request's reply subject
                # (the sandbox twice: "accepted", then the reply).
                "allow_responses": {"max": p.responses},
            },
        }
        for user, p in permissions(s).items()
    ]
    return json.dumps(
        {
            "host": host,
            "port": port,
            "jetstream": {"store_dir": store_dir},
            "authorization": {"users": users},
        },
        indent=2,
    )


def redis_config(password: str, host: str, port: int, data_dir: str) -> str:
    return "\n".join(
        [
            f"bind {host}",
            f"port {port}",
            f"requirepass {password}",
            'save ""',
            "appendonly no",
            f"dir {data_dir}",
            "",
        ]
    )


def with_user(url: str, user: str, password: str) -> str:
    """`nats://host:port` as `nats://user:password@host:port` (nats-py and redis-py read it)."""
    scheme, rest = url.split("://", 1)
    return f"{scheme}://{user}:{password}@{rest.rsplit('@', 1)[-1]}"


def subject_matches(pattern: str, subject: str) -> bool:
    """NATS wildcard matching: `*` one token, `>` one or more trailing tokens."""
    p, t = pattern.split("."), subject.split(".")
    for i, token in enumerate(p):
        if token == ">":
            return len(t) > i
        if i >= len(t) or (token != "*" and token != t[i]):
            return False
    return len(p) == len(t)
