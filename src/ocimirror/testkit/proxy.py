"""`ocimirror proxy` as a child process for tests, and one-request HTTP calls to it.

`ProxyProcess(workdir, *args, env=...)` starts the command on a free loopback port (the
proxy's own variables in the tests' environment are dropped first, so only `env` sets
them), waits for `/healthz`, and logs to a file in `workdir` (a `command.Background`); `call()` sends one request
to a port and returns an `Answer` without following redirects.
"""

from __future__ import annotations

import http.client
import json
import os
from pathlib import Path
from typing import Any

from . import secrets as scanned_secrets
from .command import Background, ocimirror_command
from .registry import free_port

#: `ocimirror proxy`, as a user runs it.
PROXY_COMMAND = ocimirror_command("proxy")
PROXY_ENV = (
    "REGISTRY_HOST",
    "REPO_PREFIX",
    "AUTH_HEADER",
    "DISABLE_BROWSER_REDIRECTS",
    "PORT",
    "STREAM_BLOBS",
    "OCIMIRROR_PROXY_TOKENS",
    "OCIMIRROR_PROXY_CACHE",
    "OCIMIRROR_PROXY_CACHE_LOCAL",
    "OCIMIRROR_PROXY_CACHE_MAX_SIZE",
    "OCIMIRROR_PROXY_TAG_TTL",
    "OCIMIRROR_PROXY_BUCKET_REDIRECT",
)


class Answer:
    """One HTTP answer: status, headers and body."""

    def __init__(self, status: int, headers: http.client.HTTPMessage, body: bytes) -> None:
        self.status = status
        self.headers = headers
        self.body = body

    def json(self) -> Any:
        """The body as JSON."""
        return json.loads(self.body)


def call(
    port: int,
    method: str,
    path: str,
    *,
    headers: dict[str, str] | None = None,
    body: bytes | None = None,
) -> Answer:
    """Send one request to 127.0.0.1:port; redirects are not followed."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        resp = conn.getresponse()
        answer = Answer(resp.status, resp.headers, resp.read())
        scanned_secrets.scan(answer.body, f"the answer to {method} {path.split('?')[0]}")
        return answer
    finally:
        conn.close()


class ProxyProcess(Background):
    """The proxy command in the background on a free port, its log in a file."""

    def __init__(self, workdir: Path, *args: str, env: dict[str, str] | None = None) -> None:
        self.port = free_port()
        environ = {k: v for k, v in os.environ.items() if k not in PROXY_ENV}
        environ.update({"PORT": str(self.port), **(env or {})})
        super().__init__(
            ["proxy", "--host", "127.0.0.1", *args], workdir / f"proxy-{self.port}.log", environ
        )
        self.wait_ready(lambda: self.call("GET", "/healthz").status == 200, "the proxy")

    @property
    def host(self) -> str:
        """`127.0.0.1:PORT`."""
        return f"127.0.0.1:{self.port}"

    def ref(self, name: str) -> str:
        """A skopeo reference through the proxy."""
        return f"docker://{self.host}/{name}"

    def call(self, method: str, path: str, **kwargs: Any) -> Answer:
        """Send one request to the proxy."""
        return call(self.port, method, path, **kwargs)
