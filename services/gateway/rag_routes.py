"""Files, vector stores and memories in OpenAI's shapes: HTTP in front of the memory service.

The gateway authenticates and forwards; the memory service owns the data. Uploads go
as raw bytes (metadata in headers), so a file is limited by the bus's message size
(`Gateway.upload_limit`; the whole multipart body by `Gateway.body_limit`, counted as it
arrives).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import orjson
from fastapi import FastAPI, Request
from fastapi.responses import Response
from pydantic import BaseModel

from libs import rbac
from libs.context import RequestContext
from libs.errors import EnclaveError
from libs.events import (
    FileOp,
    FilesList,
    MemoriesOp,
    MemoryOperation,
    RagReply,
    RagRequest,
    TenantDataDelete,
    VectorStoreBodyOp,
    VectorStoreFileOp,
    VectorStoreOp,
    VectorStoresList,
)
from libs.zip_limits import ZipRefused, check_zip, is_zip
from services.gateway.policy import Action

if TYPE_CHECKING:
    from services.gateway.bootstrap import Gateway


def _json(body: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(body), status_code=status, media_type="application/json")


async def _call(
    gw: Gateway, subject: str, request: BaseModel | bytes, headers: dict[str, str]
) -> Response:
    reply = await gw.bus.ask(gw.bus.peers.memory_api, subject, request, RagReply, headers=headers)
    return _json(reply.body)


async def _body(gw: Gateway, request: Request) -> dict[str, Any]:
    if not await request.body():
        return {}
    body = await gw.read_json(request)
    if not isinstance(body, dict):
        raise EnclaveError(400, "The request body must be a JSON object.", "invalid_request")
    return body


def check_upload_zip(data: bytes) -> None:
    """A zip upload (a .docx) within libs/zip_limits.py's limits, read from its central
    directory alone; a zip bomb is a 400 before it is stored, never a failed file later."""
    try:
        check_zip(data)
    except ZipRefused as exc:
        raise EnclaveError(400, f"The file was refused: {exc}.", "invalid_file", "file") from None


def register(app: FastAPI, gw: Gateway) -> None:
    subjects = gw.bus.subjects

    async def auth(request: Request, action: Action | None = None) -> RequestContext:
        """The route's permission from the RBAC matrix (libs.rbac.ROUTES) unless named."""
        if action is None:
            permission = rbac.ROUTES[(request.method, request.scope["route"].path)]
            action = Action(permission.value)
        return await gw.auth.check_request(request, action)

    async def _op(ctx: RequestContext, operation: MemoryOperation) -> Response:
        event = RagRequest(ctx=ctx, operation=operation)
        return await _call(gw, subjects.memory_rag, event, ctx.headers())

    @app.post("/v1/files", response_model=None)
    async def create_file(request: Request) -> Response:
        ctx = await auth(request)
        # The whole body is bounded before this (admission.py: gw.body_limit), chunked too.
        limit = gw.upload_limit()
        form = await request.form()
        upload = form.get("file")
        purpose = str(form.get("purpose") or "")
        if upload is None or isinstance(upload, str):
            raise EnclaveError(400, "A `file` part is required.", "invalid_value", "file")
        data = await upload.read()
        if len(data) > limit:
            raise EnclaveError(413, f"The file is larger than {limit} bytes.", "file_too_large")
        filename = upload.filename or "upload.txt"
        if is_zip(data) or filename.lower().endswith(".docx"):
            check_upload_zip(data)
        headers = {
            **ctx.headers(),
            "enclave-ctx": ctx.model_dump_json(),
            "enclave-filename": filename.replace("\n", " ")[:500],
            "enclave-purpose": purpose,
        }
        return await _call(gw, subjects.memory_upload, data, headers)

    @app.get("/v1/files", response_model=None)
    async def list_files(request: Request) -> Response:
        purpose = request.query_params.get("purpose") or None
        return await _op(await auth(request), FilesList(purpose=purpose))

    @app.get("/v1/files/{file_id}", response_model=None)
    async def get_file(file_id: str, request: Request) -> Response:
        return await _op(await auth(request), FileOp(op="files.get", file_id=file_id))

    @app.delete("/v1/files/{file_id}", response_model=None)
    async def delete_file(file_id: str, request: Request) -> Response:
        return await _op(await auth(request), FileOp(op="files.delete", file_id=file_id))

    @app.post("/v1/vector_stores", response_model=None)
    async def create_store(request: Request) -> Response:
        ctx = await auth(request)
        return await _op(
            ctx, VectorStoreBodyOp(op="vector_stores.create", body=await _body(gw, request))
        )

    @app.get("/v1/vector_stores", response_model=None)
    async def list_stores(request: Request) -> Response:
        return await _op(await auth(request), VectorStoresList())

    @app.get("/v1/vector_stores/{vs_id}", response_model=None)
    async def get_store(vs_id: str, request: Request) -> Response:
        return await _op(
            await auth(request), VectorStoreOp(op="vector_stores.get", vector_store_id=vs_id)
        )

    @app.delete("/v1/vector_stores/{vs_id}", response_model=None)
    async def delete_store(vs_id: str, request: Request) -> Response:
        ctx = await auth(request)
        return await _op(ctx, VectorStoreOp(op="vector_stores.delete", vector_store_id=vs_id))

    @app.post("/v1/vector_stores/{vs_id}/search", response_model=None)
    async def search_store(vs_id: str, request: Request) -> Response:
        ctx = await auth(request)
        body = await _body(gw, request)
        return await _op(
            ctx, VectorStoreBodyOp(op="vector_stores.search", vector_store_id=vs_id, body=body)
        )

    @app.post("/v1/vector_stores/{vs_id}/files", response_model=None)
    async def add_store_file(vs_id: str, request: Request) -> Response:
        ctx = await auth(request)
        body = await _body(gw, request)
        return await _op(
            ctx,
            VectorStoreBodyOp(op="vector_stores.files.create", vector_store_id=vs_id, body=body),
        )

    @app.get("/v1/vector_stores/{vs_id}/files", response_model=None)
    async def list_store_files(vs_id: str, request: Request) -> Response:
        ctx = await auth(request)
        return await _op(ctx, VectorStoreOp(op="vector_stores.files.list", vector_store_id=vs_id))

    @app.get("/v1/vector_stores/{vs_id}/files/{file_id}", response_model=None)
    async def get_store_file(vs_id: str, file_id: str, request: Request) -> Response:
        ctx = await auth(request)
        return await _op(
            ctx,
            VectorStoreFileOp(op="vector_stores.files.get", vector_store_id=vs_id, file_id=file_id),
        )

    @app.delete("/v1/vector_stores/{vs_id}/files/{file_id}", response_model=None)
    async def delete_store_file(vs_id: str, file_id: str, request: Request) -> Response:
        ctx = await auth(request)
        return await _op(
            ctx,
            VectorStoreFileOp(
                op="vector_stores.files.delete", vector_store_id=vs_id, file_id=file_id
            ),
        )

    # Memories (extension): the caller's own; admin and developer keys may name a user.
    @app.get("/v1/memories", response_model=None)
    async def list_memories(request: Request) -> Response:
        ctx = await auth(request)
        return await _op(ctx, MemoriesOp(op="memories.list", user=request.query_params.get("user")))

    @app.delete("/v1/memories", response_model=None)
    async def delete_memories(request: Request) -> Response:
        ctx = await auth(request)
        return await _op(
            ctx, MemoriesOp(op="memories.delete", user=request.query_params.get("user"))
        )

    @app.delete("/v1/memories/{memory_id}", response_model=None)
    async def delete_memory(memory_id: str, request: Request) -> Response:
        ctx = await auth(request)
        user = request.query_params.get("user")
        return await _op(ctx, MemoriesOp(op="memories.delete", user=user, memory_id=memory_id))

    # A whole tenant's memory and RAG data (admin of that tenant only).
    @app.delete("/v1/admin/tenant_data", response_model=None)
    async def delete_tenant(request: Request) -> Response:
        ctx = await auth(request, Action.ERASE_TENANT_DATA)
        return await _op(ctx, TenantDataDelete())
