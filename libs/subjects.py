"""Every NATS subject and JetStream stream name of the platform, in one place.

Subjects take an optional prefix (ENCLAVE_BUS_PREFIX) so that two platforms, for
example the test suite and a developer's `make up`, can share one NATS server.
"""

from __future__ import annotations

from dataclasses import dataclass

SUBJECTS_VERSION = 1


@dataclass(frozen=True)
class Subjects:
    """Subject and stream names under one prefix."""

    prefix: str = ""

    def _s(self, name: str) -> str:
        return f"{self.prefix}.{name}" if self.prefix else name

    def _stream(self, name: str) -> str:
        # Stream names may not contain dots.
        tag = self.prefix.replace(".", "_").upper()
        return f"{tag}_{name}" if tag else name

    # -- chat turns (JetStream work queue) --
    @property
    def chat_requested(self) -> str:
        return self._s("chat.requested")

    @property
    def chat_stream_name(self) -> str:
        return self._stream("ENCLAVE_CHAT")

    def chat_stream(self, gateway: str, request_id: str) -> str:
        """Per-request subject on which a gateway replica reads the turn's events."""
        return self._s(f"chat.stream.{gateway}.{request_id}")

    def chat_streams_of(self, gateway: str) -> str:
        """Every turn's events of one gateway replica: one subscription for all of them."""
        return self._s(f"chat.stream.{gateway}.*")

    @property
    def chat_cancel(self) -> str:
        """Core NATS broadcast (TurnCancelled): a turn's client is gone; the runtime replica
        that runs it stops it."""
        return self._s("chat.cancel")

    # -- inference (core NATS request/reply) --
    @property
    def inference_generate(self) -> str:
        return self._s("inference.generate")

    @property
    def inference_route(self) -> str:
        return self._s("inference.route")

    @property
    def inference_embed(self) -> str:
        return self._s("inference.embed")

    @property
    def inference_models(self) -> str:
        return self._s("inference.models")

    def inference_worker(self, pool: str) -> str:
        return self._s(f"inference.worker.{pool}")

    @property
    def inference_cancel(self) -> str:
        """Core NATS broadcast (GenerationCancelled): the worker that runs the generation
        stops its engine."""
        return self._s("inference.cancel")

    def inference_deltas(self, replica: str, key: str) -> str:
        """Where a worker streams token deltas for one generation of a runtime replica."""
        return self._s(f"inference.deltas.{replica}.{key}")

    def inference_deltas_of(self, replica: str) -> str:
        """Every deltas subject of one runtime replica: one subscription for all its turns."""
        return self._s(f"inference.deltas.{replica}.*")

    # -- guardrails, memory, sandbox (request/reply) --
    @property
    def guardrails_input(self) -> str:
        return self._s("guardrails.input")

    @property
    def guardrails_output(self) -> str:
        return self._s("guardrails.output")

    @property
    def guardrails_policy_changed(self) -> str:
        """Core NATS broadcast: a policy document changed; cached passthroughs end now."""
        return self._s("guardrails.policy.changed")

    @property
    def guardrails_policies(self) -> str:
        """A tenant's guardrail policy documents: get, put, delete (request/reply; queue
        `guardrails`). The admin API's /v1/admin/policy."""
        return self._s("guardrails.policies")

    @property
    def models_changed(self) -> str:
        """Core NATS broadcast (ModelsChanged): an adapter was promoted, rolled back, failed
        to load or drained; cached routes end now."""
        return self._s("models.changed")

    @property
    def memory_retrieve(self) -> str:
        return self._s("memory.retrieve")

    @property
    def memory_store(self) -> str:
        return self._s("memory.store")

    @property
    def memory_rag(self) -> str:
        """Files, vector stores and memory management (JSON request/reply)."""
        return self._s("memory.rag")

    @property
    def memory_upload(self) -> str:
        """A file upload: raw bytes, metadata in headers (request/reply)."""
        return self._s("memory.upload")

    @property
    def memory_ground(self) -> str:
        """The grounding check of a finished answer against its retrieved chunks."""
        return self._s("memory.ground")

    @property
    def memory_stream_name(self) -> str:
        return self._stream("ENCLAVE_MEMORY")

    @property
    def sandbox_exec(self) -> str:
        """Run code in a fresh sandbox (request/reply; replicas share it: queue `sandbox`)."""
        return self._s("sandbox.exec")

    def sandbox_alive(self, replica: str) -> str:
        """Liveness pings of one sandbox replica (core request/reply, no queue): the
        replica that took an exec names it in its `enclave-accepted` header (libs/rpc.py),
        and the caller pings it while it waits."""
        return self._s(f"sandbox.alive.{replica}")

    @property
    def agent_delegate(self) -> str:
        """A subagent's child turn (request/reply; runtime replicas share it: queue
        `agent_runtime`)."""
        return self._s("agent.delegate")

    @property
    def agent_skills(self) -> str:
        """A tenant's SKILL.md skills: list, read, upload, delete (request/reply; queue
        `agent_runtime`)."""
        return self._s("agent.skills")

    @property
    def agent_resume(self) -> str:
        """An approver decided on a paused agent run: resume it (JetStream work queue)."""
        return self._s("agent.resume")

    @property
    def agent_stream_name(self) -> str:
        return self._stream("ENCLAVE_AGENT")

    @property
    def approvals_bucket_name(self) -> str:
        """The JetStream KV bucket of paused agent runs and their approvals."""
        return self._stream("ENCLAVE_APPROVALS")

    @property
    def learning_bucket_name(self) -> str:
        """The JetStream KV bucket of the tenants that opted in to learning from feedback
        (libs/learning_optins.py): the trainer writes it, runtimes watch it."""
        return self._stream("ENCLAVE_LEARNING")

    def approval_entry(self, tenant: str, approval_id: str) -> str:
        """The subject one approval record is written on: its key in the KV bucket."""
        return f"$KV.{self.approvals_bucket_name}.{tenant}.{approval_id}"

    @property
    def responses_cancel(self) -> str:
        """Core NATS broadcast (ResponseCancelled): a background response was cancelled;
        the gateway replica reading it and the runtime replica running its turn stop."""
        return self._s("responses.cancel")

    # -- audit (JetStream, durable) --
    def audit(self, tenant: str, kind: str) -> str:
        return self._s(f"audit.{tenant}.{kind}")

    @property
    def audit_all(self) -> str:
        return self._s("audit.>")

    @property
    def audit_stream_name(self) -> str:
        return self._stream("ENCLAVE_AUDIT")

    # -- audit API (core NATS request/reply; outside `audit.>` so the stream never stores it) --
    @property
    def audit_api_search(self) -> str:
        return self._s("auditapi.search")

    @property
    def audit_api_verify(self) -> str:
        return self._s("auditapi.verify")

    @property
    def audit_api_export(self) -> str:
        return self._s("auditapi.export")

    # -- API keys (core NATS): a revocation, for every gateway replica to drop it at once --
    @property
    def keys_revoked(self) -> str:
        return self._s("keys.revoked")

    # -- trainer: jobs on a JetStream work queue, status and cancel on core NATS --
    @property
    def trainer_jobs(self) -> str:
        return self._s("trainer.jobs")

    @property
    def trainer_stream_name(self) -> str:
        return self._stream("ENCLAVE_TRAINER")

    def trainer_status(self, job_id: str) -> str:
        return self._s(f"trainer.status.{job_id}")

    @property
    def trainer_status_all(self) -> str:
        return self._s("trainer.status.*")

    @property
    def trainer_cancel(self) -> str:
        return self._s("trainer.cancel")

    @property
    def trainer_api(self) -> str:
        return self._s("trainer.api")

    @property
    def trainer_turns(self) -> str:
        """Finished turns as screened, for learning from feedback (core NATS)."""
        return self._s("trainer.turns")
