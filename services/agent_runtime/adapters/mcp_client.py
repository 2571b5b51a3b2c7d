"""Speaks MCP to a tenant's servers with the `mcp` SDK (ClientSession over `stdio_client` or
`streamable_http_client`): lists their tools and calls them (`McpClient` of mcp_tools.py).

One session per server (tenant, name and configuration), opened on first use and kept
while it is used: a session lives in a task of its own (the SDK's transports are anyio
contexts, entered and left in one task) that serves requests one at a time, and ends after
`idle_s` without one, when its server exits, or when the runtime stops. A changed record
(another configuration) opens a new session; the old one ends when idle.

- stdio: the command runs under the sandbox's bubblewrap profile (libs/bwrap.py: no
  network namespace of its own but an empty one, a read-only /usr, a tmpfs /work, an empty
  environment, the seccomp filter, prlimit; as root, a host uid of its own via setpriv),
  with the runtime's Python and its packages read-only (`command: python` is that
  interpreter) and `mcp_stdio_paths`. The server's stderr is dropped (it may echo
  arguments). The profile's files (passwd, group, the seccomp BPF) are handed to bwrap as
  descriptors opened by `sh` (the SDK's stdio transport passes no descriptors).
- streamable_http: an outbound HTTP connection to the server's `url`, opened only for an
  enabled server (the registry lists only those).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import shutil
import sys
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, TypeVar

from libs.bwrap import GROUP, PASSWD, bwrap_argv
from libs.mcp_servers import McpServer, internal_address, url_host
from libs.settings import Settings
from services.agent_runtime.mcp_tools import McpReply, McpToolSpec, McpUnavailable, reply_text

log = logging.getLogger("enclave.agent_runtime.mcp")
T = TypeVar("T")
# The descriptors `sh` opens for bwrap: passwd, group, the seccomp filter.
PASSWD_FD, GROUP_FD, SECCOMP_FD = 3, 4, 5


@dataclass(frozen=True)
class StdioLimits:
    cpu_s: int = 600
    memory_bytes: int = 1024 * 2**20
    processes: int = 64
    work_bytes: int = 64 * 2**20
    host_uid: int | None = None

    @classmethod
    def from_settings(cls, settings: Settings) -> StdioLimits:
        return cls(
            cpu_s=settings.mcp_stdio_cpu_s,
            memory_bytes=settings.mcp_stdio_memory_mb * 2**20,
            processes=settings.mcp_stdio_processes,
            work_bytes=settings.mcp_stdio_work_mb * 2**20,
            host_uid=settings.mcp_stdio_uid if os.geteuid() == 0 else None,
        )


def python_paths() -> list[str]:
    """The runtime's own interpreter and packages (venv and base installation)."""
    seen: list[str] = []
    for path in (sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix):
        if path and path not in seen and not path.startswith("/usr"):
            seen.append(path)
    return seen


class StdioProfile:
    """How a stdio server's command becomes a sandboxed command line."""

    def __init__(
        self,
        limits: StdioLimits,
        seccomp: bytes | None,
        extra_paths: list[str] | None = None,
    ) -> None:
        self.limits = limits
        self.dir = Path(tempfile.mkdtemp(prefix="enclave-mcp-"))
        os.chmod(self.dir, 0o700)
        (self.dir / "passwd").write_bytes(PASSWD)
        (self.dir / "group").write_bytes(GROUP)
        self.seccomp = None
        if seccomp is not None:
            self.seccomp = self.dir / "seccomp.bpf"
            self.seccomp.write_bytes(seccomp)
        self.paths = [p for p in [*python_paths(), *(extra_paths or [])] if Path(p).exists()]
        if limits.host_uid is not None and not all(map(_open_to_others, self.paths)):
            # bwrap binds the paths as the uid it runs as: one that cannot reach them (a
            # Python under /root, 0700) runs the servers as root, every capability dropped.
            log.warning(
                "stdio MCP servers keep the runtime's uid: %s is not reachable by another uid",
                next(p for p in self.paths if not _open_to_others(p)),
            )
            self.limits = replace(limits, host_uid=None)

    def argv(self, server: McpServer) -> tuple[str, list[str]]:
        """The program and arguments the SDK's stdio transport starts."""
        assert server.command is not None
        command = sys.executable if server.command == "python" else server.command
        inner = bwrap_argv(
            cpu_s=self.limits.cpu_s,
            memory_bytes=self.limits.memory_bytes,
            processes=self.limits.processes,
            work_bytes=self.limits.work_bytes,
            passwd_fd=PASSWD_FD,
            group_fd=GROUP_FD,
            seccomp_fd=SECCOMP_FD if self.seccomp is not None else None,
            host_uid=self.limits.host_uid,
            command=[command, *server.args],
            ro_paths=self.paths,
            as_pid_1=False,
        )
        opens = f'3<"{self.dir}/passwd" 4<"{self.dir}/group"'
        if self.seccomp is not None:
            opens += f' 5<"{self.seccomp}"'
        return "/bin/sh", ["-c", f'exec "$@" {opens}', "sh", *inner]

    def close(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)


def _open_to_others(path: str) -> bool:
    """Whether another uid may reach `path` (every folder on the way searchable)."""
    here = Path(path).resolve()
    for folder in [here, *here.parents]:
        try:
            if folder.is_dir() and not folder.stat().st_mode & 0o001:
                return False
        except OSError:
            return False
    return True


def _key(server: McpServer) -> tuple[str, str, str]:
    config = server.model_dump_json(include={"transport", "command", "args", "url"})
    return server.tenant, server.name, hashlib.sha256(config.encode()).hexdigest()


Request = Callable[[Any], Awaitable[Any]]


class _Session:
    """One server's session, in its own task; requests are served in order."""

    def __init__(
        self,
        opener: Callable[[], AbstractAsyncContextManager[Any]],
        idle_s: float,
        start_timeout_s: float,
    ) -> None:
        self.opener = opener
        self.idle_s = idle_s
        self.start_timeout_s = start_timeout_s
        self.queue: asyncio.Queue[tuple[Request, asyncio.Future[Any]]] = asyncio.Queue()
        self.ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.task = asyncio.create_task(self._main())
        self.tools: list[McpToolSpec] | None = None

    @property
    def alive(self) -> bool:
        return not self.task.done()

    async def _main(self) -> None:
        from mcp import ClientSession

        current: asyncio.Future[Any] | None = None
        try:
            async with self.opener() as streams, ClientSession(streams[0], streams[1]) as session:
                async with asyncio.timeout(self.start_timeout_s):
                    await session.initialize()
                self.ready.set_result(None)
                while True:
                    try:
                        async with asyncio.timeout(self.idle_s):
                            ask, waiting = await self.queue.get()
                    except TimeoutError:
                        return
                    if waiting.done():  # its caller gave up
                        continue
                    current = waiting
                    try:
                        answer = await ask(session)
                        if not waiting.done():
                            waiting.set_result(answer)
                    except asyncio.CancelledError:
                        raise
                    except Exception as exc:  # an MCP error answer, a result that does not read
                        if not waiting.done():
                            waiting.set_exception(McpUnavailable(_reason(exc)))
                    current = None
        except asyncio.CancelledError:
            raise
        except BaseException as exc:  # the server exited, or never answered
            why = _reason(exc)
            if not self.ready.done():
                self.ready.set_exception(McpUnavailable(why))
            if current is not None and not current.done():
                current.set_exception(McpUnavailable(why))
        finally:
            if not self.ready.done():
                self.ready.set_exception(McpUnavailable("the session ended"))
            while not self.queue.empty():
                _, waiting = self.queue.get_nowait()
                if not waiting.done():
                    waiting.set_exception(McpUnavailable("the session ended"))

    async def ask(self, request: Request, timeout_s: float) -> Any:
        async with asyncio.timeout(self.start_timeout_s):
            await asyncio.shield(self.ready)
        if not self.alive:
            raise McpUnavailable("the session ended")
        done: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        await self.queue.put((request, done))
        try:
            async with asyncio.timeout(timeout_s):
                return await done
        except TimeoutError:
            raise McpUnavailable(f"no answer within {timeout_s:g} s") from None

    async def close(self) -> None:
        self.task.cancel()
        with contextlib.suppress(BaseException):
            await self.task


def _reason(exc: BaseException) -> str:
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    text = str(exc) or type(exc).__name__
    return text[:300]


class McpSessions:
    """The runtime's sessions with MCP servers (`McpClient`)."""

    def __init__(
        self,
        profile: StdioProfile | None,
        *,
        idle_s: float = 300.0,
        call_timeout_s: float = 30.0,
        start_timeout_s: float = 20.0,
        internal_hosts: list[str] | None = None,
    ) -> None:
        self.profile = profile
        self.internal_hosts = set(internal_hosts or [])
        self.idle_s = idle_s
        self.call_timeout_s = call_timeout_s
        self.start_timeout_s = start_timeout_s
        self.sessions: dict[tuple[str, str, str], _Session] = {}
        self._devnull = open(os.devnull, "w")  # noqa: SIM115 (closed in close())

    @classmethod
    def from_settings(cls, settings: Settings, seccomp: bytes | None) -> McpSessions:
        profile = StdioProfile(
            StdioLimits.from_settings(settings), seccomp, list(settings.mcp_stdio_paths)
        )
        return cls(
            profile,
            idle_s=settings.mcp_idle_s,
            call_timeout_s=settings.mcp_call_timeout_s,
            start_timeout_s=settings.mcp_start_timeout_s,
            internal_hosts=list(settings.mcp_http_internal_hosts),
        )

    def _opener(self, server: McpServer) -> Callable[[], AbstractAsyncContextManager[Any]]:
        if server.transport == "streamable_http":
            from mcp.client.streamable_http import streamable_http_client

            assert server.url is not None
            url = server.url
            check = self._outside

            @contextlib.asynccontextmanager
            async def connected() -> AsyncIterator[Any]:
                await check(url)
                async with streamable_http_client(url) as streams:
                    yield streams

            return connected
        from mcp.client.stdio import StdioServerParameters, stdio_client

        if self.profile is None or shutil.which("bwrap") is None:
            raise McpUnavailable("stdio servers need bubblewrap (bwrap) on the runtime's host")
        command, args = self.profile.argv(server)
        params = StdioServerParameters(command=command, args=args, env={}, cwd="/")
        errlog = self._devnull

        @contextlib.asynccontextmanager
        async def opened() -> AsyncIterator[Any]:
            async with stdio_client(params, errlog=errlog) as streams:
                yield streams

        return opened

    async def _outside(self, url: str) -> None:
        """Refuse a url whose host resolves to an internal address, unless the platform
        operator listed the host (a name that resolves again later may still move)."""
        host, port = url_host(url)
        if host in self.internal_hosts:
            return
        try:
            found = await asyncio.get_running_loop().getaddrinfo(host, port)
        except OSError as exc:
            raise McpUnavailable(f"`{host}` does not resolve ({exc})") from None
        if any(internal_address(str(info[4][0])) for info in found):
            raise McpUnavailable(
                f"`{host}` is an internal address; the platform operator allows such hosts "
                "with ENCLAVE_MCP_HTTP_INTERNAL_HOSTS"
            )

    def _session(self, server: McpServer) -> _Session:
        key = _key(server)
        found = self.sessions.get(key)
        if found is not None and found.alive:
            return found
        session = _Session(self._opener(server), self.idle_s, self.start_timeout_s)
        self.sessions[key] = session
        return session

    async def _ask(self, server: McpServer, request: Request) -> Any:
        session = self._session(server)
        try:
            return await session.ask(request, self.call_timeout_s)
        except TimeoutError:
            await session.close()
            raise McpUnavailable(
                f"the server did not start within {self.start_timeout_s:g} s"
            ) from None

    async def list_tools(self, server: McpServer) -> list[McpToolSpec]:
        session = self._session(server)
        if session.tools is not None and session.alive:
            return session.tools

        async def ask(client: Any) -> list[McpToolSpec]:
            from mcp.types import PaginatedRequestParams

            specs: list[McpToolSpec] = []
            cursor = None
            for _ in range(20):  # pages
                params = PaginatedRequestParams(cursor=cursor) if cursor else None
                result = await client.list_tools(params=params)
                for tool in result.tools:
                    specs.append(
                        McpToolSpec(
                            name=tool.name,
                            description=tool.description or "",
                            input_schema=dict(tool.input_schema or {}),
                        )
                    )
                cursor = getattr(result, "next_cursor", None)
                if not cursor:
                    break
            return specs

        specs: list[McpToolSpec] = await self._ask(server, ask)
        session.tools = specs
        return specs

    async def call(self, server: McpServer, tool: str, arguments: dict[str, Any]) -> McpReply:
        async def ask(client: Any) -> McpReply:
            result = await client.call_tool(tool, arguments)
            content = [block.model_dump(mode="json") for block in result.content]
            structured = getattr(result, "structured_content", None)
            return McpReply(text=reply_text(content, structured), is_error=bool(result.is_error))

        reply: McpReply = await self._ask(server, ask)
        return reply

    async def close(self) -> None:
        for session in list(self.sessions.values()):
            await session.close()
        self.sessions.clear()
        if self.profile is not None:
            self.profile.close()
        self._devnull.close()
