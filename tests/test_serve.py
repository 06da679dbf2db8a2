"""`ocimirror serve` as a real process against real registries: the Cloud Run mirror
contract byte for byte, jobs, configured mirrors, access control, restart."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from ocimirror.testkit import secrets
from ocimirror.testkit.command import Background
from ocimirror.testkit.images import make_image, make_index
from ocimirror.testkit.polling import wait_for
from ocimirror.testkit.registry import LocalRegistry, free_port
from ocimirror.testkit.seeding import seed
from ocimirror.testkit.skopeo import Skopeo

TOKEN = "s3cret-token-for-tests"


class Answer:
    """One HTTP answer: status, headers and the exact body bytes."""

    def __init__(self, status: int, headers: dict[str, str], body: bytes) -> None:
        self.status = status
        self.headers = headers
        self.body = body

    def json(self) -> Any:
        """The body as JSON."""
        return json.loads(self.body)


class Server(Background):
    """`ocimirror serve` in the background on a free port, its log in a file.

    The test registries are on loopback, which API jobs may not reach by default: unless
    `private` is False the server starts with `--allow-private-networks`.
    """

    def __init__(
        self, workdir: Path, *args: str, env: dict[str, str] | None = None, private: bool = True
    ) -> None:
        self.port = free_port()
        self.state = f"sqlite:///{workdir}/serve.state.db"
        unset = ("OCIMIRROR_API_TOKENS", "OCIMIRROR_ALLOWED_REGISTRIES")
        environ = {k: v for k, v in os.environ.items() if k not in unset}
        environ.update({"PORT": str(self.port), **(env or {})})
        allow = ["--allow-private-networks"] if private else []
        super().__init__(
            ["serve", "--state", self.state, *allow, *args],
            workdir / f"serve-{self.port}.log",
            environ,
        )
        self.wait_ready(lambda: self.call("GET", "/readyz").status == 200, "serve")

    def call(
        self,
        method: str,
        path: str,
        body: bytes | dict[str, Any] | None = None,
        *,
        token: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> Answer:
        """Send one request; any status comes back as an Answer."""
        data = json.dumps(body).encode() if isinstance(body, dict) else body
        req = urllib.request.Request(
            f"http://127.0.0.1:{self.port}{path}", data=data, method=method
        )
        for k, v in (headers or {}).items():
            req.add_header(k, v)
        # API writes are JSON (a browser cannot send that cross-origin unasked).
        if data is not None and "Content-Type" not in (headers or {}):
            req.add_header("Content-Type", "application/json")
        if token:
            req.add_header("Authorization", f"Bearer {token}")
        try:
            with urllib.request.urlopen(req, timeout=120) as resp:
                answer = Answer(resp.status, dict(resp.headers), resp.read())
        except urllib.error.HTTPError as e:
            answer = Answer(e.code, dict(e.headers), e.read())
        secrets.scan(answer.body, f"the answer to {method} {path.split('?')[0]}")
        return answer


@pytest.fixture
def server_factory(tmp_path: Path) -> Iterator[Callable[..., Server]]:
    """Start servers that are stopped at the end of the test."""
    started: list[Server] = []

    def start(*args: str, env: dict[str, str] | None = None, private: bool = True) -> Server:
        server = Server(tmp_path, *args, env=env, private=private)
        started.append(server)
        return server

    yield start
    for s in started:
        s.kill()


def job_done(server: Server, job_id: str, token: str | None = None) -> dict[str, Any]:
    """Poll a job until it is no longer queued or running; return it."""
    answer: dict[str, Any] = {}

    def finished() -> bool:
        nonlocal answer
        answer = server.call("GET", f"/api/v1/jobs/{job_id}", token=token).json()
        return answer["state"] not in ("queued", "running")

    wait_for(finished, f"job {job_id}", timeout=120)
    return answer


# --------------------------------------------------------------------------- Cloud Run contract


def test_cloud_run_contract_success_and_partial_failure(
    registry_pair: tuple[LocalRegistry, LocalRegistry],
    server_factory: Callable[..., Server],
    skopeo: Skopeo,
) -> None:
    src, dst = registry_pair
    index = make_index(["linux/amd64", "linux/arm64"], layer_size=300, seed="cr")
    asyncio.run(seed(src, "lib/app", [("1", index)]))
    server = server_factory()
    ok = server.call(
        "POST", "/", {"mirrors": [{"src": f"{src.host}/lib/app:1", "dst": f"{dst.host}/m/app:1"}]}
    )
    assert ok.status == 200
    assert ok.body == b'{"ok":true}\n'
    assert ok.headers["Content-Type"].startswith("application/json")
    # All platforms, digest unchanged: the index is the same bytes.
    assert skopeo.manifest(dst.ref("m/app:1"), registry=dst) == index.manifest.raw

    partial = server.call(
        "POST",
        "/",
        {
            "mirrors": [
                {"src": f"{src.host}/lib/app:1", "dst": f"{dst.host}/m/again:1"},
                {"src": f"{src.host}/lib/none:1", "dst": f"{dst.host}/m/none:1"},
                {"src": "Bad Reference", "dst": f"{dst.host}/m/bad:1"},
            ],
            "parallelism": 2,
        },
    )
    assert partial.status == 200
    doc = partial.json()
    name = f"({src.host}/lib/none:1 to {dst.host}/m/none:1)"
    prefix = f'{{"ok":false,"errors":[{{"index":1,"name":"{name}","error":"'.encode()
    assert partial.body.startswith(prefix), partial.body
    assert partial.body.endswith(b'"}]}\n')
    assert [e["index"] for e in doc["errors"]] == [1, 2]
    assert doc["errors"][1]["name"] == f"(Bad Reference to {dst.host}/m/bad:1)"
    assert "manifest unknown" in doc["errors"][0]["error"].lower()
    assert dst.tags("m/again") == ["1"]
    assert dst.tags("m/none") == []


INVALID = [
    # (body, status, the exact answer of the Cloud Run mirror)
    (b"", 400, b"Request body must not be empty\n"),
    (b"{", 400, b"Request body contains badly-formed JSON\n"),
    (b"{x}", 400, b"Request body contains badly-formed JSON (at position 2)\n"),
    (
        b'{"mirrors": 5}',
        400,
        b'Request body contains an invalid value for the "mirrors" field (at position 13)\n',
    ),
    (
        b'{"mirrors":[{"src":"a","dst":7}]}',
        400,
        b'Request body contains an invalid value for the "mirrors.dst" field (at position 30)\n',
    ),
    (
        b'{"parallelism":"x"}',
        400,
        b'Request body contains an invalid value for the "parallelism" field (at position 18)\n',
    ),
    (b'{"mirrorz":[]}', 400, b'Request body contains unknown field "mirrorz"\n'),
    (
        b'{"mirrors":[' + b'{"src":"a","dst":"b"},' * 50_000 + b'{"src":"a","dst":"b"}]}',
        413,
        b"Request body must not be larger than 1MB\n",
    ),
]


@pytest.mark.parametrize(("body", "status", "answer"), INVALID, ids=range(len(INVALID)))
def test_cloud_run_contract_invalid_input(
    server_factory: Callable[..., Server],
    body: bytes,
    status: int,
    answer: bytes,
) -> None:
    server = server_factory()
    got = server.call("POST", "/", body)
    assert (got.status, got.body) == (status, answer)
    assert got.headers["Content-Type"] == "text/plain; charset=utf-8"


def test_empty_request_is_ok_as_in_the_original(server_factory: Callable[..., Server]) -> None:
    server = server_factory()
    assert server.call("POST", "/", b"{}").body == b'{"ok":true}\n'
    assert server.call("POST", "/", b'{"mirrors":[]} trailing').body == b'{"ok":true}\n'


# --------------------------------------------------------------------------- jobs


def test_jobs_end_to_end(
    registry_pair: tuple[LocalRegistry, LocalRegistry], server_factory: Callable[..., Server]
) -> None:
    src, dst = registry_pair
    images = {t: make_image(layer_size=400, seed=f"j{t}") for t in ("1.0", "1.1", "2.0-rc")}
    asyncio.run(seed(src, "lib/app", list(images.items())))
    server = server_factory()
    body = {
        "mirrors": [{"src": f"{src.host}/lib/app", "dst": f"{dst.host}/jobs/app"}],
        "all_tags": True,
        "exclude": [".*-rc"],
    }
    accepted = server.call("POST", "/api/v1/jobs", body)
    assert accepted.status == 202
    job_id = accepted.json()["id"]
    assert accepted.headers["Location"] == f"/api/v1/jobs/{job_id}"
    job = job_done(server, job_id)
    assert job["state"] == "succeeded", job
    assert job["progress"]["done"] == job["progress"]["total"] == 1
    assert job["progress"]["bytes"] > 0
    (entry,) = job["entries"]
    assert entry["status"] == "copied"
    assert entry["images"] == 2
    assert dst.tags("jobs/app") == ["1.0", "1.1"]
    listed = server.call("GET", "/api/v1/jobs").json()["jobs"]
    assert [j["id"] for j in listed][:1] == [job_id]
    assert server.call("GET", "/api/v1/jobs/nope").status == 404
    # A malformed body is a 400 naming the field, and starts nothing.
    bad = server.call("POST", "/api/v1/jobs", {"mirrors": [{"src": "a"}]})
    assert bad.status == 400
    assert bad.json()["detail"][0]["field"] == "mirrors[0].dst"
    assert len(server.call("GET", "/api/v1/jobs").json()["jobs"]) == 1


def test_the_same_pair_requested_five_times_at_once_copies_once(
    registry_pair: tuple[LocalRegistry, LocalRegistry], server_factory: Callable[..., Server]
) -> None:
    src, dst = registry_pair
    image = make_image(layers=3, layer_size=4 << 20, seed="5x")
    asyncio.run(seed(src, "lib/big", [("1", image)]))
    server = server_factory()
    body = {"mirrors": [{"src": f"{src.host}/lib/big:1", "dst": f"{dst.host}/five/big:1"}]}
    mark = dst.mark()
    with ThreadPoolExecutor(5) as pool:
        answers = list(pool.map(lambda _: server.call("POST", "/", body), range(5)))
    assert [a.body for a in answers] == [b'{"ok":true}\n'] * 5
    puts = [r for r in dst.requests(since=mark) if r.method == "PUT" and r.kind == "manifest"]
    assert len(puts) == 1
    uploads = [r for r in dst.requests(since=mark) if r.method == "POST"]
    assert len(uploads) == len(list(image.all_blobs()))  # every blob uploaded once
    # Through the job API: a second request while the first runs joins its job.
    body = {"mirrors": [{"src": f"{src.host}/lib/big:1", "dst": f"{dst.host}/join/big:1"}]}
    with ThreadPoolExecutor(2) as pool:
        jobs = list(pool.map(lambda _: server.call("POST", "/api/v1/jobs", body).json(), range(2)))
    assert jobs[0]["id"] == jobs[1]["id"]
    assert sorted(j["joined"] for j in jobs) == [False, True]
    assert job_done(server, jobs[0]["id"])["state"] == "succeeded"


def test_a_hundred_concurrent_posts_are_all_answered(
    registry_pair: tuple[LocalRegistry, LocalRegistry], server_factory: Callable[..., Server]
) -> None:
    """Issue 18's load: 100 POST / at once, mirroring small images into 20 repositories
    (five requests each, arriving together: some join a copy in flight, some find it
    done): every one is answered `{"ok":true}`, every tag is there, and the service's
    peak RSS is printed and bounded."""
    src, dst = registry_pair
    images = [
        (str(i), make_image(layers=1, layer_size=4 << 10, seed=f"load-{i}")) for i in range(10)
    ]
    asyncio.run(seed(src, "lib/load", images))
    server = server_factory()
    bodies = [
        {"mirrors": [{"src": f"{src.host}/lib/load:{i % 10}", "dst": f"{dst.host}/n{i}/app:1"}]}
        for i in list(range(20)) * 5
    ]
    with ThreadPoolExecutor(100) as pool:
        answers = list(pool.map(lambda body: server.call("POST", "/", body), bodies))
    failed = [(i, a.status, a.body[:200]) for i, a in enumerate(answers) if a.status != 200]
    assert not failed, failed
    assert {a.body for a in answers} == {b'{"ok":true}\n'}
    assert all(dst.tags(f"n{i}/app") == ["1"] for i in range(20))
    peak = 0
    for line in Path(f"/proc/{server.proc.pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            peak = int(line.split()[1]) << 10
    print(f"\nserve, 100 concurrent POSTs: peak RSS {peak >> 20} MiB")
    assert 0 < peak < 300 << 20


# --------------------------------------------------------------------------- access


def test_tokens_guard_every_route_but_health(
    server_factory: Callable[..., Server],
) -> None:
    server = server_factory("--host", "127.0.0.1", env={"OCIMIRROR_API_TOKENS": TOKEN})
    guarded = [
        ("POST", "/", {"mirrors": []}),
        ("POST", "/api/v1/jobs", {"mirrors": []}),
        ("GET", "/api/v1/jobs", None),
        ("GET", "/api/v1/jobs/x", None),
        ("DELETE", "/api/v1/jobs/x", None),
        ("POST", "/api/v1/mirrors/x/sync", None),
        # The dashboard's data are the jobs' data: guarded alike (issue 11).
        ("GET", "/api/v1/dashboard", None),
        ("GET", "/api/v1/mirrors", None),
        ("GET", "/", None),
        ("GET", "/metrics", None),
        ("GET", "/openapi.json", None),
    ]
    for method, path, body in guarded:
        for token in (None, "wrong"):
            answer = server.call(method, path, body, token=token)
            assert answer.status == 401, (method, path, token)
            assert answer.headers["WWW-Authenticate"].startswith("Bearer")
    assert server.call("POST", "/", {"mirrors": []}, token=TOKEN).body == b'{"ok":true}\n'
    assert server.call("GET", "/api/v1/jobs", token=TOKEN).status == 200
    for path in ("/healthz", "/readyz"):
        assert server.call("GET", path).status == 200, path
    for path in ("/metrics", "/openapi.json", "/", "/api/v1/dashboard"):
        assert server.call("GET", path, token=TOKEN).status == 200, path
    assert TOKEN not in server.text()


def listening_addresses(port: int) -> set[str]:
    """The IPv4 addresses a TCP socket listens on at `port` (from /proc/net/tcp)."""
    found = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        local, state = line.split()[1], line.split()[3]
        address, port_hex = local.split(":")
        if state == "0A" and int(port_hex, 16) == port:  # 0A: LISTEN
            found.add(socket.inet_ntoa(bytes.fromhex(address)[::-1]))
    return found


def test_without_tokens_it_listens_on_loopback_only(
    server_factory: Callable[..., Server],
) -> None:
    server = server_factory("--host", "0.0.0.0")
    assert "no API token configured: listening on 127.0.0.1 only" in server.text()
    assert listening_addresses(server.port) == {"127.0.0.1"}
    opened = server_factory("--host", "0.0.0.0", "--allow-unauthenticated")
    assert listening_addresses(opened.port) == {"0.0.0.0"}


# --------------------------------------------------------------------------- restart, mirrors


def test_a_job_running_at_shutdown_is_marked_interrupted(
    registry_pair: tuple[LocalRegistry, LocalRegistry],
    server_factory: Callable[..., Server],
) -> None:
    src, dst = registry_pair
    asyncio.run(seed(src, "lib/huge", [("1", make_image(layers=6, layer_size=48 << 20, seed="h"))]))
    server = server_factory()
    body = {"mirrors": [{"src": f"{src.host}/lib/huge:1", "dst": f"{dst.host}/r/huge:1"}]}
    job_id = server.call("POST", "/api/v1/jobs", body).json()["id"]

    def copying() -> bool:
        job = server.call("GET", f"/api/v1/jobs/{job_id}").json()
        return bool(job["progress"]["bytes"] > 0)

    wait_for(copying, "the copy to be under way")
    assert server.stop() == 0
    assert dst.tags("r/huge") == []  # nothing half-written under the tag
    again = server_factory()
    job = again.call("GET", f"/api/v1/jobs/{job_id}").json()
    assert job["state"] == "interrupted"


def test_configured_mirrors_run_on_demand_and_report(
    registry_pair: tuple[LocalRegistry, LocalRegistry],
    server_factory: Callable[..., Server],
    tmp_path: Path,
) -> None:
    src, dst = registry_pair
    asyncio.run(seed(src, "lib/cfg", [("1", make_image(layer_size=300, seed="cfg"))]))
    config = tmp_path / "mirror.yaml"
    config.write_text(
        "mirrors:\n"
        "  - name: cfg\n"
        f"    source: {src.host}/lib/cfg\n"
        f"    targets: [{dst.host}/cfg/app]\n"
        "    schedule: 0\n"
    )
    server = server_factory("-c", str(config))
    (mirror,) = server.call("GET", "/api/v1/mirrors").json()["mirrors"]
    assert mirror["name"] == "cfg"
    assert mirror["last_run"] is None
    assert mirror["next_run"] is None  # on demand
    assert server.call("POST", "/api/v1/mirrors/cfg/sync", {}).status == 202
    # Asked for is running at once: a poller never mistakes the previous run for this one.
    (asked,) = server.call("GET", "/api/v1/mirrors").json()["mirrors"]
    assert asked["running"] is True or asked["last_status"] == "ok"
    assert server.call("POST", "/api/v1/mirrors/nope/sync", {}).status == 404
    wait_for(lambda: dst.tags("cfg/app") == ["1"], "the on-demand run")

    def reported() -> bool:
        (m,) = server.call("GET", "/api/v1/mirrors").json()["mirrors"]
        return bool(m["last_status"] == "ok")

    wait_for(reported, "the run in the mirror list")
    metrics = server.call("GET", "/metrics").body.decode()
    assert 'ocimirror_runs_total{mirror="cfg",status="ok"} 1.0' in metrics
    page = server.call("GET", "/")
    assert page.status == 200
    assert b"cfg" in page.body


# --------------------------------------------------------------------------- dashboard, live


async def test_the_dashboard_of_a_real_service_in_chromium(
    registry_pair: tuple[LocalRegistry, LocalRegistry],
    server_factory: Callable[..., Server],
    tmp_path: Path,
) -> None:
    """A configured mirror that ran and a job in flight, as Chromium shows them."""
    from playwright.async_api import async_playwright, expect

    from ocimirror.testkit.browser import launch_chromium

    src, dst = registry_pair
    await seed(src, "lib/web", [("1", make_image(layer_size=300, seed="web"))])
    await seed(src, "lib/slow", [("1", make_image(layers=4, layer_size=24 << 20, seed="slow"))])
    config = tmp_path / "mirror.yaml"
    config.write_text(
        "mirrors:\n"
        "  - name: web\n"
        f"    source: {src.host}/lib/web\n"
        f"    targets: [{dst.host}/live/web]\n"
        "    schedule: 0\n"
    )
    server = await asyncio.to_thread(server_factory, "-c", str(config))
    assert (
        await asyncio.to_thread(server.call, "POST", "/api/v1/mirrors/web/sync", {})
    ).status == 202
    await asyncio.to_thread(wait_for, lambda: dst.tags("live/web") == ["1"], "the mirror run")
    body = {"mirrors": [{"src": f"{src.host}/lib/slow:1", "dst": f"{dst.host}/live/slow:1"}]}
    job_id = (await asyncio.to_thread(server.call, "POST", "/api/v1/jobs", body)).json()["id"]
    ARTIFACTS.mkdir(exist_ok=True)
    async with async_playwright() as pw:
        context = await launch_chromium(pw, tmp_path / "profile")
        try:
            page = context.pages[0] if context.pages else await context.new_page()
            errors: list[str] = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            await page.goto(f"http://127.0.0.1:{server.port}/")
            card = page.locator('article[data-mirror="web"]')
            await expect(card).to_have_count(1)
            await expect(card.locator("[data-field=status]")).to_have_text("ok", timeout=10_000)
            await expect(card.locator("svg rect.bar")).to_have_count(1)  # the one run
            await expect(page.get_by_text(job_id[:8]).first).to_be_visible()
            await page.screenshot(path=str(ARTIFACTS / "dashboard-live.png"), full_page=True)
            assert errors == []
        finally:
            await context.close()
    job = await asyncio.to_thread(job_done, server, job_id)
    assert job["state"] == "succeeded"


ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts"


def test_delete_cancels_a_running_job_and_leaves_no_tag(
    registry_pair: tuple[LocalRegistry, LocalRegistry],
    server_factory: Callable[..., Server],
) -> None:
    src, dst = registry_pair
    asyncio.run(seed(src, "lib/long", [("1", make_image(layers=6, layer_size=48 << 20, seed="l"))]))
    server = server_factory()
    body = {"mirrors": [{"src": f"{src.host}/lib/long:1", "dst": f"{dst.host}/c/long:1"}]}
    job_id = server.call("POST", "/api/v1/jobs", body).json()["id"]
    cancelled = server.call("DELETE", f"/api/v1/jobs/{job_id}")
    assert cancelled.status == 202
    assert cancelled.json()["state"] == "cancelled"
    assert server.call("DELETE", f"/api/v1/jobs/{job_id}").status == 409  # not running now
    assert server.call("DELETE", "/api/v1/jobs/nope").status == 404
    assert job_done(server, job_id)["state"] == "cancelled"
    assert dst.tags("c/long") == []
