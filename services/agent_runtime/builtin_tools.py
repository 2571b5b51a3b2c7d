"""The tools the platform runs itself: code execution in the sandbox, file search over the
tenant's vector stores, and memory write. Each asks through `ToolPorts` only."""

from __future__ import annotations

import json
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from libs.events import ChatMessage, MemoryStoreRequested, SandboxExecRequest
from services.agent_runtime.tools import Tool, ToolContext, ToolFailed, ToolPorts

MAX_CODE = 20_000
MAX_SEARCH_RESULTS = 20


class ToolArgs(BaseModel):
    model_config = ConfigDict(extra="forbid")


class CodeArgs(ToolArgs):
    language: Literal["python", "bash"] = Field(
        default="python", description="The language of `code`."
    )
    code: str = Field(min_length=1, max_length=MAX_CODE, description="The program to run.")
    timeout_s: float | None = Field(
        default=None, gt=0, le=60, description="Wall-clock limit in seconds."
    )


class CodeExecution:
    """Runs a program in a fresh sandbox (no network, no secrets) and reports its output."""

    name = "code_execution"
    description = (
        "Run a Python or bash program in an isolated sandbox without network access and "
        "read its stdout, stderr and exit code. Print what you need to see."
    )
    arguments = CodeArgs

    async def run(self, args: CodeArgs, call: ToolContext, ports: ToolPorts) -> str:
        reply = await ports.sandbox(
            SandboxExecRequest(
                ctx=call.ctx,
                language=args.language,
                code=args.code,
                timeout_s=args.timeout_s,
                tool=self.name,
            )
        )
        if reply.error is not None:
            raise ToolFailed(f"the sandbox did not run the program: {reply.error.message}")
        result: dict[str, Any] = {
            "status": reply.status,
            "exit_code": reply.exit_code,
            "stdout": reply.stdout,
            "stderr": reply.stderr,
        }
        if reply.reason:
            result["reason"] = reply.reason
        if reply.truncated:
            result["truncated"] = True
        return json.dumps(result)


class SearchArgs(ToolArgs):
    query: str = Field(min_length=1, max_length=2_000, description="What to look for.")
    max_num_results: int = Field(default=5, ge=1, le=MAX_SEARCH_RESULTS)


class FileSearch:
    """Searches the vector stores the agent is given, best chunks first."""

    name = "file_search"
    description = "Search the files of your knowledge base; returns the best matching passages."
    arguments = SearchArgs

    async def run(self, args: SearchArgs, call: ToolContext, ports: ToolPorts) -> str:
        if not call.vector_store_ids:
            raise ToolFailed("no vector store is attached to this agent")
        hits: list[dict[str, Any]] = []
        for store in call.vector_store_ids:
            page = await ports.search(
                call.ctx, store, {"query": args.query, "max_num_results": args.max_num_results}
            )
            for item in page.get("data") or []:
                text = "".join(part.get("text") or "" for part in item.get("content") or [] if part)
                hits.append(
                    {
                        "file_id": item.get("file_id"),
                        "filename": item.get("filename"),
                        "score": round(float(item.get("score") or 0.0), 4),
                        "text": text,
                    }
                )
        hits.sort(key=lambda h: -h["score"])
        return json.dumps({"results": hits[: args.max_num_results]})


class MemoryArgs(ToolArgs):
    text: str = Field(
        min_length=1, max_length=2_000, description="A fact about the user to remember."
    )


class MemoryWrite:
    """Hands a fact to the memory service, which extracts and stores the user's memories
    from it (the same path as a remembered turn: JetStream, so it survives a memory
    service that is down)."""

    name = "memory_write"
    description = "Remember a fact about the user for later conversations."
    arguments = MemoryArgs

    async def run(self, args: MemoryArgs, call: ToolContext, ports: ToolPorts) -> str:
        if not call.user:
            raise ToolFailed("this request names no `user` whose memory to write")
        await ports.remember(
            MemoryStoreRequested(
                ctx=call.ctx,
                user=call.user,
                messages=[ChatMessage(role="user", content=args.text)],
            )
        )
        return "Saved to memory."


def builtin_tools() -> list[Tool]:
    return [CodeExecution(), FileSearch(), MemoryWrite()]
