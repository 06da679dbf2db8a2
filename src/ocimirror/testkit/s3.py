"""An S3 stand-in on loopback for tests of object-store caches: moto's server, in a child.

`LocalS3` runs `python -m moto.server` (moto is a test dependency) on 127.0.0.1 on a free
port, as its own process so its request handling does not share the tests' interpreter.
`bucket()` creates a fresh, empty bucket and returns its name; `options` are the obstore
options that reach it (`endpoint` over plain HTTP, any key pair: moto checks none of them),
and `url(bucket, prefix)` names a place in it, `s3://bucket/prefix`. `requests()` counts
what the server was asked, by method, from its log, as `Registry.requests` does.
`ChecksumS3` puts S3's check of an upload's `x-amz-checksum-sha256` in front of it (moto
checks none).
"""

from __future__ import annotations

import base64
import hashlib
import sys
import urllib.error
import urllib.request
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Self

from . import secrets as scanned_secrets
from .child import LoggedChild
from .lifecycle import StartStop
from .scripted import ScriptedHandler, ScriptedServer

#: The key pair the stand-in is reached with (moto takes any): distinctive, so that the
#: suite's secrets scan (testkit.secrets) can look for them.
ACCESS_KEY_ID = "OCIMIRRORTESTKEYID"
SECRET_ACCESS_KEY = "ocimirror-test-secret-access-key"
scanned_secrets.register(ACCESS_KEY_ID, SECRET_ACCESS_KEY)


class LocalS3(LoggedChild):
    """moto's S3 server on loopback, started and stopped by the test."""

    what = "moto's S3 server"
    prefix = "moto"

    def _command(self, workdir: Path) -> list[str]:
        return [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)]

    @property
    def endpoint(self) -> str:
        """Return the server's base URL."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def options(self) -> dict[str, str]:
        """Return the obstore options that reach the server."""
        return {
            "endpoint": self.endpoint,
            "access_key_id": ACCESS_KEY_ID,
            "secret_access_key": SECRET_ACCESS_KEY,
            "region": "us-east-1",
        }

    def environment(self) -> dict[str, str]:
        """Return the same as the environment (AWS_ENDPOINT, AWS_ACCESS_KEY_ID...), as obstore
        and the AWS tools read it."""
        return {f"AWS_{key.upper()}": value for key, value in self.options.items()}

    def url(self, bucket: str, prefix: str = "") -> str:
        """Return `s3://bucket/prefix`."""
        return f"s3://{bucket}/{prefix}".rstrip("/")

    def bucket(self) -> str:
        """Create a fresh bucket and return its name."""
        name = f"bucket-{next(self._names)}"
        req = urllib.request.Request(f"{self.endpoint}/{name}", method="PUT")
        with urllib.request.urlopen(req, timeout=10):
            pass
        return name

    def delete_bucket(self, name: str) -> None:
        """Delete a bucket and everything in it (moto allows a bucket that is not empty)."""
        req = urllib.request.Request(f"{self.endpoint}/{name}", method="DELETE")
        try:
            with urllib.request.urlopen(req, timeout=10):
                pass
        except urllib.error.HTTPError as e:
            raise RuntimeError(f"cannot delete bucket {name}: HTTP {e.code}") from None


class RefusingS3(StartStop):
    """An S3 endpoint on loopback that refuses every request with one S3 error, as S3 does
    a wrong key pair (403 AccessDenied, the default) or a request signed for the wrong
    region (400 AuthorizationHeaderMalformed): moto accepts any keys and any region."""

    def __init__(self, status: int = 403, code: str = "AccessDenied") -> None:
        """Answer `status` with an error document of `code`; nothing runs until `start()`."""
        self.status = status
        self.body = (
            f'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>{code}</Code>'
            f"<Message>{code}</Message></Error>"
        ).encode()
        self._server: ScriptedServer | None = None

    @property
    def endpoint(self) -> str:
        """Return the server's base URL."""
        assert self._server is not None
        return f"http://{self._server.host}"

    def start(self) -> Self:
        """Serve on a free port in a thread."""
        body, status = self.body, self.status

        class Deny(ScriptedHandler):
            def _deny(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                if length:
                    self.rfile.read(length)
                self.answer(status, body, {"Content-Type": "application/xml"})

            do_GET = do_HEAD = do_PUT = do_POST = do_DELETE = _deny

        self._server = ScriptedServer(Deny)
        return self

    def stop(self) -> None:
        """Stop serving."""
        if self._server is not None:
            self._server.stop()
            self._server = None


class ChecksumS3:
    """S3's own check of an upload, in front of moto (which checks no checksum): a loopback
    HTTP server that forwards every request to `LocalS3` and refuses, as S3 does with
    400 `BadDigest`, a PUT whose body does not match its `x-amz-checksum-sha256` header.
    `refused` counts those, `puts` lists the paths of the PUTs moto accepted; `running()`
    serves until its block ends (in the test's loop)."""

    def __init__(self, s3: LocalS3) -> None:
        """Forward to `s3`; nothing runs until `running()`."""
        self.s3 = s3
        self.port = 0
        self.refused = 0
        self.puts: list[str] = []

    @property
    def endpoint(self) -> str:
        """Return the front's base URL."""
        return f"http://127.0.0.1:{self.port}"

    @asynccontextmanager
    async def running(self) -> AsyncIterator[ChecksumS3]:
        """Serve on a free loopback port until the block ends."""
        import aiohttp
        from aiohttp import web

        from .front import serve

        async def handle(request: web.Request) -> web.StreamResponse:
            body = await request.read()
            sent = request.headers.get("x-amz-checksum-sha256")
            if request.method == "PUT" and sent is not None:
                actual = base64.b64encode(hashlib.sha256(body).digest()).decode()
                if actual != sent:
                    self.refused += 1
                    return web.Response(
                        status=400, body=_BAD_DIGEST, content_type="application/xml"
                    )
            headers = {k: v for k, v in request.headers.items() if k.lower() not in _HOP}
            async with session.request(
                request.method,
                self.s3.endpoint + request.path_qs,
                headers=headers,
                data=body or None,
                allow_redirects=False,
            ) as resp:
                data = await resp.read()
                if request.method == "PUT" and resp.status < 300:
                    self.puts.append(request.path)
                out = {k: v for k, v in resp.headers.items() if k.lower() not in _HOP}
                if request.method == "HEAD":
                    out["Content-Length"] = resp.headers.get("Content-Length", "0")
                    return web.Response(status=resp.status, headers=out)
                return web.Response(status=resp.status, headers=out, body=data)

        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", handle)
        async with aiohttp.ClientSession(auto_decompress=False) as session, serve(app) as port:
            self.port = port
            yield self


_HOP = frozenset({"host", "content-length", "transfer-encoding", "connection", "keep-alive"})
_BAD_DIGEST = (
    b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>BadDigest</Code>'
    b"<Message>The SHA256 you specified did not match the calculated checksum.</Message></Error>"
)
