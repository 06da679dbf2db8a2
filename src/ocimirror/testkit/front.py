"""A misbehaving registry front for tests: an aiohttp server on 127.0.0.1 that forwards to
a real registry, records what it saw, and answers otherwise where a test tells it to.

`serve` runs any aiohttp app on a free loopback port; `Front` forwards to a
`LocalRegistry`, keeps every request as a `Seen`, and lets an `Intercept` answer instead
(a 5xx, a redirect to another host, a tags list with extra names...). `rate_limited` is
the intercept of a registry that allows N requests per second (a `TokenBucket`) and
answers 429 above it.
"""

from __future__ import annotations

import ssl
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass

import aiohttp
from aiohttp import web
from multidict import CIMultiDict

from .accesslog import Request
from .registry import LocalRegistry

__all__ = [
    "Front",
    "Intercept",
    "Seen",
    "TokenBucket",
    "kind_of",
    "rate_limited",
    "registry_error",
    "serve",
]


def kind_of(request: web.Request) -> str:
    """What a request asks for (`manifest`, `blob`, `upload`, `tags`...), as the testkit says."""
    return Request(request.method, request.path, 0).kind


@asynccontextmanager
async def serve(
    app: web.Application, ssl_context: ssl.SSLContext | None = None
) -> AsyncIterator[int]:
    """Serve `app` on 127.0.0.1 on a free port (over TLS with `ssl_context`); yield the port."""
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.1)
    await runner.setup()
    try:
        site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=ssl_context)
        await site.start()
        port: int = runner.addresses[0][1]
        yield port
    finally:
        await runner.cleanup()


@dataclass
class Seen:
    """One request the front received, and the status it answered."""

    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body_size: int
    kind: str
    status: int = 0


#: Decides a request before it is forwarded: a response to answer instead, or None.
Intercept = Callable[["Front", web.Request, bytes], Awaitable[web.StreamResponse | None]]

_HOP_BY_HOP = frozenset(
    {"host", "content-length", "transfer-encoding", "connection", "keep-alive", "upgrade"}
)


class Front:
    """An HTTP server on 127.0.0.1 that forwards to a real registry, misbehaving on purpose."""

    def __init__(
        self,
        upstream: LocalRegistry,
        intercept: Intercept | None = None,
        *,
        extra_headers: dict[str, str] | None = None,
    ) -> None:
        self.upstream = upstream
        self.intercept = intercept
        self.extra_headers = dict(extra_headers or {})
        self.seen: list[Seen] = []
        self.port = 0
        self._session: aiohttp.ClientSession | None = None

    @property
    def host(self) -> str:
        """`127.0.0.1:PORT`, what a client is given as the registry host."""
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        """`http://127.0.0.1:PORT`."""
        return f"http://{self.host}"

    def of(self, method: str | None = None, kind: str | None = None) -> list[Seen]:
        """The requests seen, by method and kind."""
        return [
            s
            for s in self.seen
            if (method is None or s.method == method) and (kind is None or s.kind == kind)
        ]

    @asynccontextmanager
    async def running(self) -> AsyncIterator[Front]:
        """Serve until the block ends."""
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        async with aiohttp.ClientSession(auto_decompress=False) as session:
            self._session = session
            async with serve(app) as port:
                self.port = port
                yield self

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        seen = Seen(
            request.method,
            request.path,
            dict(request.query),
            dict(request.headers),
            len(body),
            kind_of(request),
        )
        self.seen.append(seen)
        response = None
        if self.intercept is not None:
            response = await self.intercept(self, request, body)
        if response is None:
            response = await self.forward(request, body)
        response.headers.update(self.extra_headers)
        seen.status = response.status
        return response

    async def forward(
        self, request: web.Request, body: bytes, *, path_qs: str | None = None
    ) -> web.Response:
        """Send the request on to the registry; answer what it answered."""
        assert self._session is not None
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _HOP_BY_HOP}
        async with self._session.request(
            request.method,
            self.upstream.url + (path_qs or request.path_qs),
            headers=headers,
            data=body if body else None,
            allow_redirects=False,
        ) as resp:
            data = await resp.read()
            out: CIMultiDict[str] = CIMultiDict()
            for k, v in resp.headers.items():
                if k.lower() in _HOP_BY_HOP:
                    continue
                # Upload locations are absolute: keep the client talking to the front.
                out.add(k, v.replace(self.upstream.url, self.url))
            if request.method == "HEAD":
                out["Content-Length"] = resp.headers.get("Content-Length", "0")
                return web.Response(status=resp.status, headers=out)
            return web.Response(status=resp.status, headers=out, body=data)


def registry_error(status: int, code: str, headers: dict[str, str] | None = None) -> web.Response:
    """A distribution-style error response."""
    body = {"errors": [{"code": code, "message": f"the front says {status}"}]}
    return web.json_response(body, status=status, headers=headers)


class TokenBucket:
    """Allows `rate` requests per second, bursts of `capacity`; counts what it decided."""

    def __init__(
        self,
        rate: float,
        capacity: float | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not rate > 0:
            raise ValueError(f"a bucket's rate must be above 0, not {rate!r}")
        self.rate = rate
        self.capacity = rate if capacity is None else capacity
        self._clock = clock
        self._tokens = self.capacity
        self._at = clock()
        self.allowed = 0
        self.refused = 0
        #: Clock times of the first and the last allowed request.
        self.first: float | None = None
        self.last: float | None = None

    def take(self) -> bool:
        """Take a token if there is one: True (allowed) or False (refused)."""
        now = self._clock()
        self._tokens = min(self.capacity, self._tokens + (now - self._at) * self.rate)
        self._at = now
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            self.allowed += 1
            self.first = now if self.first is None else self.first
            self.last = now
            return True
        self.refused += 1
        return False

    @property
    def refused_fraction(self) -> float:
        """Refused requests over all requests (0.0 before any)."""
        total = self.allowed + self.refused
        return self.refused / total if total else 0.0


def rate_limited(bucket: TokenBucket, *, retry_after: str | None = None) -> Intercept:
    """An intercept answering 429 TOOMANYREQUESTS to requests the bucket refuses."""

    async def intercept(front: Front, request: web.Request, body: bytes) -> web.Response | None:
        if bucket.take():
            return None
        headers = {"Retry-After": retry_after} if retry_after is not None else None
        return registry_error(429, "TOOMANYREQUESTS", headers)

    return intercept
