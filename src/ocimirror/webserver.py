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
"""

from __future__ import annotations

from http import HTTPStatus

from aiohttp import web
from aiohttp.web_protocol import RequestHandler

__all__ = ["AppRunner", "generic_error_text"]


def generic_error_text(status: int) -> str:
    """The body of an answer aiohttp makes itself: the status, nothing of the request."""
    try:
        phrase = HTTPStatus(status).phrase
    except ValueError:
        phrase = "Error"
    if status == HTTPStatus.BAD_REQUEST:
        return f"{status} {phrase}: malformed HTTP request\n"
    return f"{status} {phrase}\n"


class _GenericErrors(RequestHandler):
    """A connection whose own error answers (parse failures, 500s, 504s) say only the status."""

    def handle_error(
        self,
        request: web.BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        """aiohttp's handling (log, close the connection) with a generic body."""
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
