"""`ocimirror.webserver`: the lingering close after a request aiohttp cannot parse.

The raw-socket cases (a 400 read whole, then an end of stream, even with megabytes of the
refused request still coming) are in `test_proxy_hostile.malformed_requests`, for the
proxy and `serve` both; here the two ends of a linger whose client never closes.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from aiohttp import web

from ocimirror import webserver

BAD_HEAD = b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 100\r\nX: a\rb\r\n\r\n"


async def ok(_: web.Request) -> web.Response:
    return web.Response(text="ok")


@pytest.fixture
async def runner() -> AsyncIterator[tuple[webserver.AppRunner, int]]:
    app = web.Application()
    app.router.add_get("/", ok)
    made = webserver.AppRunner(app)
    await made.setup()
    site = web.TCPSite(made, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield made, port
    finally:
        await made.cleanup()


async def refused(port: int) -> asyncio.StreamWriter:
    """A connection that sent BAD_HEAD and read its whole 400 up to our end of stream; its
    client's side still open."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(BAD_HEAD)
    answer = await asyncio.wait_for(reader.read(), 30)  # until the server's end of stream
    assert answer.startswith(b"HTTP/1.0 400 ")
    assert answer.endswith(b"400 Bad Request: malformed HTTP request\n")
    return writer


async def closed_by_server(writer: asyncio.StreamWriter) -> bool:
    """Whether the server has closed its socket: a write to it is refused (the first write
    after the close draws the reset, the next one fails)."""
    try:
        for _ in range(50):
            writer.write(b"more of the refused body")
            await writer.drain()
            await asyncio.sleep(0.02)
    except (ConnectionResetError, BrokenPipeError):
        return True
    return False


async def test_a_lingering_client_that_never_closes_is_cut_off(
    runner: tuple[webserver.AppRunner, int], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(webserver, "LINGER_SECONDS", 0.05)
    writer = await refused(runner[1])
    assert await closed_by_server(writer)
    writer.close()


async def test_shutting_down_closes_a_lingering_connection_at_once(
    runner: tuple[webserver.AppRunner, int], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(webserver, "LINGER_SECONDS", 3600.0)
    made, port = runner
    writer = await refused(port)
    # While it lingers, the server reads and drops what the client sends.
    writer.write(b"x" * 100_000)
    await writer.drain()
    await made.cleanup()
    assert await closed_by_server(writer)
    writer.close()


async def test_a_good_request_on_the_same_server_is_answered(
    runner: tuple[webserver.AppRunner, int],
) -> None:
    _, port = runner
    await refused(port)
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET / HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n")
    answer = await asyncio.wait_for(reader.read(), 30)
    assert answer.startswith(b"HTTP/1.1 200 ")
    assert answer.endswith(b"ok")
    writer.close()
