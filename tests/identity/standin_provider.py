"""A stand-in OpenAI-compatible provider on 127.0.0.1 that records what it receives.

`mode`: "ok" streams an answer (SSE, with usage), "500" answers an error, "die" closes the
connection without answering, "cut" sends one token and then closes mid-stream.
"""

from __future__ import annotations

import json
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class StandinProvider:
    def __init__(self, name: str, mode: str = "ok") -> None:
        self.name = name
        self.mode = mode
        self.received: list[dict[str, Any]] = []  # {"path", "headers", "body"}
        provider = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("content-length") or 0)
                body = json.loads(self.rfile.read(length) or b"{}")
                provider.received.append(
                    {"path": self.path, "headers": dict(self.headers.items()), "body": body}
                )
                if provider.mode == "die":
                    self.connection.shutdown(socket.SHUT_RDWR)
                    return
                if provider.mode == "500":
                    data = json.dumps({"error": {"message": "boom", "type": "server_error"}})
                    self.send_response(500)
                    self.send_header("content-type", "application/json")
                    self.send_header("content-length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data.encode())
                    return
                self.send_response(200)
                self.send_header("content-type", "text/event-stream")
                self.end_headers()
                words = ["Hello", " from", f" {provider.name}"]
                chat = self.path.endswith("/chat/completions")
                for i, word in enumerate(words):
                    last = i == len(words) - 1
                    choice: dict[str, Any] = {"index": 0, "finish_reason": "stop" if last else None}
                    if chat:
                        choice["delta"] = {"content": word}
                    else:
                        choice["text"] = word
                    self._event({"id": "x", "object": "chunk", "choices": [choice]})
                    if provider.mode == "cut":
                        self.connection.shutdown(socket.SHUT_RDWR)
                        return
                self._event(
                    {
                        "id": "x",
                        "choices": [],
                        "usage": {
                            "prompt_tokens": 7,
                            "completion_tokens": len(words),
                            "total_tokens": 10,
                        },
                    }
                )
                self.wfile.write(b"data: [DONE]\n\n")

            def _event(self, data: dict[str, Any]) -> None:
                self.wfile.write(f"data: {json.dumps(data)}\n\n".encode())
                self.wfile.flush()

            def log_message(self, *_: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> StandinProvider:
        self.thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.server.shutdown()
        self.server.server_close()
