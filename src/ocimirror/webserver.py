"""aiohttp's server, answering requests it cannot parse with a body of our own.

aiohttp answers a request its parser refuses (a header too long, CR inside a value, a bad
chunk, NUL in the path) with a 400 whose text is the parser's message, and that message
quotes the offending bytes: a header's value, an `Authorization` line included, went back
to whoever sent it, and through any cache or log between. `AppRunner` here is aiohttp's,
with one change: such an answer carries only its status (`400 Bad Request: malformed HTTP
request`), never the request. What is logged is `logs.MalformedRequests`' one line.

aiohttp has no public hook for this answer (it is made by the connection's
`RequestHandler.handle_error` before any middleware or signal runs), so the runner builds
its `Server` as aiohttp does and has it make connections of a `RequestHandler` subclass;
`tests/test_proxy_hostile.py -k malformed` fails if a new aiohttp changes that path.

Such a connection is also closed gracefully ("lingering close", as nginx and Apache do):
aiohttp closed the socket with the rest of the request (a body, the tail of a long line)
unread, and a socket closed with unread bytes sends a reset instead of an end of stream,
which can reach the client before it has read the 400 (it saw `Connection reset by
peer`, never the answer). Here the answer is followed by an end of stream in our
direction, what the client still sends is read and dropped, and the socket is closed
once the client closes its side or after `LINGER_SECONDS`.
"""

from __future__ import annotations

import asyncio
from http import HTTPStatus
from typing import Any

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.web_protocol import RequestHandler

__all__ = ["LINGER_SECONDS", "AppRunner", "generic_error_text"]

#: How long a connection refused as malformed keeps reading (and dropping) what its client
#: still sends, after the answer and our end of stream, before it is closed regardless.
LINGER_SECONDS = 5.0


def generic_error_text(status: int) -> str:
    """The body of an answer aiohttp makes itself: the status, nothing of the request."""
    try:
        phrase = HTTPStatus(status).phrase
    except ValueError:
        phrase = "Error"
    if status == HTTPStatus.BAD_REQUEST:
        return f"{status} {phrase}: malformed HTTP request\n"
    return f"{status} {phrase}\n"


class _LingeringClose:
    """A transport whose `close` half-closes: our end of stream after what is written, the
    socket closed when the client closes its side (the event loop does that on its end of
    stream) or after `LINGER_SECONDS`; a second `close` (the server shutting down) closes
    at once. Everything else is the wrapped transport's."""

    def __init__(self, transport: asyncio.Transport) -> None:
        self._transport = transport
        self._half_closed = False

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)

    def close(self) -> None:
        transport = self._transport
        if transport.is_closing():
            return
        if self._half_closed or not transport.can_write_eof():
            transport.close()
            return
        self._half_closed = True
        transport.write_eof()
        transport.resume_reading()
        asyncio.get_running_loop().call_later(LINGER_SECONDS, transport.close)


class _GenericErrors(RequestHandler):
    """A connection whose own error answers (parse failures, 500s, 504s) say only the status,
    and which, after refusing a request it could not parse, closes gracefully."""

    _lingering = False

    def data_received(self, data: bytes) -> None:
        """What arrives after a refused request is dropped, unparsed."""
        if not self._lingering:
            super().data_received(data)

    def handle_error(
        self,
        request: web.BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        """aiohttp's handling (log, close the connection) with a generic body."""
        if isinstance(exc, HttpProcessingError) and self.transport is not None:
            self._lingering = True
            self.transport = _LingeringClose(self.transport)  # type: ignore[assignment]
        response = super().handle_error(request, status, exc, generic_error_text(status))
        if isinstance(response, web.Response):
            response.text = generic_error_text(status)
            response.content_type = "text/plain"
        return response


class _Server(web.Server):
    def __call__(self) -> RequestHandler:
        return _GenericErrors(self, loop=self._loop, **self._kwargs)


class AppRunner(web.AppRunner):
    """`web.AppRunner` whose connections answer what they cannot parse generically."""

    async def _make_server(self) -> web.Server:
        made = await super()._make_server()
        return _Server(
            made.request_handler,
            request_factory=made.request_factory,
            handler_cancellation=made.handler_cancellation,
            loop=made._loop,
            **made._kwargs,
        )
