"""Learning from feedback: the pure training-set builder and decision, then the trainer's
side on SQLite with an injected clock: turns kept only for a tenant that opted in,
ratings on the tenant's own completions only (stored, audited), everything past
retention destroyed by the daily purge with an audited record, and the daily learning
job submitted with the tenant's eval set (the gate then decides) or not, saying why;
the gateway's routes for it."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import httpx

from libs.context import RequestContext
from libs.events import (
    EvalSetPut,
    FeedbackCreate,
    FineTuningJobRequested,
    LearningConfigure,
    LearningGet,
    TrainerRequest,
    TurnLogged,
)
from libs.rpc import serve
from libs.settings import Settings
from libs.training_file import parse_training_file
from services.trainer.evals import EvalSet
from services.trainer.learning import LearningSettings, Rated, cutoff, learning_due, training_set
from tests.trainer.test_eval_runs import BASE, EVAL_SET, Site, site  # noqa: F401

DAY = 24 * 3600


def test_the_training_set_teaches_up_rated_answers_and_corrections() -> None:
    q = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Refunds?"}]
    data, counts = training_set(
        [
            Rated("c1", q, "14 days.", "up"),
            Rated("c2", q, "No idea.", "down", "Refunds take 14 days."),
            Rated("c3", q, "Wrong.", "down"),  # no correction: nothing to learn
            Rated("c4", [{"role": "tool", "content": "x"}], "a", "up"),  # no user turn
        ]
    )
    assert counts == {"up": 1, "corrected": 1, "skipped": 2}
    examples = parse_training_file(data)  # the fine-tuning format, line by line
    assert [e.messages[-1].content for e in examples] == ["14 days.", "Refunds take 14 days."]
    assert [m.role for m in examples[0].messages] == ["system", "user", "assistant"]
    assert training_set([]) == ("", {"up": 0, "corrected": 0, "skipped": 0})


def test_when_a_learning_job_is_due() -> None:
    on = LearningSettings(feedback=True, base_model=BASE, eval_set="support", min_examples=3)
    assert learning_due(on, 3, 1)[0]
    assert learning_due(on, 2, 2) == (False, "2 usable rated turns, 3 needed")
    assert learning_due(on, 9, 0) == (False, "no new ratings since the last learning job")
    assert "off" in learning_due(LearningSettings(), 9, 9)[1]
    no_gate = on.model_copy(update={"eval_set": None})
    assert "eval gate needs an eval set" in learning_due(no_gate, 9, 9)[1]
    now = datetime(2026, 11, 29, tzinfo=UTC)
    assert cutoff(now, 30) == datetime(2026, 10, 30, tzinfo=UTC)


def _turn(tenant: str, n: int, at: int) -> TurnLogged:
    return TurnLogged(
        ctx=RequestContext(tenant=tenant, request_id=f"r{n}"),
        completion_id=f"chatcmpl-r{n}",
        kind="chat",
        model=BASE,
        messages=[{"role": "user", "content": f"Question {n} from <PERSON_1>?"}],
        answer=f"Answer {n}.",
        created_at=at,
    )


async def test_ratings_are_opt_in_and_only_on_the_tenants_own_completions(site: Site) -> None:  # noqa: F811
    fb = site.svc.feedback
    now = site.now[0]
    # Off by default: the turn is dropped and a rating is refused, saying how to opt in.
    assert not await fb.log_turn(_turn("acme", 1, now))
    off = await site.ask("acme", FeedbackCreate(completion_id="chatcmpl-r1", rating="up"))
    assert off.status == 403 and "PUT /v1/fine_tuning/learning" in off.error.message  # type: ignore[union-attr]

    dev = RequestContext(tenant="acme", request_id="r", actor="dev", role="developer")
    refused = await site.svc.api(
        TrainerRequest(ctx=dev, operation=LearningConfigure(feedback=True))
    )
    assert refused.status == 403  # an admin's setting
    on = await site.ask("acme", LearningConfigure(feedback=True, retention_days=10))
    assert on.body["feedback"] and on.body["retention_days"] == 10
    assert (await site.ask("acme", LearningConfigure(eval_set="nope"))).status == 400
    bad_hp = await site.ask("acme", LearningConfigure(hyperparameters={"n_epochs": "many"}))
    assert bad_hp.status == 400 and "n_epochs" in bad_hp.error.message  # type: ignore[union-attr]

    assert await fb.log_turn(_turn("acme", 1, now))
    assert not await fb.log_turn(_turn("acme", 1, now))  # a redelivery: kept once
    assert not await fb.log_turn(_turn("globex", 2, now))  # globex did not opt in
    await site.ask("globex", LearningConfigure(feedback=True))
    assert await fb.log_turn(_turn("globex", 2, now))

    up = await site.ask("acme", FeedbackCreate(completion_id="chatcmpl-r1", rating="up"))
    assert up.error is None and up.body["rating"] == "up"
    # globex's completion from acme, and one never logged: 404, the same answer.
    for cid in ("chatcmpl-r2", "chatcmpl-nope"):
        got = await site.ask("acme", FeedbackCreate(completion_id=cid, rating="down"))
        assert got.status == 404 and cid in got.error.message  # type: ignore[union-attr]
    recorded = [f for a, t, f in site.audits if a == "feedback_recorded"]
    assert len(recorded) == 1 and recorded[0]["attrs"]["completion_id"] == "chatcmpl-r1"
    assert [a for a, _, _ in site.audits].count("learning_configured") == 2


async def test_what_is_past_retention_is_destroyed_with_an_audited_record(site: Site) -> None:  # noqa: F811
    fb, now = site.svc.feedback, site.now
    await site.ask("acme", LearningConfigure(feedback=True, retention_days=10))
    start = now[0]
    for n, age_days in enumerate([12, 11, 3]):
        assert await fb.log_turn(_turn("acme", n, start - age_days * DAY))
    await site.ask("acme", FeedbackCreate(completion_id="chatcmpl-r0", rating="up"))
    await site.ask("acme", FeedbackCreate(completion_id="chatcmpl-r2", rating="down"))

    now[0] = int(datetime(2026, 11, 30, 0, 30, tzinfo=UTC).timestamp())
    done = await site.svc.tick()
    (record,) = done["retention.purge"]
    # r0 and r1 are past 10 days; r0's rating goes with its turn; r2 and its rating stay.
    assert record["tenant"] == "acme" and record["turns"] == 2 and record["feedback"] == 1
    assert record["oldest"] < record["newest"] and record["retention_days"] == 10
    assert await site.svc.store.turn("acme", "chatcmpl-r0") is None
    assert await site.svc.store.turn("acme", "chatcmpl-r2") is not None
    (audited,) = [(t, f) for a, t, f in site.audits if a == "training_data_destroyed"]
    assert audited[0] == "acme" and audited[1]["attrs"]["turns"] == 2
    assert await site.svc.tick() == {}  # once a day
    # The next day nothing more is past retention: no record.
    now[0] += DAY
    assert (await site.svc.tick()).get("retention.purge") == []


async def test_the_daily_learning_job_goes_through_the_eval_gate_or_says_why_not(
    site: Site,  # noqa: F811
) -> None:
    fb, now = site.svc.feedback, site.now
    queued: list[FineTuningJobRequested] = []

    async def enqueue(job: FineTuningJobRequested) -> None:
        queued.append(job)

    site.svc.enqueue = enqueue
    await site.ask("acme", EvalSetPut(name="support", eval_set=EVAL_SET))
    await site.ask(
        "acme",
        LearningConfigure(feedback=True, base_model=BASE, eval_set="support", min_examples=2),
    )
    await fb.log_turn(_turn("acme", 1, now[0]))
    await site.ask("acme", FeedbackCreate(completion_id="chatcmpl-r1", rating="up"))

    now[0] = int(datetime(2026, 11, 29, 2, 30, tzinfo=UTC).timestamp())
    (first,) = (await site.svc.tick())["learning.nightly"]
    assert not first["submitted"] and first["reason"] == "1 usable rated turns, 2 needed"
    state = (await site.ask("acme", LearningGet())).body["state"]
    assert state["last_decision"]["reason"] == "1 usable rated turns, 2 needed"

    await fb.log_turn(_turn("acme", 2, now[0]))
    await site.ask(
        "acme",
        FeedbackCreate(completion_id="chatcmpl-r2", rating="down", correction="Fixed answer 2."),
    )
    now[0] += DAY
    (second,) = (await site.svc.tick())["learning.nightly"]
    assert second["submitted"] and second["up"] == 1 and second["corrected"] == 1
    (job,) = queued
    assert job.ctx.tenant == "acme" and job.model == BASE and job.job_id == second["job_id"]
    assert job.eval_set is not None  # the tenant's eval set: the gate decides
    assert EvalSet.model_validate(job.eval_set) == EvalSet.model_validate(
        {**EVAL_SET, "name": "support"}
    )
    lines = [json.loads(line) for line in job.training_data.splitlines()]
    assert [ex["messages"][-1]["content"] for ex in lines] == ["Answer 1.", "Fixed answer 2."]
    assert "Ana" not in job.training_data  # what was logged: placeholders only
    stored = await site.svc.store.job("acme", second["job_id"])
    assert stored is not None and stored.job["metadata"]["source"] == "feedback"

    now[0] += DAY  # no new rating since: nothing submitted, and that is the reason
    (third,) = (await site.svc.tick())["learning.nightly"]
    assert not third["submitted"] and "no new ratings" in third["reason"]
    assert len(queued) == 1
    actions = [a for a, _, _ in site.audits]
    assert actions.count("learning_job_submitted") == 1 and actions.count("learning_skipped") == 2


async def test_the_gateways_feedback_and_learning_routes(
    site: Site,  # noqa: F811
    nc: Any,
    inprocess_settings: Settings,
) -> None:
    from services.gateway.adapters.sql_keys import create_key
    from services.gateway.app import create_fastapi
    from services.gateway.bootstrap import build
    from services.gateway.hot_path import HotPath

    gw = build(inprocess_settings)
    app = HotPath(gw, create_fastapi(gw))
    await gw.start()
    sub = await serve(
        nc, inprocess_settings.subjects.trainer_api, TrainerRequest, site.svc.api, queue="trainer"
    )
    try:
        _, admin = await create_key(gw.db, "acme", "admin")
        _, dev = await create_key(gw.db, "acme", "developer")
        _, user = await create_key(gw.db, "acme", "user")
        _, other = await create_key(gw.db, "globex", "user")
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://gw") as http:

            def h(key: str) -> dict[str, str]:
                return {"Authorization": f"Bearer {key}"}

            path = "/v1/chat/completions/chatcmpl-r1/feedback"
            off = await http.post(path, headers=h(user), json={"rating": "up"})
            assert off.status_code == 403 and off.json()["error"]["code"] == "feedback_disabled"
            assert (
                await http.put("/v1/fine_tuning/learning", headers=h(dev), json={"feedback": True})
            ).status_code == 403
            on = await http.put(
                "/v1/fine_tuning/learning", headers=h(admin), json={"feedback": True}
            )
            assert on.status_code == 200 and on.json()["feedback"] is True
            await site.svc.feedback.log_turn(_turn("acme", 1, site.now[0]))
            bad = await http.post(path, headers=h(user), json={"rating": "meh"})
            assert bad.status_code == 400 and bad.json()["error"]["param"] == "rating"
            rated = await http.post(
                path, headers=h(user), json={"rating": "down", "correction": "Better."}
            )
            assert rated.status_code == 200 and rated.json()["correction"] == "Better."
            long_id = "/v1/chat/completions/" + "x" * 300 + "/feedback"
            assert (
                await http.post(long_id, headers=h(user), json={"rating": "up"})
            ).status_code == 404
            theirs = await http.post(path, headers=h(other), json={"rating": "up"})
            assert theirs.status_code == 403  # globex did not opt in
            got = await http.get("/v1/fine_tuning/learning", headers=h(dev))
            assert got.json()["feedback"] is True and got.json()["retention_days"] == 30
    finally:
        await sub.unsubscribe()
        await gw.stop()
