"""`ocimirror serve` against the requests of issue 11: each one sent as the attacker did.

A web page driving the service (a cross-origin `text/plain` POST, a DNS-rebinding `Host`),
the dashboard's data read without a token, bodies that arrive in pieces (with a length or
chunked), bodies too large, too deep or with too many entries, and finished jobs piling up
in memory. The service runs as a real process on loopback; raw sockets send what urllib
would not.
"""

from __future__ import annotations

import asyncio
import hmac
import http.client
import json
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from ocimirror.service import access
from ocimirror.service.access import AccessPolicy, split_host
from ocimirror.service.jobs import JobManager
from ocimirror.service.models import MirrorEntry, MirrorRequest
from ocimirror.state.db import StateDB
from ocimirror.testkit.images import make_image
from ocimirror.testkit.registry import LocalRegistry
from ocimirror.testkit.seeding import seed
from test_proxy_hostile import assert_malformed_refused
from test_serve import TOKEN, Server

EVIL = "http://evil.example"
PLAIN = {"Content-Type": "text/plain"}
JSON = {"Content-Type": "application/json"}


@pytest.fixture
def server_factory(tmp_path: Path) -> Iterator[Callable[..., Server]]:
    """Start servers (`ocimirror serve ARGS`) that are stopped at the end of the test."""
    started: list[Server] = []

    def start(*args: str, env: dict[str, str] | None = None) -> Server:
        started.append(Server(tmp_path, *args, env=env))
        return started[-1]

    yield start
    for s in started:
        s.kill()


@pytest.fixture
def server(server_factory: Callable[..., Server]) -> Server:
    """A service as started by hand: no tokens, loopback only."""
    return server_factory()


def copy_body(src: LocalRegistry, dst: LocalRegistry, repo: str) -> bytes:
    """A request copying `lib/app:1` from `src` to `dst`'s `repo`."""
    entry = {"src": f"{src.host}/lib/app:1", "dst": f"{dst.host}/{repo}:1"}
    return json.dumps({"mirrors": [entry]}).encode()


# --------------------------------------------------------------------------- web pages


def test_a_cross_origin_post_is_refused_and_copies_nothing(
    registry_pair: tuple[LocalRegistry, LocalRegistry], server: Server
) -> None:
    src, dst = registry_pair
    asyncio.run(seed(src, "lib/app", [("1", make_image(layer_size=200, seed="xo"))]))
    body = copy_body(src, dst, "stolen/app")
    src_mark, dst_mark = src.mark(), dst.mark()
    for path in ("/", "/api/v1/jobs"):
        # What a page's fetch(url, {method: "POST", mode: "no-cors", body}) sends.
        forged = server.call("POST", path, body, headers={**PLAIN, "Origin": EVIL})
        assert forged.status == 403, (path, forged.body)
        assert "cross-origin request refused" in forged.json()["error"]
        # The same with JSON, and with the sandboxed frame's `null`: refused alike.
        for origin in (EVIL, "null", f"http://127.0.0.1:{server.port}.evil.example"):
            answer = server.call("POST", path, body, headers={"Origin": origin})
            assert answer.status == 403, (path, origin)
        # Without an Origin (not a browser), text/plain is still not an API write.
        typed = server.call("POST", path, body, headers=PLAIN)
        assert typed.status == 415, (path, typed.body)
        assert b"Content-Type must be application/json" in typed.body
    assert server.call("GET", "/api/v1/jobs").json()["jobs"] == []
    assert src.requests(since=src_mark) == []
    assert dst.requests(since=dst_mark) == []
    assert dst.tags("stolen/app") == []
    # A POST from the dashboard's own origin is fine.
    same = server.call("POST", "/", b"{}", headers={"Origin": f"http://127.0.0.1:{server.port}"})
    assert same.body == b'{"ok":true}\n'


def test_a_dns_rebinding_host_is_refused(server_factory: Callable[..., Server]) -> None:
    server = server_factory()
    port = server.port
    for host in (f"evil.example:{port}", "evil.example", f"127.0.0.1:{port + 1}", "", "a b"):
        for method, path, body in (("GET", "/api/v1/jobs", None), ("POST", "/", b"{}")):
            answer = server.call(method, path, body, headers={"Host": host})
            assert answer.status == 403, (host, path)
            assert "is not an address this service answers on" in answer.json()["error"]
    for host in (f"localhost:{port}", f"127.0.0.1:{port}", f"LOCALHOST:{port}"):
        assert server.call("GET", "/api/v1/jobs", headers={"Host": host}).status == 200, host
    # Health and readiness answer whatever the Host (probes use the pod's address).
    assert server.call("GET", "/healthz", headers={"Host": "10.1.2.3:80"}).status == 200
    # A name allowed explicitly, from the flag or the environment, with any port.
    named = server_factory(
        "--allowed-host", "mirror.internal", env={"OCIMIRROR_ALLOWED_HOSTS": "other.internal"}
    )
    for host in ("mirror.internal", "mirror.internal:443", "other.internal:8080"):
        answer = named.call("POST", "/", b"{}", headers={"Host": host, "Origin": f"http://{host}"})
        assert answer.body == b'{"ok":true}\n', host
    assert named.call("GET", "/api/v1/jobs", headers={"Host": "evil.example"}).status == 403


def test_with_tokens_the_dashboard_and_its_data_need_one(
    server_factory: Callable[..., Server],
) -> None:
    server = server_factory("--host", "127.0.0.1", env={"OCIMIRROR_API_TOKENS": TOKEN})
    assert server.call("GET", "/api/v1/dashboard").status == 401
    assert server.call("GET", "/api/v1/dashboard", token="wrong").status == 401
    assert server.call("GET", "/api/v1/dashboard", token=TOKEN).json() == {
        "mirrors": [],
        "jobs": [],
    }
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)

    def send(
        method: str, path: str, body: bytes | None = None, headers: dict[str, str] | None = None
    ) -> http.client.HTTPResponse:
        conn.request(method, path, body=body, headers=headers or {})
        answer = conn.getresponse()
        answer.read()
        return answer

    try:
        assert send("GET", "/?token=wrong").status == 401
        # The token in the URL once: kept in a cookie, the URL cleaned.
        login = send("GET", f"/?token={TOKEN}")
        assert login.status == 303
        assert login.headers["Location"] == "/"
        cookie = login.headers["Set-Cookie"]
        assert cookie.startswith(f"{access.TOKEN_COOKIE}={TOKEN};")
        assert "HttpOnly" in cookie
        assert "SameSite=Strict" in cookie
        jar = {"Cookie": cookie.split(";", 1)[0]}
        for path in ("/", "/api/v1/dashboard", "/api/v1/jobs"):
            assert send("GET", path, headers=jar).status == 200, path
        # The cookie reads; it never writes (a write takes the Authorization header).
        assert send("POST", "/api/v1/jobs", b"{}", {**jar, **JSON}).status == 401
    finally:
        conn.close()
    assert TOKEN not in server.text()


async def test_with_tokens_the_dashboard_polls_in_chromium(
    server_factory: Callable[..., Server], tmp_path: Path
) -> None:
    """`/?token=T` once: the page loads without it in the URL and its polling succeeds."""
    from playwright.async_api import async_playwright, expect

    from ocimirror.testkit.browser import launch_chromium

    env = {"OCIMIRROR_API_TOKENS": TOKEN}
    server = await asyncio.to_thread(server_factory, "--host", "127.0.0.1", env=env)
    base = f"http://127.0.0.1:{server.port}"
    async with async_playwright() as pw:
        context = await launch_chromium(pw, tmp_path / "profile")
        try:
            page = context.pages[0] if context.pages else await context.new_page()
            polled: list[int] = []
            page.on(
                "response",
                lambda r: polled.append(r.status) if r.url.endswith("/api/v1/dashboard") else None,
            )
            first = await page.goto(f"{base}/")
            assert first is not None
            assert first.status == 401  # no token, no page
            await page.goto(f"{base}/?token={TOKEN}")
            assert page.url == f"{base}/"  # the token left the URL (and the history)
            await expect(page.locator("#updated")).to_contain_text("updated ", timeout=15_000)
            assert polled
            assert set(polled) == {200}
            await expect(page.locator("#conn")).to_be_hidden()
            cookies = await context.cookies(base)
            (cookie,) = [c for c in cookies if c["name"] == access.TOKEN_COOKIE]
            assert cookie["httpOnly"]
            assert cookie["sameSite"] == "Strict"
        finally:
            await context.close()


# --------------------------------------------------------------------------- bodies


async def exchange(
    port: int, path: str, head: dict[str, str], pieces: list[bytes]
) -> tuple[int, bytes]:
    """POST `pieces` as separate writes on a raw connection; the status and the body."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        lines = [f"POST {path} HTTP/1.1", f"Host: 127.0.0.1:{port}", "Connection: close"]
        lines += [f"{k}: {v}" for k, v in head.items()]
        writer.write(("\r\n".join(lines) + "\r\n\r\n").encode())
        await writer.drain()
        for piece in pieces:
            # Apart in time only so that they arrive as separate segments (as from curl);
            # the outcome must be the same however they arrive.
            await asyncio.sleep(0.05)
            writer.write(piece)
            await writer.drain()
        async with asyncio.timeout(60):
            head_lines = (await reader.readuntil(b"\r\n\r\n")).decode().split("\r\n")
            length = next(
                int(line.split(":", 1)[1])
                for line in head_lines
                if line.lower().startswith("content-length:")
            )
            body = await reader.readexactly(length)
    finally:
        writer.close()
    return int(head_lines[0].split()[1]), body


def chunked(pieces: list[bytes]) -> list[bytes]:
    """Each piece as one chunk, then the last chunk."""
    return [f"{len(p):x}\r\n".encode() + p + b"\r\n" for p in pieces] + [b"0\r\n\r\n"]


async def test_a_body_arriving_in_pieces_is_read_whole(server: Server) -> None:
    body = b'{"mirrors": [],\n "parallelism": 5, "all_tags": false}'
    pieces = [body[:10], body[10:22], body[22:]]
    for path in ("/", "/api/v1/jobs"):
        sized = {**JSON, "Content-Length": str(len(body))}
        status, answer = await exchange(server.port, path, sized, pieces)
        assert status in (200, 202), (path, answer)
        status, answer = await exchange(
            server.port, path, {**JSON, "Transfer-Encoding": "chunked"}, chunked(pieces)
        )
        assert status in (200, 202), (path, answer)
    status, answer = await exchange(server.port, "/", sized, pieces)
    assert answer == b'{"ok":true}\n'


def test_a_480_kb_body_is_accepted(server: Server) -> None:
    # Valid only if read to its end: the closing brackets come last.
    body = b'{"mirrors": [' + b" " * (480 * 1024) + b"]}"
    assert server.call("POST", "/", body).body == b'{"ok":true}\n'
    assert server.call("POST", "/api/v1/jobs", body).status == 202


async def test_over_1_mb_is_413_however_it_is_sent(server: Server) -> None:
    # A Content-Length over the limit: refused before any of the body is sent.
    status, answer = await exchange(server.port, "/", {**JSON, "Content-Length": "5242880"}, [])
    assert (status, answer) == (413, b"Request body must not be larger than 1MB\n")
    # 5 MB chunked: refused once 1 MB is read, not cut there and parsed.
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    head = (
        f"POST /api/v1/jobs HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\n"
        "Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
    )
    writer.write(head.encode())
    answered = asyncio.create_task(reader.readuntil(b"\r\n\r\n"))
    chunk = b'{"mirrors": [' + b" " * (64 * 1024 - 13)
    sent = 0
    try:
        while sent < 5 << 20 and not answered.done():
            writer.write(chunked([chunk])[0])
            await writer.drain()
            sent += len(chunk)
            await asyncio.sleep(0)  # let the answer be read as soon as it comes
    except ConnectionError:
        pass  # the server stopped reading: its answer is what counts
    try:
        async with asyncio.timeout(60):
            status_line = (await answered).split(b"\r\n", 1)[0]
            rest = await reader.read(4096)
    finally:
        writer.close()
    assert status_line.split()[1] == b"413"
    assert b"must not be larger than 1MB" in rest


def test_malformed_and_oversized_requests_are_400s_logged_in_one_line(server: Server) -> None:
    """What aiohttp's parser refuses (test_proxy_hostile.malformed_requests): a 400 each,
    memory bounded, one log line each without traceback or the request's secret."""
    assert_malformed_refused(server.port, f"127.0.0.1:{server.port}", server.text, server.proc.pid)
    assert server.call("GET", "/healthz").status == 200


def test_deep_nesting_is_a_400_without_a_traceback(server: Server) -> None:
    deep = b"[" * 100_000 + b"]" * 100_000
    answer = server.call("POST", "/", deep)
    assert answer.status == 400
    assert answer.body == b"Request body contains JSON nested more than 64 deep (at position 65)\n"
    assert answer.headers["Content-Type"] == "text/plain; charset=utf-8"
    nested = b'{"mirrors": [' + b"[" * 70_000 + b"]" * 70_000 + b"]}"
    job = server.call("POST", "/api/v1/jobs", nested)
    assert job.status == 400
    assert "nested more than 64 deep" in job.json()["error"]
    # Nesting inside strings is text, not depth.
    text = b'{"mirrors": [], "semver": "' + b"[" * 200 + b'"}'
    assert server.call("POST", "/", text).body == b'{"ok":true}\n'
    log = server.text()
    assert "Traceback" not in log
    assert "RecursionError" not in log


def test_too_many_entries_are_refused_and_start_nothing(
    server_factory: Callable[..., Server], tmp_path: Path
) -> None:
    server = server_factory()
    entries = [{"src": f"bad ref {i}", "dst": "x"} for i in range(10_000)]
    body = json.dumps({"mirrors": entries}).encode()
    answer = server.call("POST", "/", body)
    assert answer.status == 413
    assert answer.body == (
        b"Request body has 10000 mirrors entries: at most 1000 are accepted in one"
        b" request (api.max_entries)\n"
    )
    assert server.call("POST", "/api/v1/jobs", body).status == 413
    assert server.call("GET", "/api/v1/jobs").json()["jobs"] == []
    # The limit is the config's.
    config = tmp_path / "small.yaml"
    config.write_text("api:\n  max_entries: 2\n")
    small = server_factory("-c", str(config))
    three = json.dumps({"mirrors": entries[:3]}).encode()
    assert small.call("POST", "/api/v1/jobs", three).status == 413
    assert (
        small.call("POST", "/api/v1/jobs", json.dumps({"mirrors": entries[:2]}).encode()).status
        == 202
    )


# --------------------------------------------------------------------------- memory


@pytest.fixture
async def manager(tmp_path: Path) -> AsyncIterator[JobManager]:
    """A started job manager on a SQLite file, closed at teardown."""
    async with StateDB(f"sqlite:///{tmp_path}/state.db") as state:
        jobs = JobManager(state)
        await jobs.start()
        yield jobs
        await jobs.close()


def invalid(n: int, tag: str) -> MirrorRequest:
    """A request of `n` entries that cannot parse (each fails at once)."""
    return MirrorRequest(mirrors=[MirrorEntry(src=f"bad ref {tag} {i}", dst="x") for i in range(n)])


async def test_finished_jobs_are_not_kept_in_memory(manager: JobManager) -> None:
    ids = []
    for k in range(40):
        view, _ = await manager.submit(invalid(100, str(k)))
        ids.append(view.id)
        await manager.wait(view.id)
        assert manager.held() == 0  # the finished job was let go
    for job_id in (ids[0], ids[-1]):  # still answered, from the database
        job = await manager.get(job_id)
        assert job is not None
        assert job.state == "failed"
        assert job.progress.done == job.progress.total == 100
        assert len(job.errors) == 100


async def test_a_job_whose_last_write_failed_stays_true(
    manager: JobManager, monkeypatch: pytest.MonkeyPatch
) -> None:
    update_job = manager.state.update_job

    async def fails_when_final(job_id: str, **kwargs: Any) -> None:
        if kwargs["state"] == "failed":
            raise OSError("disk full")
        await update_job(job_id, **kwargs)

    monkeypatch.setattr(manager.state, "update_job", fails_when_final)
    view, _ = await manager.submit(invalid(1, "w"))
    done = await manager.wait(view.id)
    assert done.state == "failed"  # not the "running" the database still says
    assert manager.held() == 1


# --------------------------------------------------------------------------- the policy


def test_tokens_are_compared_in_constant_time(monkeypatch: pytest.MonkeyPatch) -> None:
    compared: list[tuple[bytes, bytes]] = []
    real = hmac.compare_digest

    def recording(a: bytes, b: bytes) -> bool:
        compared.append((a, b))
        return real(a, b)

    monkeypatch.setattr(access.hmac, "compare_digest", recording)
    policy = AccessPolicy.of(tokens=["first-token", TOKEN])
    assert policy.token_ok(TOKEN)
    assert policy.token_ok(f" {TOKEN} ")
    for wrong in ("first", TOKEN[:-1], TOKEN + "x", ""):
        assert not policy.token_ok(wrong), wrong
    # Every token is compared every time, by hmac.compare_digest: no early exit.
    assert len(compared) == 2 * 6
    assert {b for _, b in compared} == {b"first-token", TOKEN.encode()}


HOSTS = [
    # (bind, allowed, Host, ok)
    ("127.0.0.1", (), "127.0.0.1:8080", True),
    ("127.0.0.1", (), "localhost:8080", True),
    ("127.0.0.1", (), "[::1]:8080", True),
    ("127.0.0.1", (), "127.0.0.1:8081", False),
    ("127.0.0.1", (), "127.0.0.1", False),  # port 80
    ("127.0.0.1", (), "evil.example:8080", False),
    ("127.0.0.1", (), "localhost.evil.example:8080", False),
    ("127.0.0.1", (), None, False),
    ("127.0.0.1", ("mirror.lan",), "mirror.lan", True),
    ("127.0.0.1", ("*",), "anything.example", True),
    ("10.0.0.5", (), "10.0.0.5:8080", True),
    ("10.0.0.5", (), "localhost:8080", False),
    ("::1", (), "[::1]:8080", True),
    ("0.0.0.0", (), "mirror.run.app", True),  # every interface: unknown names
    ("0.0.0.0", ("mirror.lan",), "mirror.run.app", False),
    ("0.0.0.0", ("mirror.lan",), "localhost:8080", True),
]


@pytest.mark.parametrize(("bind", "allowed", "host", "ok"), HOSTS)
def test_which_hosts_are_served(
    bind: str, allowed: tuple[str, ...], host: str | None, ok: bool
) -> None:
    policy = AccessPolicy.of(bind=bind, port=8080, allowed_hosts=allowed)
    assert policy.host_ok(host) is ok


ORIGINS = [
    # (Origin, Host, ok)
    (None, "127.0.0.1:8080", True),
    ("http://127.0.0.1:8080", "127.0.0.1:8080", True),
    ("http://localhost:8080", "localhost:8080", True),
    ("http://localhost:8080", "127.0.0.1:8080", False),
    ("http://127.0.0.1:8081", "127.0.0.1:8080", False),
    ("https://mirror.lan", "mirror.lan", True),
    ("https://mirror.lan", "mirror.lan:443", True),
    ("http://evil.example", "127.0.0.1:8080", False),
    ("null", "127.0.0.1:8080", False),
    ("file://", "127.0.0.1:8080", False),
    ("http://proxy.lan", "127.0.0.1:8080", True),  # an allowed name in front
]


@pytest.mark.parametrize(("origin", "host", "ok"), ORIGINS)
def test_which_origins_are_the_services_own(origin: str | None, host: str, ok: bool) -> None:
    policy = AccessPolicy.of(port=8080, allowed_hosts=["proxy.lan"])
    assert policy.origin_ok(origin, host) is ok


def test_host_headers_are_parsed_strictly() -> None:
    assert split_host("Example.COM:81") == ("example.com", 81)
    assert split_host("[::1]:8080") == ("[::1]", 8080)
    assert split_host("[::1]") == ("[::1]", None)
    for bad in ("", ":80", "a:b", "a:", "a:0", "a:70000", "[::1", "a/b", "a@b", "::1"):
        assert split_host(bad) is None, bad
