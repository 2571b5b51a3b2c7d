"""The trainer as its own process (`enclave serve trainer`) on the real bus: jobs arrive
through the JetStream work queue, status events come back on trainer.status.<job>, and
trainer.api answers jobs and adapters for the caller's tenant only.

These jobs fail validation, so no model loads here; tests/trainer/test_training.py trains
for real, and `python -m bench trainer` runs a whole job through this same path.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import nats
import orjson
import pytest

from libs.bus import event_bytes
from libs.context import RequestContext
from libs.errors import ErrorInfo
from libs.events import FineTuningJobRequested, FineTuningJobStatus, TrainerReply, TrainerRequest
from libs.rpc import ERROR_HEADER
from libs.subjects import Subjects
from services.trainer.jobs import new_job_id
from tests.infra import Infra, Platform, free_port, platform_env


@pytest.fixture
def trainer(services: Infra, tmp_path: Path) -> Iterator[Platform]:
    env = platform_env(services, tmp_path, free_port())
    plat = Platform(env=env, home=tmp_path, base_url="")
    plat.start("trainer", "trainer")
    try:
        yield plat
    finally:
        plat.stop_all()


async def ask(nc: Any, subjects: Subjects, tenant: str, op: str, **args: Any) -> TrainerReply:
    ctx = RequestContext(tenant=tenant, request_id="r")
    data = orjson.dumps({"ctx": ctx.model_dump(), "operation": {"op": op, **args}})
    if op.startswith(("jobs.", "adapters.")) and op != "jobs.delete_everything":
        req = TrainerRequest.model_validate_json(data)  # a typed request, as callers build
        data = event_bytes(req)
    for _ in range(120):  # until the trainer process has subscribed
        try:
            msg = await nc.request(subjects.trainer_api, data, timeout=1)
        except nats.errors.NoRespondersError:
            await asyncio.sleep(0.5)
            continue
        if msg.headers and msg.headers.get(ERROR_HEADER):
            error = ErrorInfo.model_validate_json(msg.data)
            return TrainerReply(status=error.status, error=error)
        return TrainerReply.model_validate_json(msg.data)
    raise AssertionError("the trainer never answered")


async def test_jobs_through_jetstream_fail_with_the_bad_line_named(trainer: Platform) -> None:
    subjects = Subjects(trainer.env["ENCLAVE_BUS_PREFIX"])
    nc = await nats.connect(trainer.env["ENCLAVE_NATS_URL"])
    seen: list[FineTuningJobStatus] = []

    async def on_status(msg: Any) -> None:
        seen.append(FineTuningJobStatus.model_validate_json(msg.data))

    await nc.subscribe(subjects.trainer_status_all, cb=on_status)
    try:
        assert (await ask(nc, subjects, "acme", "jobs.list")).body["data"] == []
        good = json.dumps(
            {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}
        )
        ctx = RequestContext(tenant="acme", request_id="r1", actor="key-1")
        bad_file = FineTuningJobRequested(
            ctx=ctx,
            job_id=new_job_id(),
            model="smollm2-135m-instruct",
            training_file="file-abc",
            training_data=good + '\n{"messages": [{"role": "user", "content": "q"}]}\n',
        )
        bad_model = FineTuningJobRequested(
            ctx=ctx,
            job_id=new_job_id(),
            model="gemma-3-270m",
            training_file="file-abc",
            training_data=good,
        )
        js = nc.jetstream()
        for job in (bad_file, bad_model):
            await js.publish(subjects.trainer_jobs, event_bytes(job))
        for _ in range(600):
            done = {s.job_id: s for s in seen if s.status == "failed"}
            if len(done) == 2:
                break
            await asyncio.sleep(0.1)
        else:
            raise AssertionError(f"no failure events: {[s.status for s in seen]}\n{trainer.logs()}")
        err = done[bad_file.job_id].job["error"]
        assert err["code"] == "invalid_training_file" and "line 2:" in err["message"]
        assert err["param"] == "training_file"
        assert done[bad_model.job_id].job["error"]["code"] == "model_not_available"

        got = await ask(nc, subjects, "acme", "jobs.retrieve", job_id=bad_file.job_id)
        assert got.body["status"] == "failed" and got.body["object"] == "fine_tuning.job"
        events = await ask(nc, subjects, "acme", "jobs.events", job_id=bad_file.job_id)
        assert [e["data"].get("status") for e in events.body["data"]] == ["failed", None]
        listed = await ask(nc, subjects, "acme", "jobs.list", limit=1)
        assert len(listed.body["data"]) == 1 and listed.body["has_more"]
        # Another tenant sees none of it.
        other = await ask(nc, subjects, "other", "jobs.retrieve", job_id=bad_file.job_id)
        assert other.status == 404 and other.error is not None
        assert (await ask(nc, subjects, "other", "jobs.list")).body["data"] == []
        missing = await ask(nc, subjects, "acme", "adapters.resolve", model="acme/x:ft-v1")
        assert missing.status == 404 and missing.error and missing.error.code == "model_not_found"
        unknown = await ask(nc, subjects, "acme", "jobs.delete_everything")
        assert unknown.status == 400

        # Another tenant reusing acme's job id: refused for good (not retried), acme's job
        # untouched, nothing announced.
        before = len(seen)
        thief = bad_model.model_copy(
            update={
                "ctx": RequestContext(tenant="other", request_id="r2"),
                "job_id": bad_file.job_id,
            }
        )
        await js.publish(subjects.trainer_jobs, event_bytes(thief))
        for _ in range(300):
            info = await js.consumer_info(subjects.trainer_stream_name, "trainer")
            if info.num_pending == 0 and info.num_ack_pending == 0:
                break
            await asyncio.sleep(0.1)
        else:
            raise AssertionError(f"the duplicate job is still pending: {info}")
        assert len(seen) == before
        again = await ask(nc, subjects, "acme", "jobs.retrieve", job_id=bad_file.job_id)
        assert again.body["error"]["code"] == "invalid_training_file"
        assert (await ask(nc, subjects, "other", "jobs.list")).body["data"] == []
    finally:
        await nc.close()
