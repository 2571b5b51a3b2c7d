"""Fine-tuning in OpenAI's shapes: `/v1/fine_tuning/jobs` over the bus to the trainer.

The official SDK's `client.fine_tuning.jobs.*` calls (create, list, retrieve, cancel,
list_events, checkpoints.list) work unchanged. The gateway authenticates (permission
`fine_tune`: admin and developer), reads the job's files from the memory service, where
every `/v1/files` purpose lives (`fine-tune` JSONL was validated line by line at upload),
and hands the job to the trainer as one typed `trainer.api` operation: the trainer
stores it, queues it on its JetStream work queue and answers the job object. Every
read is within the caller's tenant; another tenant's job is a 404, as a missing one.

`GET /v1/files/{file_id}/content` returns a file's bytes (the SDK's `files.content`).

Eval sets and runs (same permission, the trainer's `evals.*` operations): `POST /v1/evals`
`{"name", "items", "judge_model"?, "model"?}` stores (or replaces) an eval set;
`GET /v1/evals` lists them; `POST /v1/evals/{name}/runs` `{"model", "judge_model"?}`
starts a run (answered `in_progress`); `GET /v1/evals/{name}/runs` lists runs, newest
first; `GET /v1/evals/{name}/runs/{run_id}` is one run with its report.

Learning from feedback (opt in per tenant): `GET /v1/fine_tuning/learning` and `PUT
/v1/fine_tuning/learning` `{"feedback"?, "retention_days"?, "base_model"?, "eval_set"?,
"min_examples"?}` (a tenant admin changes it); `POST
/v1/chat/completions/{completion_id}/feedback` `{"rating": "up"|"down", "correction"?}`
rates one of the tenant's completions (permission `infer`; 403 while the tenant has not
opted in, 404 for another tenant's completion or one not logged).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

import orjson
from fastapi import FastAPI, Request
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from libs.context import RequestContext
from libs.errors import EnclaveError
from libs.events import (
    EvalRetrieve,
    EvalSetPut,
    EvalSetsList,
    EvalsList,
    EvalsRun,
    FeedbackCreate,
    FileOp,
    JobOp,
    JobsCreate,
    JobsList,
    LearningConfigure,
    LearningGet,
    RagReply,
    RagRequest,
    TrainerReply,
    TrainerRequest,
)
from services.gateway.policy import Action

if TYPE_CHECKING:
    from services.gateway.bootstrap import Gateway

FINE_TUNE_PURPOSE = "fine-tune"


class Supervised(BaseModel):
    hyperparameters: dict[str, Any] = Field(default_factory=dict)


class Method(BaseModel):
    type: Literal["supervised"] = "supervised"
    supervised: Supervised | None = None


class CreateJob(BaseModel):
    """POST /v1/fine_tuning/jobs (OpenAI's body; `eval_set` is ours: the tenant's eval set,
    run on the base model and the new adapter, and the gate that may promote it)."""

    model_config = ConfigDict(extra="ignore")

    model: str = Field(min_length=1)
    training_file: str = Field(min_length=1)
    validation_file: str | None = None
    hyperparameters: dict[str, Any] | None = None
    method: Method | None = None
    suffix: str | None = Field(default=None, max_length=64)
    seed: int | None = None
    metadata: dict[str, str] | None = None
    integrations: list[Any] | None = None
    eval_set: dict[str, Any] | None = None

    def chosen_hyperparameters(self) -> dict[str, Any]:
        if self.method is not None and self.method.supervised is not None:
            return self.method.supervised.hyperparameters
        return self.hyperparameters or {}


class CreateEvalSet(BaseModel):
    """POST /v1/evals: the eval set (services/trainer/evals.py) and its name."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=200)
    items: list[dict[str, Any]] = Field(min_length=1)
    judge_model: str | None = None
    model: str | None = None  # the base model whose serving version runs nightly


class Rating(BaseModel):
    """POST /v1/chat/completions/{completion_id}/feedback."""

    model_config = ConfigDict(extra="forbid")

    rating: Literal["up", "down"]
    correction: str | None = Field(default=None, max_length=20_000)


class Learning(BaseModel):
    """PUT /v1/fine_tuning/learning: fields left out keep their value."""

    model_config = ConfigDict(extra="forbid")

    feedback: bool | None = None
    retention_days: int | None = Field(default=None, ge=1, le=3650)
    base_model: str | None = None
    eval_set: str | None = None
    min_examples: int | None = Field(default=None, ge=1, le=100_000)
    hyperparameters: dict[str, Any] | None = None


class CreateEvalRun(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: str = Field(min_length=1)
    judge_model: str | None = None


def _body(model: type[BaseModel], raw: Any) -> Any:
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        err = exc.errors()[0]
        param = ".".join(str(p) for p in err["loc"]) or None
        raise EnclaveError(400, err["msg"], "invalid_value", param) from None


def _json(body: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(body), status_code=status, media_type="application/json")


def _int(value: str | None, name: str, default: int, high: int) -> int:
    if value is None or value == "":
        return default
    try:
        number = int(value)
    except ValueError:
        raise EnclaveError(400, f"`{name}` must be an integer.", "invalid_value", name) from None
    if not 1 <= number <= high:
        raise EnclaveError(400, f"`{name}` must be 1 to {high}.", "invalid_value", name)
    return number


def register(app: FastAPI, gw: Gateway) -> None:
    subjects, peers = gw.bus.subjects, gw.bus.peers

    async def trainer(ctx: RequestContext, operation: Any) -> Response:
        reply = await gw.bus.ask(
            peers.trainer,
            subjects.trainer_api,
            TrainerRequest(ctx=ctx, operation=operation),
            TrainerReply,
        )
        if reply.error is not None:
            raise EnclaveError.of(reply.error)
        return _json(reply.body)

    async def file_text(ctx: RequestContext, file_id: str, param: str) -> str:
        """A `fine-tune` file's JSONL from the memory service (400 if it is not one)."""
        try:
            reply = await gw.bus.ask(
                peers.memory_api,
                subjects.memory_rag,
                RagRequest(ctx=ctx, operation=FileOp(op="files.content", file_id=file_id)),
                RagReply,
            )
        except EnclaveError as exc:
            if exc.info.status != 404:
                raise
            raise EnclaveError(400, f"File '{file_id}' not found.", "invalid_file", param) from None
        if reply.body.get("purpose") != FINE_TUNE_PURPOSE:
            raise EnclaveError(
                400,
                f"File '{file_id}' has purpose `{reply.body.get('purpose')}`, not `fine-tune`.",
                "invalid_file",
                param,
            )
        return str(reply.body["content"])

    async def auth(request: Request) -> RequestContext:
        return await gw.auth.check_request(request, Action.FINE_TUNE)

    @app.post("/v1/fine_tuning/jobs", response_model=None)
    async def create_job(request: Request) -> Response:
        ctx = await auth(request)
        raw = await gw.read_json(request)
        try:
            body = CreateJob.model_validate(raw)
        except ValidationError as exc:
            err = exc.errors()[0]
            param = ".".join(str(p) for p in err["loc"]) or None
            raise EnclaveError(400, err["msg"], "invalid_value", param) from None
        training = await file_text(ctx, body.training_file, "training_file")
        validation = (
            await file_text(ctx, body.validation_file, "validation_file")
            if body.validation_file
            else None
        )
        return await trainer(
            ctx,
            JobsCreate(
                model=body.model,
                training_file=body.training_file,
                training_data=training,
                validation_file=body.validation_file,
                validation_data=validation,
                hyperparameters=body.chosen_hyperparameters(),
                seed=body.seed,
                suffix=body.suffix,
                metadata=body.metadata,
                eval_set=body.eval_set,
            ),
        )

    @app.get("/v1/fine_tuning/jobs", response_model=None)
    async def list_jobs(request: Request) -> Response:
        ctx = await auth(request)
        q = request.query_params
        limit = _int(q.get("limit"), "limit", 20, 100)
        return await trainer(ctx, JobsList(limit=limit, after=q.get("after") or None))

    async def job_op(request: Request, op: str, job_id: str) -> Response:
        ctx = await auth(request)
        q = request.query_params
        limit = _int(q.get("limit"), "limit", 20, 1000)
        return await trainer(
            ctx,
            JobOp.model_validate(
                {"op": op, "job_id": job_id, "limit": limit, "after": q.get("after") or None}
            ),
        )

    @app.get("/v1/fine_tuning/jobs/{job_id}", response_model=None)
    async def retrieve_job(job_id: str, request: Request) -> Response:
        return await job_op(request, "jobs.retrieve", job_id)

    @app.post("/v1/fine_tuning/jobs/{job_id}/cancel", response_model=None)
    async def cancel_job(job_id: str, request: Request) -> Response:
        return await job_op(request, "jobs.cancel", job_id)

    @app.get("/v1/fine_tuning/jobs/{job_id}/events", response_model=None)
    async def job_events(job_id: str, request: Request) -> Response:
        return await job_op(request, "jobs.events", job_id)

    @app.get("/v1/fine_tuning/jobs/{job_id}/checkpoints", response_model=None)
    async def job_checkpoints(job_id: str, request: Request) -> Response:
        return await job_op(request, "jobs.checkpoints", job_id)

    @app.post("/v1/evals", response_model=None)
    async def create_eval_set(request: Request) -> Response:
        ctx = await auth(request)
        body = _body(CreateEvalSet, await gw.read_json(request))
        eval_set = {"items": body.items, "judge_model": body.judge_model}
        return await trainer(ctx, EvalSetPut(name=body.name, eval_set=eval_set, model=body.model))

    @app.get("/v1/evals", response_model=None)
    async def list_eval_sets(request: Request) -> Response:
        return await trainer(await auth(request), EvalSetsList())

    @app.post("/v1/evals/{name}/runs", response_model=None)
    async def create_eval_run(name: str, request: Request) -> Response:
        ctx = await auth(request)
        body = _body(CreateEvalRun, await gw.read_json(request))
        return await trainer(
            ctx, EvalsRun(eval_set=name, model=body.model, judge_model=body.judge_model)
        )

    @app.get("/v1/evals/{name}/runs", response_model=None)
    async def list_eval_runs(name: str, request: Request) -> Response:
        ctx = await auth(request)
        limit = _int(request.query_params.get("limit"), "limit", 20, 100)
        return await trainer(ctx, EvalsList(eval_set=name, limit=limit))

    @app.get("/v1/evals/{name}/runs/{run_id}", response_model=None)
    async def retrieve_eval_run(name: str, run_id: str, request: Request) -> Response:
        ctx = await auth(request)
        response = await trainer(ctx, EvalRetrieve(run_id=run_id))
        if orjson.loads(bytes(response.body)).get("eval_set") != name:
            raise EnclaveError(404, f"No eval run found with id {run_id!r}.", "not_found")
        return response

    @app.get("/v1/fine_tuning/learning", response_model=None)
    async def get_learning(request: Request) -> Response:
        return await trainer(await auth(request), LearningGet())

    @app.put("/v1/fine_tuning/learning", response_model=None)
    async def put_learning(request: Request) -> Response:
        ctx = await auth(request)
        body = _body(Learning, await gw.read_json(request))
        return await trainer(ctx, LearningConfigure(**body.model_dump()))

    @app.post("/v1/chat/completions/{completion_id}/feedback", response_model=None)
    async def rate_completion(completion_id: str, request: Request) -> Response:
        ctx = await gw.auth.check_request(request, Action.INFER)
        body = _body(Rating, await gw.read_json(request))
        if len(completion_id) > 200:  # no completion has such an id
            raise EnclaveError(404, "No completion found with that id.", "not_found")
        return await trainer(
            ctx,
            FeedbackCreate(
                completion_id=completion_id, rating=body.rating, correction=body.correction
            ),
        )

    @app.get("/v1/files/{file_id}/content", response_model=None)
    async def file_content(file_id: str, request: Request) -> Response:
        ctx = await gw.auth.check_request(request, Action.INFER)  # as the other file routes
        reply = await gw.bus.ask(
            peers.memory_api,
            subjects.memory_rag,
            RagRequest(ctx=ctx, operation=FileOp(op="files.content", file_id=file_id)),
            RagReply,
        )
        return Response(str(reply.body["content"]).encode(), media_type="application/octet-stream")
