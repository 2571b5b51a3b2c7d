"""Settings of every service, read from ENCLAVE_* environment variables.

The defaults run the whole platform on one machine: NATS, Redis and the SQLite
database all local, state under .enclave/ in the checkout.
"""

from __future__ import annotations

from functools import cached_property
from pathlib import Path

from pydantic_settings import BaseSettings, SettingsConfigDict

from libs.subjects import Subjects

REPO_ROOT = Path(__file__).resolve().parent.parent


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="ENCLAVE_", extra="ignore")

    home: Path = REPO_ROOT / ".enclave"
    nats_url: str = "nats://127.0.0.1:4222"
    # Where this process's request replies arrive; `enclave up` gives each service its own
    # (_INBOX_<service>) on its authenticated bus, so that none reads another's replies.
    nats_inbox_prefix: str = "_INBOX"
    redis_url: str = "redis://127.0.0.1:6379/0"
    # Each process's Redis connections (libs/redis_pool.py): beyond them, a command waits
    # for a free one, at most redis_wait_s.
    redis_max_connections: int = 32
    redis_wait_s: float = 10.0
    # Empty means SQLite under `home`; set to postgresql+asyncpg://... in production.
    database_url: str = ""
    bus_prefix: str = ""

    gateway_host: str = "127.0.0.1"
    gateway_port: int = 8000
    max_body_bytes: int = 1_048_576
    # Requests per minute per API key, unless the key sets its own.
    rate_limit_rpm: int = 6000
    key_cache_seconds: float = 30.0
    # OIDC (services/gateway/oidc.py): bearer JWTs from this issuer, checked through its JWKS.
    # Empty issuer: OIDC off, API keys only. Claims are dotted paths into the token.
    oidc_issuer: str = ""
    oidc_audience: str = "enclave"
    oidc_tenant_claim: str = "tenant"
    oidc_roles_claim: str = "roles"
    oidc_algorithms: list[str] = ["RS256", "PS256", "ES256"]
    oidc_leeway_s: float = 30.0
    oidc_jwks_min_refresh_s: float = 10.0  # an unknown key id refetches at most this often
    # Exact limits (services/gateway/quotas.py): per tenant, beside each key's own.
    tenant_rpm: int = 0  # 0: no tenant-wide request limit
    tenant_tpm: int = 0  # 0: no tenant-wide token limit
    key_tpm: int = 0  # 0: no per-key token limit
    tenant_monthly_tokens: int = 0  # 0: no monthly token budget
    tenant_concurrency: int = 0  # chat/completion requests in flight per tenant; 0: none

    # The addresses a tenant admin may give its external providers (`base_url` of
    # PUT /v1/admin/providers/{name}): each must start with one of these (at a "/" boundary),
    # as JSON, e.g. '["https://api.openai.com/v1", "https://llm.example.eu/"]'. Empty: any
    # http(s) address, internal ones included: the workers send the tenant's prompts there.
    provider_url_prefixes: list[str] = []
    models_file: Path = REPO_ROOT / "deploy" / "models.yaml"
    # How long the router waits for a worker of the pool to accept a generation.
    worker_accept_timeout_s: float = 2.0
    # How long the runtime waits for the first token, and then between tokens.
    upstream_timeout_s: float = 60.0
    # How long the gateway waits for the turn's first event.
    gateway_timeout_s: float = 90.0
    runtime_concurrency: int = 64
    # Liveness of a stream: a runtime tells the gateway, and a worker its runtime, that it
    # is alive every `heartbeat_s` while it holds a turn or a generation; silence for
    # `stream_idle_s` means it died. A turn whose runtime died before any token reached the
    # client is published again, up to `turn_retries` times (a generation whose worker died,
    # the same); otherwise the client gets an error event and [DONE].
    heartbeat_s: float = 1.0
    stream_idle_s: float = 5.0
    turn_retries: int = 1
    # How long a runtime reuses the router's answer for (tenant, model): the router leaves
    # the per-request path; a pool without workers drops the entry at once.
    route_cache_s: float = 2.0
    # How long a runtime lets a tenant's input through without asking the guardrails when
    # its policy checks nothing on input (a policy change ends it at once; 0 = always ask).
    guard_passthrough_s: float = 1.0
    # How many input messages' findings a guardrails replica remembers, so that a chat's
    # history is screened once (services/guardrails/screen.py, MessageMemo); 0 = none.
    guard_memo_size: int = 4096
    # Memory and RAG: empty means Qdrant in process (qdrant-edge) under `home`.
    qdrant_url: str = ""
    memory_extraction_model: str = "smollm2-135m-instruct"
    # Rewrite a follow-up into a standalone search query (rag.rewrite_query overrides);
    # measured in bench/rag.py: services/memory/README.md has the numbers.
    memory_rewrite_query: bool = True
    # How long the model's rewrite may take before the fallback is searched (the runtime
    # waits `memory_timeout_s` for the whole context pack).
    memory_rewrite_timeout_s: float = 5.0
    memory_buffer_ttl_s: int = 86400
    # How long the runtime waits for the memory service's context pack.
    memory_timeout_s: float = 10.0
    worker_threads: int = 0  # 0: as many as cores
    # Generations a worker holds beyond its engine's slots; a full worker refuses at once
    # (503 worker_busy). A pool's `queue` in the registry overrides it.
    worker_queue: int = 16
    # Where each process writes its OpenTelemetry spans as JSON lines; empty: nowhere.
    trace_dir: str = ""
    # An OpenTelemetry collector's OTLP/HTTP endpoint (http://collector:4318): spans are sent
    # there too (JSON encoding, batched); empty: not sent.
    otlp_endpoint: str = ""
    # Sandbox (services/sandbox/README.md): "bwrap" (bubblewrap, the default) or "docker".
    sandbox_backend: str = "bwrap"
    sandbox_timeout_s: float = 10.0  # wall clock, when a request names none
    sandbox_max_timeout_s: float = 60.0
    sandbox_cpu_s: int = 30
    sandbox_memory_mb: int = 512
    sandbox_processes: int = 64
    sandbox_output_bytes: int = 1_048_576  # stdout and stderr, each
    sandbox_files_bytes: int = 10_485_760  # files in, and files out, in all
    sandbox_files_count: int = 100
    sandbox_work_mb: int = 64  # the work dir's tmpfs
    sandbox_concurrency: int = 4  # sandboxes at once per replica
    sandbox_warm: int = 2  # sandboxes started ahead per replica (bwrap), each used once
    # Run as root, the bwrap backend drops each sandbox to uid base + slot (never 0).
    sandbox_uid_base: int = 1_900_000_000
    sandbox_docker_image: str = "python:3.11-slim"
    # A caller pings the replica running its exec after each this long without the
    # answer (libs/rpc.py, `Peer.alive_s`): a replica killed mid-exec costs it about this
    # long, not the whole timeout; 0 does not watch.
    sandbox_alive_s: float = 1.0
    # MCP servers of the agent runtime (services/agent_runtime/adapters/mcp_client.py).
    # A stdio server runs under the sandbox's bubblewrap profile (libs/bwrap.py), with
    # these limits over its whole life; it is stopped after `mcp_idle_s` without a call.
    mcp_stdio_cpu_s: int = 600
    mcp_stdio_memory_mb: int = 1024
    mcp_stdio_processes: int = 64
    mcp_stdio_work_mb: int = 64
    mcp_stdio_uid: int = 1_899_999_000  # run as root: the host uid of every stdio server
    # Host paths shown read-only to stdio servers besides /usr (the runtime's own Python
    # and its packages always are, so `command: python` runs the platform's interpreter).
    mcp_stdio_paths: list[str] = []
    mcp_idle_s: float = 300.0
    mcp_call_timeout_s: float = 30.0
    mcp_start_timeout_s: float = 20.0
    mcp_refresh_s: float = 2.0  # how long the runtime keeps a tenant's server list
    # A streamable HTTP server on a loopback, private or link-local address is refused
    # unless its host (as in its url) is listed here by the platform operator: a tenant's
    # admin cannot point the runtime at the platform's own services.
    mcp_http_internal_hosts: list[str] = []
    # /metrics, /healthz and /readyz of each process (libs/metrics.py: the port scheme).
    # 0: the first free port of the stage's block from metrics_base_port; -1: none.
    metrics_port: int = 0
    metrics_base_port: int = 9400
    metrics_host: str = "127.0.0.1"
    # Copies of each JetStream stream: 3 on the three-node cluster (deploy/nats/cluster.conf).
    stream_replicas: int = 1
    # How long a request on the bus waits for each peer (libs/rpc.py: Peers).
    # The router's answer may wait for its registry's SQL refresh.
    router_timeout_s: float = 7.0
    guardrails_timeout_s: float = 10.0
    # A turn's route and guardrail checks are asked again after this long without an
    # answer (libs/rpc.py, `Peer.hedge_s`); 0 asks once. Above the guardrails' time budget
    # per check (3 s, services/guardrails/scheduler.py), so a live replica has always
    # answered (if only with its fail-closed verdict) before a check is sent twice: a
    # loaded guardrails is never given the same work again.
    ask_hedge_s: float = 3.5
    # Files, vector stores and memories: an upload is parsed and embedded in the request.
    memory_api_timeout_s: float = 120.0
    audit_api_timeout_s: float = 30.0
    # The fine-tuning API (trainer.api): SQL reads, and a job stored and queued.
    trainer_api_timeout_s: float = 30.0

    @cached_property
    def subjects(self) -> Subjects:
        return Subjects(self.bus_prefix)

    @property
    def sqlalchemy_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite+aiosqlite:///{self.home / 'enclave.db'}"


def load_settings() -> Settings:
    settings = Settings()
    # 0700: the home holds keys, the database and the JetStream store (raw prompts).
    settings.home.mkdir(mode=0o700, parents=True, exist_ok=True)
    return settings
