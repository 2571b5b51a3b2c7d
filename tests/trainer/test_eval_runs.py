"""Eval sets stored per tenant and eval runs through `trainer.api` (`TrainerService.api`),
on SQLite, with a scripted engine of our own port (services/trainer/engine.py) that answers
like a base model and like a tuned adapter, and judges rubrics: reports with pass rates
and deltas against the serving version, a tenant's own adapters only, the rubric judged
by the tenant's judge model, and the nightly run once a day (injected clock)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import nats
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from libs.context import RequestContext
from libs.db.engine import make_engine, migrate_async
from libs.events import (
    EvalRetrieve,
    EvalSetPut,
    EvalSetsList,
    EvalsList,
    EvalsRun,
    TrainerReply,
    TrainerRequest,
)
from libs.rpc import serve
from libs.settings import Settings
from libs.signing import key_id
from services.cli import main
from services.trainer import bundle
from services.trainer.adapters.bundles import BundleDir
from services.trainer.adapters.sql import TrainerStore
from services.trainer.evals import JUDGE_SYSTEM
from services.trainer.service import TrainerService

BASE = "smollm2-135m-instruct"
GOOD = "Refunds take 14 days. Sorry for the wait."

EVAL_SET = {
    "judge_model": BASE,
    "items": [
        {
            "id": "r1",
            "task": "refunds",
            "messages": [{"role": "user", "content": "How long do refunds take?"}],
            "checks": [{"type": "contains", "value": "14 days"}],
        },
        {
            "id": "r2",
            "task": "tone",
            "messages": [{"role": "user", "content": "My refund is late."}],
            "checks": [{"type": "rubric", "value": "The answer apologises."}],
        },
        {
            "id": "g1",
            "task": "greeting",
            "messages": [{"role": "user", "content": "Say OK."}],
            "checks": [{"type": "exact", "value": "OK."}],
        },
    ],
}


class ScriptedEngine:
    """The engine port: the base model does not know the refund time, an adapter whose
    weights are b"good" does; as a judge it passes an answer that says sorry."""

    def __init__(self) -> None:
        self.prompts: list[list[Mapping[str, str]]] = []

    def train(self, *args: Any, **kwargs: Any) -> Any:
        raise AssertionError("no training here")

    def generate(
        self,
        prompts: Sequence[Sequence[Mapping[str, str]]],
        adapter_files: Mapping[str, bytes] | None = None,
        *,
        max_new_tokens: int = 48,
        seed: int = 0,
    ) -> list[str]:
        out = []
        for p in prompts:
            self.prompts.append(list(p))
            if p[0]["content"] == JUDGE_SYSTEM:
                graded = p[-1]["content"].split("Answer to grade:")[1]
                out.append("PASS" if "Sorry" in graded else "FAIL")
            elif p[-1]["content"] == "Say OK.":
                out.append("OK.")
            elif adapter_files is not None and adapter_files["adapter.safetensors"] == b"good":
                out.append(GOOD)
            else:
                out.append("I do not know.")
        return out


class Site:
    def __init__(
        self,
        svc: TrainerService,
        engine: ScriptedEngine,
        key: Ed25519PrivateKey,
        now: list[int],
        audits: list[tuple[str, str, dict[str, Any]]],
    ) -> None:
        self.svc, self.engine, self.key, self.now, self.audits = svc, engine, key, now, audits

    async def ask(self, tenant: str, op: Any) -> TrainerReply:
        ctx = RequestContext(tenant=tenant, request_id="r", actor="key-1", role="admin")
        return await self.svc.api(TrainerRequest(ctx=ctx, operation=op))

    async def adapter(self, tenant: str, weights: bytes, status: str) -> str:
        store = self.svc.store
        version = await store.next_version(tenant, BASE)
        files = bundle.build(
            {"adapter.safetensors": weights, "adapter_config.json": b'{"r": 8}'},
            {},
            {"tenant": tenant, "base_model": BASE},
            self.key,
        )
        digest = json.loads(files["manifest.json"])["digest"]
        path = self.svc.bundles.write(tenant, digest, files)
        row = await store.add_adapter(
            tenant=tenant,
            base_model=BASE,
            digest=digest,
            job_id="ftjob-x",
            trained_by="k",
            eval_report={},
            meta={},
            bundle_path=str(path),
            status=status,
            status_reason="",
            version=version,
        )
        return row.public_id


@pytest.fixture
async def site(tmp_path: Path) -> AsyncIterator[Site]:
    url = f"sqlite+aiosqlite:///{tmp_path / 'enclave.db'}"
    await migrate_async(Settings(home=tmp_path, database_url=url))
    key = Ed25519PrivateKey.generate()
    engine = ScriptedEngine()
    now = [int(datetime(2026, 11, 29, 1, 0, tzinfo=UTC).timestamp())]
    audits: list[tuple[str, str, dict[str, Any]]] = []

    async def audit(action: str, ctx: RequestContext, **fields: Any) -> None:
        audits.append((action, ctx.tenant, fields))

    async def publish(_: Any) -> None:
        return None

    def clock() -> int:
        now[0] += 1  # a second per reading: runs are listed newest first
        return now[0]

    svc = TrainerService(
        store=TrainerStore(make_engine(url)),
        engines=lambda model: engine if model == BASE else None,
        bundles=BundleDir(tmp_path / "adapters"),
        signing_key=key,
        trusted_keys={key_id(key.public_key()): key.public_key()},
        publish=publish,
        audit=audit,
        clock=clock,
    )
    s = Site(svc, engine, key, now, audits)
    try:
        yield s
    finally:
        await svc.store.engine.dispose()


async def test_an_eval_run_reports_pass_rates_and_deltas_against_the_serving_version(
    site: Site,
) -> None:
    put = await site.ask("acme", EvalSetPut(name="support", eval_set=EVAL_SET, model=BASE))
    assert put.error is None, put.error
    assert put.body["items"] == 3 and put.body["digest"].startswith("sha256:")
    assert (await site.ask("acme", EvalSetsList())).body["data"][0]["name"] == "support"
    assert (await site.ask("globex", EvalSetsList())).body["data"] == []

    # On the base model (it serves: no adapter promoted): its own report is the serving one.
    base = await site.ask("acme", EvalsRun(eval_set="support", model=BASE, wait=True))
    assert base.error is None, base.error
    assert base.body["status"] == "completed"
    assert base.body["tasks"] == {"greeting": 1.0, "refunds": 0.0, "tone": 0.0}
    assert base.body["serving_model"] == BASE
    assert base.body["deltas"]["_overall"] == 0.0

    # A tuned adapter (ready, not promoted): deltas against the base model, which serves.
    v1 = await site.adapter("acme", b"good", "ready")
    run = await site.ask("acme", EvalsRun(eval_set="support", model=v1, wait=True))
    assert run.body["model"] == v1
    assert run.body["pass_rate"] == 1.0
    assert run.body["serving_model"] == BASE
    assert run.body["deltas"] == {
        "greeting": 0.0,
        "refunds": 1.0,
        "tone": 1.0,
        "_overall": pytest.approx(0.666667),
    }
    # The rubric was judged by the judge model, on the adapter's answer.
    judged = [p for p in site.engine.prompts if p[0]["content"] == JUDGE_SYSTEM]
    assert any(GOOD in p[-1]["content"] for p in judged)
    results = {r["id"]: r for r in run.body["report"]["candidate"]["results"]}
    assert results["r2"]["passed"] and results["r1"]["answer"] == GOOD

    # The base model's stored report was reused, not run again: 3 answers + 1 judgement.
    asked = len(site.engine.prompts)
    v2 = await site.adapter("acme", b"worse", "promoted")
    worse = await site.ask("acme", EvalsRun(eval_set="support", model=v2, wait=True))
    assert len(site.engine.prompts) - asked == 4  # v2 serves: only v2 answered and judged
    assert worse.body["serving_model"] == v2 and worse.body["pass_rate"] == pytest.approx(
        1 / 3, abs=1e-3
    )
    again = await site.ask("acme", EvalsRun(eval_set="support", model=v1, wait=True))
    assert again.body["serving_model"] == v2
    assert again.body["deltas"]["_overall"] == pytest.approx(0.666667)

    listed = await site.ask("acme", EvalsList(eval_set="support"))
    assert [r["model"] for r in listed.body["data"]] == [v1, v2, v1, BASE]
    assert "report" not in listed.body["data"][0]
    one = await site.ask("acme", EvalRetrieve(run_id=run.body["id"]))
    assert one.body["report"]["candidate"]["model"] == v1
    actions = [a for a, _, _ in site.audits]
    assert actions.count("eval_run_created") == 4 and actions.count("eval_run_completed") == 4
    assert "eval_set_stored" in actions


async def test_another_tenants_models_sets_and_runs_do_not_exist(site: Site) -> None:
    await site.ask("acme", EvalSetPut(name="support", eval_set=EVAL_SET))
    mine = await site.ask("acme", EvalsRun(eval_set="support", model=BASE, wait=True))
    theirs = await site.adapter("globex", b"good", "promoted")
    # globex's adapter, as acme's model or judge: 404, as a missing one.
    for op in (
        EvalsRun(eval_set="support", model=theirs),
        EvalsRun(eval_set="support", model=BASE, judge_model=theirs),
        EvalsRun(eval_set="support", model="acme/smollm2-135m-instruct:ft-v9"),
    ):
        got = await site.ask("acme", op)
        assert got.status == 404 and got.error is not None and "does not exist" in got.error.message
    # acme's set and run, asked for by globex.
    assert (await site.ask("globex", EvalsRun(eval_set="support", model=BASE))).status == 404
    assert (await site.ask("globex", EvalRetrieve(run_id=mine.body["id"]))).status == 404
    assert (await site.ask("globex", EvalsList())).body["data"] == []
    # A model not served here, a bad eval set: 400 naming why.
    bad = await site.ask("acme", EvalsRun(eval_set="support", model="gpt-nothing"))
    assert bad.status == 400 and "cannot be evaluated here" in bad.error.message  # type: ignore[union-attr]
    broken = {"items": [{"id": "a", "messages": [], "checks": []}]}
    got = await site.ask("acme", EvalSetPut(name="x", eval_set=broken))
    assert got.status == 400 and "items.0.messages" in got.error.message  # type: ignore[union-attr]


async def test_a_run_not_waited_for_completes_in_the_background(site: Site) -> None:
    await site.ask("acme", EvalSetPut(name="support", eval_set=EVAL_SET))
    started = await site.ask("acme", EvalsRun(eval_set="support", model=BASE))
    assert started.body["status"] == "in_progress" and started.body["pass_rate"] is None
    for task in list(site.svc.evals.tasks):
        await task
    done = await site.ask("acme", EvalRetrieve(run_id=started.body["id"]))
    assert done.body["status"] == "completed" and done.body["pass_rate"] == pytest.approx(
        1 / 3, abs=1e-3
    )


async def test_the_nightly_run_evaluates_each_serving_version_once_a_day(site: Site) -> None:
    now = site.now
    await site.ask("acme", EvalSetPut(name="support", eval_set=EVAL_SET, model=BASE))
    await site.ask("acme", EvalSetPut(name="adhoc", eval_set=EVAL_SET))  # no model: not nightly
    await site.ask("globex", EvalSetPut(name="g", eval_set=EVAL_SET, model=BASE))
    served = await site.adapter("acme", b"good", "promoted")

    assert "evals.nightly" not in await site.svc.tick()  # 01:00 UTC: not due before 02:00
    now[0] += 3600
    ran = (await site.svc.tick())["evals.nightly"]
    assert sorted((r["eval_set"], r["model"], r["trigger"]) for r in ran) == [
        ("g", BASE, "nightly"),
        ("support", served, "nightly"),
    ]
    now[0] += 3600
    assert "evals.nightly" not in await site.svc.tick()  # once a day

    # A second replica on the same database the same day: the day is claimed already.
    other = TrainerService(
        store=site.svc.store,
        engines=site.svc.engines,
        bundles=site.svc.bundles,
        signing_key=site.key,
        trusted_keys=site.svc.trusted_keys,
        publish=site.svc.publish,
        clock=site.svc.clock,
    )
    assert await other.tick() == {}
    now[0] += 24 * 3600
    assert len((await other.tick())["evals.nightly"]) == 2  # the next day
    runs = await site.ask("acme", EvalsList(eval_set="support"))
    assert [r["trigger"] for r in runs.body["data"]] == ["nightly", "nightly"]


async def test_enclave_eval_stores_runs_and_lists_through_the_trainer_api(
    site: Site, bus_settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> None:
    nc = await nats.connect(bus_settings.nats_url)
    sub = await serve(
        nc, bus_settings.subjects.trainer_api, TrainerRequest, site.svc.api, queue="trainer"
    )
    monkeypatch.setenv("ENCLAVE_NATS_URL", bus_settings.nats_url)
    monkeypatch.setenv("ENCLAVE_BUS_PREFIX", bus_settings.bus_prefix)
    monkeypatch.setenv("ENCLAVE_HOME", str(tmp_path / "cli-home"))
    spec = tmp_path / "support.json"
    spec.write_text(json.dumps(EVAL_SET))

    def enclave(*args: str) -> tuple[int, str, str]:
        code = main(["eval", *args])
        out = capsys.readouterr()
        return code, out.out, out.err

    try:
        code, out, _ = await asyncio.to_thread(
            enclave, "sets", "put", "--tenant", "acme", "--name", "support", "--file", str(spec)
        )
        assert code == 0 and json.loads(out)["items"] == 3
        code, out, _ = await asyncio.to_thread(
            enclave, "run", "--tenant", "acme", "--model", BASE, "--eval-set", "support"
        )
        run = json.loads(out)
        assert code == 0 and run["status"] == "completed" and run["tasks"]["greeting"] == 1.0
        code, out, _ = await asyncio.to_thread(enclave, "list", "--tenant", "acme")
        assert code == 0 and run["id"] in out and "pass 0.33" in out and "completed" in out
        code, out, _ = await asyncio.to_thread(enclave, "show", "--tenant", "acme", run["id"])
        assert json.loads(out)["report"]["serving_model"] == BASE
        # Another tenant's run, a model not here: refused, with the reason.
        code, _, err = await asyncio.to_thread(enclave, "show", "--tenant", "globex", run["id"])
        assert code == 1 and err.startswith("404")
        code, _, err = await asyncio.to_thread(
            enclave, "run", "--tenant", "acme", "--model", "nope", "--eval-set", "support"
        )
        assert code == 1 and "cannot be evaluated here" in err
    finally:
        await sub.unsubscribe()
        await nc.close()


async def test_the_gateways_eval_routes(site: Site, nc: Any, inprocess_settings: Settings) -> None:
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
        _, dev = await create_key(gw.db, "acme", "developer")
        _, user = await create_key(gw.db, "acme", "user")
        _, other = await create_key(gw.db, "globex", "admin")
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://gw") as http:
            auth = {"Authorization": f"Bearer {dev}"}
            made = await http.post(
                "/v1/evals", headers=auth, json={"name": "support", "model": BASE, **EVAL_SET}
            )
            assert made.status_code == 200, made.text
            assert made.json()["name"] == "support" and made.json()["judge_model"] == BASE
            denied = await http.get("/v1/evals", headers={"Authorization": f"Bearer {user}"})
            assert denied.status_code == 403
            assert [
                s["name"] for s in (await http.get("/v1/evals", headers=auth)).json()["data"]
            ] == ["support"]
            bad = await http.post("/v1/evals", headers=auth, json={"name": "x", "items": []})
            assert bad.status_code == 400 and bad.json()["error"]["param"] == "items"

            started = await http.post("/v1/evals/support/runs", headers=auth, json={"model": BASE})
            assert started.status_code == 200 and started.json()["status"] == "in_progress"
            run_id = started.json()["id"]
            for task in list(site.svc.evals.tasks):
                await task
            got = await http.get(f"/v1/evals/support/runs/{run_id}", headers=auth)
            assert got.json()["status"] == "completed" and got.json()["tasks"]["greeting"] == 1.0
            listed = await http.get("/v1/evals/support/runs", headers=auth)
            assert [r["id"] for r in listed.json()["data"]] == [run_id]
            # Another tenant's run, or the run under another set's name: 404.
            theirs = {"Authorization": f"Bearer {other}"}
            assert (
                await http.get(f"/v1/evals/support/runs/{run_id}", headers=theirs)
            ).status_code == 404
            assert (
                await http.get(f"/v1/evals/other/runs/{run_id}", headers=auth)
            ).status_code == 404
            missing = await http.post("/v1/evals/nope/runs", headers=auth, json={"model": BASE})
            assert missing.status_code == 404
    finally:
        await sub.unsubscribe()
        await gw.stop()
