"""A scripted HTTP server on loopback, in a thread: for a test whose upstream must answer
exactly what the test says (a wrong digest, a redirect elsewhere, an error body).

`ScriptedHandler` is a `BaseHTTPRequestHandler` that logs nothing and can `answer(status,
body, headers)`: the body with its Content-Length (none written for HEAD). `ScriptedServer`
serves a handler class on 127.0.0.1, on a free port, from a daemon thread: `host`, `port`,
`stop()`. A test's server subclasses it, defines its handler in `__init__` (so the handler
sees the test's state) and hands it to `super().__init__`.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class ScriptedHandler(BaseHTTPRequestHandler):
    """A request handler that logs nothing and answers in one call."""

    def log_message(self, format: str, *args: Any) -> None:
        """Log nothing (the test asserts on what it records itself)."""

    def answer(
        self, status: int, body: bytes = b"", headers: Mapping[str, str] | None = None
    ) -> None:
        """Send `status`, `headers`, the Content-Length and (unless HEAD) `body`."""
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)


class ScriptedServer:
    """A handler class served on 127.0.0.1 from a daemon thread until `stop()`."""

    def __init__(self, handler: type[BaseHTTPRequestHandler]) -> None:
        """Start serving `handler` on a free port."""
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def port(self) -> int:
        """Its port."""
        return int(self.server.server_address[1])

    @property
    def host(self) -> str:
        """`127.0.0.1:PORT`."""
        return f"127.0.0.1:{self.port}"

    def stop(self) -> None:
        """Stop serving and close the socket."""
        self.server.shutdown()
        self.server.server_close()
