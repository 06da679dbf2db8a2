"""`ocimirror proxy` probed as an attacker would (issue 11): its error answers name no
upstream host, prefix or URL; slow readers of big blobs do not starve manifests."""

from __future__ import annotations

import asyncio
import base64
import socket
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from ocimirror.testkit.images import make_image
from ocimirror.testkit.proxy import ProxyProcess
from ocimirror.testkit.registry import LocalRegistry
from ocimirror.testkit.seeding import seed

USER, PASSWORD = "alice", "wonderland"
AUTH_HEADER = "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
SECRET = make_image(seed="the other team's secret")
APP = make_image(seed="team app")
SECRET_BLOB = SECRET.blobs[-1].digest
F = "%2F"


class Hostile:
    """A Basic-auth registry holding team/app:1 and other/secret:t0000, and a proxy with
    REPO_PREFIX=team and the registry's credentials in AUTH_HEADER."""

    def __init__(self, registry: LocalRegistry, proxy: ProxyProcess) -> None:
        self.registry = registry
        self.proxy = proxy


@pytest.fixture(scope="module")
def hostile(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Hostile]:
    """One registry and proxy for every hostile path (none of them changes anything)."""
    registry = LocalRegistry(
        tmp_path_factory.mktemp("hostile"), auth="htpasswd", users={USER: PASSWORD}
    ).start()
    proxy: ProxyProcess | None = None
    try:
        asyncio.run(seed(registry, "team/app", [("1", APP)]))
        asyncio.run(seed(registry, "other/secret", [("t0000", SECRET)]))
        env = {"REGISTRY_HOST": registry.host, "REPO_PREFIX": "team", "AUTH_HEADER": AUTH_HEADER}
        proxy = ProxyProcess(tmp_path_factory.mktemp("hostile-proxy"), env=env)
        yield Hostile(registry, proxy)
    finally:
        if proxy is not None:
            proxy.stop()
        registry.stop()


def assert_generic_error(body: bytes, registry: LocalRegistry) -> None:
    """An error answer naming nothing of the upstream: no host, prefix, path or secret."""
    text = body.decode(errors="replace")
    for leak in (registry.host, str(registry.port), "team", "other", "secret", "//", "alice"):
        assert leak not in text, f"{leak!r} in {text!r}"


def test_upstream_errors_reach_clients_generic(hostile: Hostile) -> None:
    """A missing tag or repository: the upstream's code, the proxy's short message; no
    upstream name (`team/...`), host or text, and no doubled slash."""
    for path in ("/v2/app/manifests/nope", "/v2/nothing/tags/list", f"/v2/app/blobs/{SECRET_BLOB}"):
        answer = hostile.proxy.call("GET", path)
        assert answer.status == 404, (path, answer.body)
        assert answer.json()["errors"][0]["code"] in (
            "MANIFEST_UNKNOWN",
            "NAME_UNKNOWN",
            "BLOB_UNKNOWN",
        )
        assert_generic_error(answer.body, hostile.registry)


def test_refused_credentials_answer_names_nothing(
    htpasswd_registry: LocalRegistry, start_proxy: Callable[..., ProxyProcess]
) -> None:
    wrong = "Basic " + base64.b64encode(b"alice:nope").decode()
    proxy = start_proxy(
        env={"REGISTRY_HOST": htpasswd_registry.host, "REPO_PREFIX": "team", "AUTH_HEADER": wrong}
    )
    answer = proxy.call("GET", "/v2/app/manifests/1")
    assert answer.status == 403
    assert answer.json() == {
        "errors": [{"code": "DENIED", "message": "requested access to the resource is denied"}]
    }


def test_unreachable_upstream_answer_names_nothing(
    start_proxy: Callable[..., ProxyProcess],
) -> None:
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proxy = start_proxy(env={"REGISTRY_HOST": f"127.0.0.1:{port}", "REPO_PREFIX": "team"})
    answer = proxy.call("GET", "/v2/app/manifests/1")
    assert answer.status == 502
    assert str(port) not in answer.body.decode()
    assert "team" not in answer.body.decode()


# -- slow readers ----------------------------------------------------------------------------


class EndlessBlobs:
    """A stand-in upstream: manifests answer at once, every blob is an endless body (sent
    as fast as the reader takes it, which for a client that reads nothing is never)."""

    MANIFEST = b'{"schemaVersion":2}'

    def __init__(self) -> None:
        self.done = threading.Event()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                if "/blobs/" in self.path:
                    self.send_response(200)
                    self.send_header("Content-Length", str(1 << 40))
                    self.end_headers()
                    chunk = b"\0" * 65536
                    try:
                        while not outer.done.is_set():
                            self.wfile.write(chunk)
                    except OSError:
                        pass
                    self.close_connection = True
                    return
                body = b"{}" if self.path == "/v2/" else outer.MANIFEST
                self.send_response(200)
                self.send_header("Content-Type", "application/vnd.oci.image.manifest.v1+json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def host(self) -> str:
        """`127.0.0.1:PORT`."""
        return f"127.0.0.1:{self.server.server_address[1]}"

    def stop(self) -> None:
        """Let the endless bodies end and stop serving."""
        self.done.set()
        self.server.shutdown()
        self.server.server_close()


def stalled_reader(port: int, path: str) -> socket.socket:
    """Ask for `path`, read the answer's headers, then read nothing more (the socket is
    kept open by the caller)."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.settimeout(60)  # a hang guard only
    sock.connect(("127.0.0.1", port))
    sock.sendall(f"GET {path} HTTP/1.1\r\nHost: proxy\r\n\r\n".encode())
    got = b""
    while b"\r\n\r\n" not in got:
        data = sock.recv(1024)
        assert data, "the proxy closed the connection"
        got += data
    assert got.startswith(b"HTTP/1.1 200"), got[:200]
    return sock


def test_slow_blob_readers_do_not_starve_manifests(
    start_proxy: Callable[..., ProxyProcess], tmp_path: Path
) -> None:
    """32 clients that stop reading an endless blob each hold an upstream connection (as
    many as a pool holds): manifests and pings are still answered."""
    upstream = EndlessBlobs()
    readers: list[socket.socket] = []
    try:
        proxy = start_proxy(env={"REGISTRY_HOST": upstream.host, "REPO_PREFIX": "team"})
        digest = "sha256:" + "ab" * 32
        # Each reader has its headers, so each holds an upstream connection from here on.
        readers = [stalled_reader(proxy.port, f"/v2/app/blobs/{digest}") for _ in range(32)]
        answer = proxy.call("GET", "/v2/app/manifests/latest")  # 30 s timeout: a hang guard
        assert answer.status == 200
        assert answer.body == EndlessBlobs.MANIFEST
        assert proxy.call("GET", "/v2/").status == 200
    finally:
        for sock in readers:
            sock.close()
        upstream.stop()
