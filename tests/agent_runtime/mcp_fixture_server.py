"""A tiny real MCP server for the MCP tool tests, written with the `mcp` SDK's MCPServer (the
FastMCP of mcp 1.x). `python mcp_fixture_server.py` serves stdio; `... http PORT` serves
streamable HTTP on 127.0.0.1:PORT at /mcp. The tests run the stdio one through the
runtime's sandbox as `python -c <this file>` (nothing of the checkout is visible there)."""

import os
import socket
import sys

from mcp.server.mcpserver import MCPServer

server = MCPServer("fixture")


@server.tool()
def add(a: int, b: int) -> str:
    """Add two integers."""
    return str(a + b)


@server.tool()
def shout(text: str) -> str:
    """The text in capitals."""
    return text.upper()


@server.tool()
def fail(why: str) -> str:
    """Always fails."""
    raise ValueError(f"failed on purpose: {why}")


@server.tool()
def probe() -> str:
    """What the server can see and reach (the sandbox tests read it)."""
    try:
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.close()
        inet = "allowed"
    except OSError as exc:
        inet = f"refused errno {exc.errno}"
    return (
        f"uid={os.getuid()} inet={inet} shadow={os.path.exists('/etc/shadow')} "
        f"home={os.path.exists('/root/.bashrc')} env={sorted(os.environ)}"
    )


if __name__ == "__main__":
    if len(sys.argv) > 2 and sys.argv[1] == "http":
        server.run("streamable-http", host="127.0.0.1", port=int(sys.argv[2]))
    else:
        server.run()
