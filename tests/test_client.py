"""RegistryClient against real registries on loopback, and fronts that misbehave on purpose.

The anonymous, htpasswd, token and TLS registries are the real `docker-registry` of the
fixtures. Behaviours a well-behaved registry never shows (5xx, 429, rate-limit headers,
redirects to a storage host, refused monolithic uploads, paginated tag lists) come from
`Front`: a small aiohttp server on 127.0.0.1 that forwards every request to a real
registry, records what it saw, and misbehaves where a test tells it to.
"""

from __future__ import annotations

import asyncio
import gzip
import json
import socket
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import stamina
import stamina.instrumentation
from aiohttp import web

import ocimirror.client as client_module
import ocimirror.uploads as uploads_module
from ocimirror import digest as digests
from ocimirror.auth.credentials import Credentials
from ocimirror.client import HostOptions, RegistryClient
from ocimirror.errors import (
    AuthError,
    DeleteRefused,
    DigestMismatch,
    NotFound,
    RateLimited,
    RegistryError,
    Unreachable,
    UploadRefused,
    is_retryable,
)
from ocimirror.ratelimit import Pacer
from ocimirror.stores.registry import RegistryStore
from ocimirror.testkit.faults import FaultInjector
from ocimirror.testkit.front import Front, Intercept, kind_of, registry_error, serve
from ocimirror.testkit.images import Blob, SampleImage, make_image, make_index, random_layer
from ocimirror.testkit.registry import LocalRegistry
from ocimirror.testkit.seeding import connect, seed

ALICE = Credentials(username="alice", password="wonderland")
BOB = Credentials(username="bob", password="builder")

# -- helpers ------------------------------------------------------------------------------


async def chunks_of(data: bytes, size: int = 64 * 1024) -> AsyncIterator[bytes]:
    """Yield `data` in pieces, as a blob source would."""
    for off in range(0, len(data), size):
        yield data[off : off + size]


async def push_blob(client: RegistryClient, repo: str, blob: Blob) -> None:
    """Upload one blob with a fresh upload session (monolithic unless the client is chunked)."""
    location = await client.start_upload(repo)
    assert location is not None
    await client.finish_upload(repo, location, blob.descriptor, chunks_of(blob.data))


async def push_image(client: RegistryClient, repo: str, image: SampleImage, tag: str) -> None:
    """Upload an image's blobs, child manifests by digest, then the top manifest by tag."""
    for blob in image.all_blobs():
        await push_blob(client, repo, blob)
    for m in image.all_manifests()[:-1]:
        await client.put_manifest(repo, m.digest, m)
    await client.put_manifest(repo, tag, image.manifest)


async def read_blob(client: RegistryClient, repo: str, digest: str) -> bytes:
    """Return a blob's bytes through `open_blob`."""
    out = bytearray()
    async with client.open_blob(repo, digest) as chunks:
        async for chunk in chunks:
            out += chunk
    return bytes(out)


def fail_first(
    method: str, kind: str, times: int, status: int, headers: dict[str, str] | None = None
) -> Intercept:
    """Answer the first `times` requests of `method` and `kind` with `status`."""
    remaining = times

    async def intercept(front: Front, request: web.Request, body: bytes) -> web.Response | None:
        nonlocal remaining
        if remaining > 0 and request.method == method and kind_of(request) == kind:
            remaining -= 1
            code = "TOOMANYREQUESTS" if status == 429 else "UNAVAILABLE"
            return registry_error(status, code, headers)
        return None

    return intercept


@pytest.fixture
def no_retry_waits() -> Iterator[None]:
    """stamina's test mode: no waits between attempts, the client's own attempt count."""
    with stamina.set_testing(True, attempts=100, cap=True):
        yield


@pytest.fixture
def retry_waits() -> Iterator[list[float]]:
    """The waits stamina schedules before each retry, in order."""
    waits: list[float] = []
    saved = stamina.instrumentation.get_on_retry_hooks()

    def record(details: stamina.instrumentation.RetryDetails) -> None:
        waits.append(details.wait_for)

    stamina.instrumentation.set_on_retry_hooks([record])
    try:
        yield waits
    finally:
        stamina.instrumentation.set_on_retry_hooks(saved)


# -- 1. an anonymous registry -------------------------------------------------------------


async def test_anonymous_round_trip(registry: LocalRegistry) -> None:
    image = make_image(layers=2, layer_size=5000, seed="anon")
    await seed(registry, "lib/app", [("1", image)])
    mark = registry.mark()
    async with connect(registry.host) as client:
        assert client.base == f"http://{registry.host}"

        desc = await client.head_manifest("lib/app", "1")
        assert desc is not None
        assert desc.digest == image.digest
        assert desc.media_type == image.manifest.media_type
        assert desc.size == len(image.manifest.raw)
        assert await client.head_manifest("lib/app", "missing") is None

        by_tag = await client.get_manifest("lib/app", "1")
        assert by_tag.raw == image.manifest.raw
        assert by_tag.digest == image.digest
        by_digest = await client.get_manifest("lib/app", image.digest)
        assert by_digest.raw == image.manifest.raw
        with pytest.raises(NotFound):
            await client.get_manifest("lib/app", "missing")

        for blob in image.all_blobs():
            assert await client.blob_size("lib/app", blob.digest) == blob.size
            assert await read_blob(client, "lib/app", blob.digest) == blob.data
        absent = digests.of(b"never pushed")
        assert await client.blob_size("lib/app", absent) is None
        with pytest.raises(NotFound):
            await read_blob(client, "lib/app", absent)

        # Push: a new blob (monolithic), an index by digest and tag, a second tag.
        index = make_index(["linux/amd64", "linux/arm64/v8"], layer_size=300, seed="anon-idx")
        await push_image(client, "lib/multi", index, "latest")
        await client.put_manifest("lib/app", "2", by_tag)
        assert sorted(await client.list_tags("lib/app")) == ["1", "2"]
        assert await client.list_tags("lib/multi") == ["latest"]
        got = await client.get_manifest("lib/multi", "latest")
        assert got.raw == index.manifest.raw
        for blob in index.all_blobs():
            assert await read_blob(client, "lib/multi", blob.digest) == blob.data
        assert client.base == f"http://{registry.host}"
        assert not client.chunked_uploads

    assert registry.tags("lib/multi") == ["latest"]
    # No PATCH: a registry that takes monolithic uploads gets one PUT per blob.
    assert registry.count("PATCH", since=mark) == 0
    assert registry.count("PUT", "upload", status=201, since=mark) == len(index.all_blobs())


async def test_get_by_digest_verifies_the_bytes(registry: LocalRegistry) -> None:
    """A registry that serves other bytes for a digest is caught, not believed."""
    image = make_image(layer_size=100, seed="verify")
    await seed(registry, "app", [("1", image)])
    other = make_image(layer_size=100, seed="other").manifest.raw

    async def swap(front: Front, request: web.Request, body: bytes) -> web.Response | None:
        if request.method == "GET" and kind_of(request) == "manifest":
            resp = await front.forward(request, body)
            return web.Response(
                status=resp.status, body=other, headers={"Content-Type": resp.content_type}
            )
        return None

    async with Front(registry, swap).running() as front, connect(front.host, attempts=2) as client:
        with pytest.raises(DigestMismatch) as caught:
            await client.get_manifest("app", image.digest)
        assert caught.value.expected == image.digest
        assert caught.value.actual == digests.of(other)
        # Damage in transit is transient: tried again, within the bounded attempts.
        assert len(front.of("GET", "manifest")) == 2
        # By tag without a Docker-Content-Digest there is nothing to check against.
        assert (await client.get_manifest("app", "1")).raw == other
    assert len(front.of("GET", "manifest")) == 3


async def test_get_by_tag_checks_the_digest_header(registry: LocalRegistry) -> None:
    """Bytes that disagree with the registry's Docker-Content-Digest were damaged on the
    way: the GET is tried again and the good bytes are taken."""
    image = make_image(layer_size=100, seed="header")
    await seed(registry, "app", [("1", image)])
    damaged = 0

    async def flip_once(front: Front, request: web.Request, body: bytes) -> web.Response | None:
        nonlocal damaged
        if request.method == "GET" and kind_of(request) == "manifest" and not damaged:
            damaged += 1
            resp = await front.forward(request, body)
            assert isinstance(resp.body, bytes)
            bad = bytearray(resp.body)
            bad[len(bad) // 2] ^= 0x01
            return web.Response(status=resp.status, body=bytes(bad), headers=resp.headers)
        return None

    async with Front(registry, flip_once).running() as front, connect(front.host) as client:
        got = await client.get_manifest("app", "1")
    assert got.digest == image.digest
    assert damaged == 1
    assert len(front.of("GET", "manifest")) == 2


async def test_slow_manifest_is_read_whole(registry: LocalRegistry) -> None:
    """A manifest arriving in small pieces is gathered to the end (only the first piece
    was kept before, and a slow link turned a manifest into broken JSON)."""
    image = make_image(layer_size=100, seed="slow")
    await seed(registry, "app", [("1", image)])
    async with (
        FaultInjector(
            registry.port, fault_rate=1.0, modes=["slow"], slow_piece=64
        ).running() as slow,
        connect(slow.host, attempts=1) as client,
    ):
        got = await client.get_manifest("app", "1")
    assert got.raw == image.manifest.raw
    assert slow.counts["slow"] >= 1


def test_plain_http_only_for_loopback() -> None:
    assert RegistryClient("127.0.0.1:5000").base == "http://127.0.0.1:5000"
    assert RegistryClient("localhost:5000").base == "http://localhost:5000"
    assert RegistryClient("[::1]:5000").base == "http://[::1]:5000"
    assert RegistryClient("registry.example.com").base == "https://registry.example.com"
    assert RegistryClient("10.1.2.3:5000").base == "https://10.1.2.3:5000"
    forced = RegistryClient("registry.example.com", options=HostOptions(plain_http=True))
    assert forced.base == "http://registry.example.com"
    tls = RegistryClient("127.0.0.1:5000", options=HostOptions(plain_http=False))
    assert tls.base == "https://127.0.0.1:5000"


# -- 2. htpasswd (Basic auth) -------------------------------------------------------------


async def test_htpasswd_with_credentials(htpasswd_registry: LocalRegistry) -> None:
    image = make_image(layer_size=2000, seed="basic")
    await seed(htpasswd_registry, "secret/app", [("1", image)])
    async with connect(htpasswd_registry.host, credentials=ALICE) as client:
        assert (await client.get_manifest("secret/app", "1")).raw == image.manifest.raw
        assert await client.list_tags("secret/app") == ["1"]
        blob = image.blobs[-1]
        assert await read_blob(client, "secret/app", blob.digest) == blob.data
        pushed = make_image(layer_size=700, seed="basic-push")
        await push_image(client, "secret/other", pushed, "v1")
        assert (await client.head_manifest("secret/other", "v1")) == pushed.descriptor
        assert "TOKEN" not in client.requests  # Basic auth needs no token service
    assert htpasswd_registry.tags("secret/other") == ["v1"]


async def test_htpasswd_without_credentials(htpasswd_registry: LocalRegistry) -> None:
    await seed(htpasswd_registry, "secret/app", [("1", make_image(layer_size=100))])
    async with connect(htpasswd_registry.host) as client:
        with pytest.raises(AuthError) as caught:
            await client.get_manifest("secret/app", "1")
    err = caught.value
    message = str(err)
    assert f"{htpasswd_registry.host}/secret/app" in message
    assert "401" in message
    assert "unauthorized" in message.lower()
    assert err.status == 401
    assert "UNAUTHORIZED" in err.codes


async def test_htpasswd_wrong_password(htpasswd_registry: LocalRegistry) -> None:
    await seed(htpasswd_registry, "secret/app", [("1", make_image(layer_size=100))])
    secret = "not-the-password-0xC0FFEE"
    creds = Credentials(username="alice", password=secret)
    mark = htpasswd_registry.mark()
    async with connect(htpasswd_registry.host, credentials=creds) as client:
        with pytest.raises(AuthError) as caught:
            await client.get_manifest("secret/app", "1")
        shown = [str(caught.value), repr(caught.value), caught.value.url, repr(client)]
        shown += [repr(client.credentials), str(client.credentials), repr(creds)]
    assert "401" in str(caught.value)
    assert htpasswd_registry.host in str(caught.value)
    for text in shown:
        assert secret not in text
    assert "alice" in repr(creds)
    assert "password=***" in repr(creds)
    # One anonymous try, one with the (wrong) password; an AuthError is not retried.
    assert htpasswd_registry.count("GET", "manifest", since=mark) == 2


# -- 3. token auth ------------------------------------------------------------------------


async def test_token_anonymous_pull_and_one_token(token_registry: LocalRegistry) -> None:
    token_server = token_registry.token_server
    assert token_server is not None
    image = make_image(layers=3, layer_size=1000, seed="token")
    await seed(token_registry, "pub/app", [("1", image)])
    token_server.clear()
    async with connect(token_registry.host) as client:
        # Many concurrent first requests: all are refused, one token is fetched and shared.
        sizes = await asyncio.gather(
            *(client.blob_size("pub/app", b.digest) for b in image.all_blobs() * 4)
        )
        assert sizes == [b.size for b in image.all_blobs() * 4]
        assert (await client.get_manifest("pub/app", "1")).raw == image.manifest.raw
        assert await client.head_manifest("pub/app", "1") == image.descriptor
        assert await client.list_tags("pub/app") == ["1"]
        for blob in image.all_blobs():
            assert await read_blob(client, "pub/app", blob.digest) == blob.data
        assert client.requests["TOKEN"] == 1

        # An anonymous push is refused (the token grants pull only), and not retried.
        with pytest.raises(AuthError) as caught:
            await client.put_manifest("pub/app", "2", image.manifest)
        assert caught.value.status == 401
    pulls = [r for r in token_server.requests if r.scopes == ("repository:pub/app:pull",)]
    assert len(pulls) == 1
    assert pulls[0].username is None
    assert pulls[0].service == token_registry.service


async def test_token_push_with_password(token_registry: LocalRegistry) -> None:
    token_server = token_registry.token_server
    assert token_server is not None
    image = make_image(layers=2, layer_size=1500, seed="bob")
    async with connect(token_registry.host, credentials=BOB) as client:
        await push_image(client, "team/app", image, "v1")
        assert (await client.get_manifest("team/app", "v1")).raw == image.manifest.raw
        assert await client.list_tags("team/app") == ["v1"]
    assert token_registry.tags("team/app") == ["v1"]
    # The push token (pull,push) serves the pulls too: one token for everything.
    assert token_server.tokens_issued(username="bob") == 1
    (req,) = token_server.requests
    assert req.method == "GET"
    assert req.scopes == ("repository:team/app:pull,push",)


async def test_token_identity_token_uses_oauth2_refresh(token_registry: LocalRegistry) -> None:
    token_server = token_registry.token_server
    assert token_server is not None
    form = {
        "grant_type": "password",
        "username": "bob",
        "password": "builder",
        "client_id": "test",
        "access_type": "offline",
        "service": token_registry.service,
    }
    async with (
        aiohttp.ClientSession() as session,
        session.post(token_server.realm, data=form) as resp,
    ):
        assert resp.status == 200
        refresh = (await resp.json())["refresh_token"]
    token_server.clear()

    image = make_image(layer_size=800, seed="identity")
    creds = Credentials(identity_token=refresh)
    assert refresh not in repr(creds)
    async with connect(token_registry.host, credentials=creds) as client:
        await push_image(client, "idt/app", image, "1")
        assert (await client.get_manifest("idt/app", "1")).raw == image.manifest.raw
    assert token_registry.tags("idt/app") == ["1"]
    assert token_server.requests, "no token was fetched"
    for req in token_server.requests:
        assert (req.method, req.grant_type, req.status) == ("POST", "refresh_token", 200)
        assert req.username == "bob"  # the refresh token stands for bob
        assert req.client_id == "ocimirror"
        assert req.service == token_registry.service


# -- 4. TLS -------------------------------------------------------------------------------


async def test_tls_with_ca_file(tls_registry: LocalRegistry, ca_cert: Path) -> None:
    image = make_image(layer_size=900, seed="tls")
    await seed(tls_registry, "tls/app", [("1", image)])
    options = HostOptions(ca_file=str(ca_cert))
    async with connect(tls_registry.host, options=options) as client:
        # Loopback starts on plain HTTP and moves to HTTPS when the server speaks TLS.
        assert client.base.startswith("http://")
        assert (await client.get_manifest("tls/app", "1")).raw == image.manifest.raw
        assert client.base == f"https://{tls_registry.host}"
        assert await client.list_tags("tls/app") == ["1"]
        await push_image(client, "tls/other", image, "2")
    assert tls_registry.tags("tls/other") == ["2"]


async def test_tls_without_the_ca_fails_on_verification(tls_registry: LocalRegistry) -> None:
    await seed(tls_registry, "tls/app", [("1", make_image(layer_size=100))])
    async with connect(tls_registry.host) as client:
        with pytest.raises(Unreachable) as caught:
            await client.head_manifest("tls/app", "1")
        sent = client.requests["HEAD"]
    assert isinstance(caught.value.__cause__, aiohttp.ClientConnectorCertificateError)
    assert str(caught.value).startswith(f"{tls_registry.host}: cannot reach the registry: ")
    assert "certificate verify failed" in str(caught.value).lower()
    # A certificate that does not verify will not verify on a retry: fail at once.
    assert sent == 2  # the plain HTTP probe, then HTTPS


async def test_a_name_that_does_not_resolve_fails_at_once() -> None:
    async with connect("no-such-registry.invalid") as client:  # RFC 2606: never resolves
        with pytest.raises(Unreachable) as caught:
            await client.head_manifest("app", "1")
        sent = client.requests["HEAD"]
    cause = caught.value.__cause__
    assert isinstance(cause, aiohttp.ClientConnectorDNSError)
    assert str(caught.value).startswith("no-such-registry.invalid: cannot reach the registry: ")
    assert sent == 1  # "no such name" is an answer, not a failure to retry
    # A resolver that failed (EAI_AGAIN) is retried like any other connection failure.
    again = type(cause)(cause._conn_key, socket.gaierror(socket.EAI_AGAIN, "Try again"))
    assert is_retryable(again)
    assert not is_retryable(cause)


async def test_tls_verify_false(tls_registry: LocalRegistry) -> None:
    image = make_image(layer_size=100, seed="insecure")
    await seed(tls_registry, "tls/app", [("1", image)])
    async with connect(tls_registry.host, options=HostOptions(tls_verify=False)) as client:
        assert (await client.get_manifest("tls/app", "1")).raw == image.manifest.raw
        assert client.base.startswith("https://")


# -- 5. retries ---------------------------------------------------------------------------


@pytest.mark.usefixtures("no_retry_waits")
async def test_503_twice_then_ok(registry: LocalRegistry) -> None:
    image = make_image(layer_size=100, seed="503")
    await seed(registry, "app", [("1", image)])
    intercept = fail_first("GET", "manifest", 2, 503)
    async with Front(registry, intercept).running() as front, connect(front.host) as client:
        assert (await client.get_manifest("app", "1")).raw == image.manifest.raw
    assert [s.status for s in front.of("GET", "manifest")] == [503, 503, 200]


@pytest.mark.usefixtures("no_retry_waits")
async def test_503_on_other_calls_is_retried(registry: LocalRegistry) -> None:
    image = make_image(layer_size=100, seed="503b")
    await seed(registry, "app", [("1", image)])
    blob = image.blobs[0]

    async def flaky(front: Front, request: web.Request, body: bytes) -> web.Response | None:
        # Every first request of a kind fails.
        if len([s for s in front.seen if s.kind == kind_of(request)]) == 1:
            return registry_error(503, "UNAVAILABLE")
        return None

    async with Front(registry, flaky).running() as front, connect(front.host) as client:
        assert await client.head_manifest("app", "1") == image.descriptor
        assert await client.blob_size("app", blob.digest) == blob.size
        assert await client.list_tags("app") == ["1"]
        await client.put_manifest("app", "2", image.manifest)
    for kind in ("manifest", "blob", "tags"):
        assert [s.status for s in front.of(kind=kind)][:2] == [503, 200]
    assert registry.tags("app") == ["1", "2"]


async def test_a_refused_delete_is_final(registry: LocalRegistry, retry_waits: list[float]) -> None:
    """distribution answers a DELETE by tag `400 DIGEST_INVALID` (a code that on an upload
    means damaged bytes, retried): one DELETE, no retry, a clear error; by digest, done.
    Every tag a purge removed cost five DELETEs and about 4 s of waits before."""
    image = make_image(layer_size=100, seed="delete")
    await seed(registry, "app", [("1", image)])
    async with connect(registry.host) as client:
        with pytest.raises(DeleteRefused) as refused:
            await client.delete_manifest("app", "1")
        assert (refused.value.status, refused.value.codes) == (400, ("DIGEST_INVALID",))
        assert client.requests["DELETE"] == 1
        assert retry_waits == []
        assert await client.delete_manifest("app", image.digest) is True
        assert await client.head_manifest("app", "1") is None


async def test_429_waits_for_retry_after(registry: LocalRegistry, retry_waits: list[float]) -> None:
    image = make_image(layer_size=100, seed="429")
    await seed(registry, "app", [("1", image)])
    intercept = fail_first("GET", "manifest", 1, 429, {"Retry-After": "1"})
    async with Front(registry, intercept).running() as front, connect(front.host) as client:
        started = time.monotonic()
        assert (await client.get_manifest("app", "1")).raw == image.manifest.raw
        elapsed = time.monotonic() - started
        assert client.statuses[429] == 1
        assert client.statuses[200] >= 1
    assert [s.status for s in front.of("GET", "manifest")] == [429, 200]
    assert retry_waits == [1.0]  # exactly what the registry asked, no backoff or jitter
    assert elapsed >= 0.9


async def test_429_retry_after_0_backs_off(
    registry: LocalRegistry, retry_waits: list[float]
) -> None:
    """`Retry-After: 0` is no reason to go again at once: the retries back off (growing,
    jittered), as they do after a 429 without the header, and the host's limiter holds
    its starts meanwhile (docs/reliability.md: a storm of them met every retry at once)."""
    image = make_image(layer_size=100, seed="429-zero")
    await seed(registry, "app", [("1", image)])
    intercept = fail_first("GET", "manifest", 2, 429, {"Retry-After": "0"})
    async with Front(registry, intercept).running() as front, connect(front.host) as client:
        assert (await client.get_manifest("app", "1")).raw == image.manifest.raw
        assert client.limiter.throttled == 2  # both fed the host's back-off
        assert client.limiter.policy is not None
        # Each 429 naming no wait held the host's starts (a back-off round); whether the
        # 200 then reset the round count depends on stamina's jittered wait (past the
        # policy's one-second window a rate is learnt, and an accepted answer resets it),
        # so the hold is what is checked here; tests/test_aimd.py counts the rounds.
        assert client.limiter.policy.hold_until > float("-inf")
    assert [s.status for s in front.of("GET", "manifest")] == [429, 429, 200]
    assert len(retry_waits) == 2
    assert all(w > 0 for w in retry_waits), retry_waits


@pytest.mark.usefixtures("no_retry_waits")
@pytest.mark.parametrize(("status", "error"), [(429, RateLimited), (503, RegistryError)])
async def test_attempts_exhausted_name_the_status(
    registry: LocalRegistry, status: int, error: type[RegistryError]
) -> None:
    await seed(registry, "app", [("1", make_image(layer_size=100))])
    intercept = fail_first("GET", "manifest", 1000, status, {"Retry-After": "1"})
    async with (
        Front(registry, intercept).running() as front,
        connect(front.host, attempts=3) as client,
    ):
        with pytest.raises(error) as caught:
            await client.get_manifest("app", "1")
    assert caught.value.status == status
    assert f"HTTP {status}" in str(caught.value)
    assert f"{front.host}/app:1" in str(caught.value)
    if isinstance(caught.value, RateLimited):
        assert caught.value.retry_after == 1.0
    assert len(front.of("GET", "manifest")) == 3


async def test_404_is_not_retried(registry: LocalRegistry, retry_waits: list[float]) -> None:
    await seed(registry, "app", [("1", make_image(layer_size=100))])
    async with Front(registry).running() as front, connect(front.host) as client:
        with pytest.raises(NotFound):
            await client.get_manifest("app", "nope")
        with pytest.raises(NotFound):
            await client.get_manifest("nothing/here", "1")
        assert await client.head_manifest("app", "nope") is None
        assert await client.blob_size("app", digests.of(b"nope")) is None
    assert [s.status for s in front.seen] == [404] * 4
    assert retry_waits == []


# -- 6. rate-limit headers ----------------------------------------------------------------


async def test_rate_limit_remaining(registry: LocalRegistry) -> None:
    await seed(registry, "app", [("1", make_image(layer_size=100))])
    front = Front(registry, extra_headers={"RateLimit-Remaining": "42;w=21600"})
    async with front.running(), connect(front.host) as client:
        assert client.rate_limit_remaining is None
        await client.head_manifest("app", "1")
        assert client.rate_limit_remaining == 42
        front.extra_headers["RateLimit-Remaining"] = "41;w=21600"
        await client.list_tags("app")
        assert client.rate_limit_remaining == 41


class RecordingLog:
    """Stands in for the client's structlog logger: keeps every warning."""

    def __init__(self) -> None:
        self.warnings: list[tuple[str, dict[str, Any]]] = []

    def warning(self, event: str, **fields: Any) -> None:
        """Record one warning line."""
        self.warnings.append((event, fields))


def scripted_remaining(script: list[str | None]) -> Intercept:
    """Forward manifest requests, announcing the next `RateLimit-Remaining` of `script`.

    None sends no header; once the script runs out every answer says 50.
    """

    async def intercept(front: Front, request: web.Request, body: bytes) -> web.Response | None:
        if kind_of(request) != "manifest":
            return None
        resp = await front.forward(request, body)
        value = script.pop(0) if script else "50"
        if value is not None:
            resp.headers["RateLimit-Remaining"] = f"{value};w=21600"
        return resp

    return intercept


async def test_rate_limit_reserve_waits_and_refreshes_with_head(
    registry: LocalRegistry, monkeypatch: pytest.MonkeyPatch
) -> None:
    image = make_image(layer_size=100, seed="reserve")
    await seed(registry, "app", [("1", image)])
    recorded = RecordingLog()
    monkeypatch.setattr(client_module, "log", recorded)
    # The GET leaves 5 (below the reserve of 10); the first HEAD still says 5, the next 50.
    script: list[str | None] = ["5", "5", "50", "49"]
    options = HostOptions(rate_limit_reserve=10, rate_limit_wait=0.05)
    async with (
        Front(registry, scripted_remaining(script)).running() as front,
        connect(front.host, options=options) as client,
    ):
        assert (await client.get_manifest("app", "1")).raw == image.manifest.raw
        assert client.rate_limit_remaining == 5
        assert len(front.seen) == 1
        assert not recorded.warnings
        assert (await client.get_manifest("app", "1")).raw == image.manifest.raw
        assert client.rate_limit_remaining == 49
    assert [(s.method, s.kind) for s in front.seen] == [
        ("GET", "manifest"),
        ("HEAD", "manifest"),
        ("HEAD", "manifest"),
        ("GET", "manifest"),
    ]
    assert [s.path for s in front.seen] == ["/v2/app/manifests/1"] * 4
    assert script == []
    fields = {"host": front.host, "reserve": 10, "wait": 0.05}
    assert recorded.warnings == [
        ("rate limit reserve reached, waiting", {**fields, "remaining": 5}),
        ("rate limit reserve reached, waiting", {**fields, "remaining": 5}),
    ]


async def test_rate_limit_reserve_one_task_refreshes_the_rest_wait(
    registry: LocalRegistry, monkeypatch: pytest.MonkeyPatch
) -> None:
    image = make_image(layer_size=100, seed="reserve-many")
    await seed(registry, "app", [("1", image)])
    monkeypatch.setattr(client_module, "log", RecordingLog())
    script: list[str | None] = ["3", "4", "40"]
    options = HostOptions(rate_limit_reserve=10, rate_limit_wait=0.05)
    async with (
        Front(registry, scripted_remaining(script)).running() as front,
        connect(front.host, options=options) as client,
    ):
        await client.get_manifest("app", "1")
        assert client.rate_limit_remaining == 3
        got = await asyncio.gather(*(client.get_manifest("app", "1") for _ in range(5)))
        assert {m.digest for m in got} == {image.digest}
    # One task refreshed (twice); the other four waited behind it, then all five pulled.
    assert [(s.method, s.kind) for s in front.seen] == [
        ("GET", "manifest"),
        ("HEAD", "manifest"),
        ("HEAD", "manifest"),
    ] + [("GET", "manifest")] * 5


async def test_rate_limit_reserve_header_gone_means_go(
    registry: LocalRegistry, monkeypatch: pytest.MonkeyPatch
) -> None:
    image = make_image(layer_size=100, seed="reserve-gone")
    await seed(registry, "app", [("1", image)])
    monkeypatch.setattr(client_module, "log", RecordingLog())
    script: list[str | None] = ["2", None, None]
    options = HostOptions(rate_limit_reserve=10, rate_limit_wait=0.01)
    async with (
        Front(registry, scripted_remaining(script)).running() as front,
        connect(front.host, options=options) as client,
    ):
        await client.get_manifest("app", "1")
        assert client.rate_limit_remaining == 2
        await client.get_manifest("app", "1")
        assert client.rate_limit_remaining is None
    assert [s.method for s in front.seen] == ["GET", "HEAD", "GET"]


async def test_rate_limit_reserve_spares_heads_and_other_calls(registry: LocalRegistry) -> None:
    """Only manifest GETs count on Docker Hub: HEADs, blobs and tags go on below the reserve."""
    image = make_image(layer_size=100, seed="reserve-heads")
    await seed(registry, "app", [("1", image)])
    front = Front(registry, extra_headers={"RateLimit-Remaining": "1;w=21600"})
    options = HostOptions(rate_limit_reserve=10, rate_limit_wait=3600)
    async with front.running(), connect(front.host, options=options) as client:
        assert await client.head_manifest("app", "1") == image.descriptor
        assert client.rate_limit_remaining == 1
        assert await client.list_tags("app") == ["1"]
        blob = image.blobs[0]
        assert await client.blob_size("app", blob.digest) == blob.size
        assert await read_blob(client, "app", blob.digest) == blob.data
    assert len(front.seen) == 4


# -- 6b. request pace ---------------------------------------------------------------------


class FakeTime:
    """A clock that moves only when a sleeper wakes: each sleep ends at call time + delay."""

    def __init__(self) -> None:
        self.now = 0.0
        #: When each sleep ended, in fake time.
        self.wakes: list[float] = []

    def clock(self) -> float:
        """The fake time."""
        return self.now

    async def sleep(self, seconds: float) -> None:
        """Wake at `now + seconds`: the clock moves on to the latest wake so far."""
        wake = self.now + seconds
        self.wakes.append(wake)
        self.now = max(self.now, wake)
        await asyncio.sleep(0)


def test_pacer_follows_host_options() -> None:
    assert RegistryClient("127.0.0.1:5000").pacer.rate is None
    paced = RegistryClient("127.0.0.1:5000", options=HostOptions(requests_per_second=3))
    assert paced.pacer.rate == 3
    assert paced.pacer.burst == 3
    slow = RegistryClient("127.0.0.1:5000", options=HostOptions(requests_per_second=0.5))
    assert slow.pacer.burst == 1


async def test_every_request_takes_a_slot_in_the_pace(token_registry: LocalRegistry) -> None:
    token_server = token_registry.token_server
    assert token_server is not None
    image = make_image(layers=2, layer_size=3000, seed="paced")
    fake = FakeTime()
    pacer = Pacer(5, burst=1, clock=fake.clock, sleep=fake.sleep)
    options = HostOptions(requests_per_second=5)
    token_server.clear()
    mark = token_registry.mark()
    async with connect(token_registry.host, credentials=BOB, options=options, pacer=pacer) as c:
        assert c.pacer is pacer
        c.chunked_uploads = True  # PATCH too
        await push_image(c, "paced/app", image, "1")
        assert (await c.get_manifest("paced/app", "1")).raw == image.manifest.raw
        assert await c.head_manifest("paced/app", "1") == image.descriptor
        blobs = image.all_blobs()
        sizes = await asyncio.gather(*(c.blob_size("paced/app", b.digest) for b in blobs))
        assert sizes == [b.size for b in blobs]
        for blob in blobs:
            assert await read_blob(c, "paced/app", blob.digest) == blob.data
        assert await c.list_tags("paced/app") == ["1"]
        sent = c.requests
    assert {"TOKEN", "HEAD", "GET", "PUT", "PATCH", "POST"} <= set(sent)
    # Every request either side saw took exactly one slot.
    seen = len(token_registry.requests(since=mark)) + len(token_server.requests)
    assert sent["TOKEN"] == len(token_server.requests) >= 1
    assert pacer.slots == sum(sent.values()) == seen
    # One slot every 0.2 s of fake time, each its own: the first at once, then 0.2, 0.4...
    assert sorted(fake.wakes) == pytest.approx([0.2 * i for i in range(1, pacer.slots)])
    assert fake.now == pytest.approx(0.2 * (pacer.slots - 1))


# -- 7. blob redirects --------------------------------------------------------------------


async def test_blob_redirect_to_storage_gets_no_credentials(
    htpasswd_registry: LocalRegistry,
) -> None:
    image = make_image(layers=2, layer_size=300_000, seed="redirect")
    await seed(htpasswd_registry, "secret/app", [("1", image)])
    storage_seen: list[dict[str, str]] = []

    async def storage(request: web.Request) -> web.Response:
        """A storage backend on another host: serves the registry's bytes to anyone."""
        storage_seen.append(dict(request.headers))
        path = request.path.removeprefix("/storage")
        repo = path.removeprefix("/v2/").partition("/blobs/")[0]
        async with (
            aiohttp.ClientSession() as session,
            session.get(
                htpasswd_registry.url + path, headers=htpasswd_registry.auth_headers(repo)
            ) as resp,
        ):
            assert resp.status == 200
            return web.Response(body=await resp.read())

    app = web.Application()
    app.router.add_get("/storage/{tail:.*}", storage)

    async with serve(app) as storage_port:

        async def redirect(front: Front, request: web.Request, body: bytes) -> web.Response | None:
            if request.method != "GET" or kind_of(request) != "blob":
                return None
            resp = await front.forward(request, body)  # the registry decides who may read
            if resp.status != 200:
                return resp
            where = f"http://localhost:{storage_port}/storage{request.path}?X-Signature=s3-like"
            return web.Response(status=307, headers={"Location": where})

        async with (
            Front(htpasswd_registry, redirect).running() as front,
            connect(front.host, credentials=ALICE) as client,
        ):
            for blob in image.blobs:
                data = await read_blob(client, "secret/app", blob.digest)
                assert data == blob.data
                assert digests.of(data) == blob.digest

    assert len(storage_seen) == len(image.blobs)
    for headers in storage_seen:
        assert "Authorization" not in headers
    redirected = [s for s in front.of("GET", "blob") if s.status == 307]
    assert len(redirected) == len(image.blobs)
    for s in redirected:
        assert s.headers.get("Authorization", "").startswith("Basic ")


# -- 8. refused monolithic uploads ---------------------------------------------------------


async def refuse_monolithic(front: Front, request: web.Request, body: bytes) -> web.Response | None:
    """Answer 413 to a PUT that closes an upload with the whole blob in its body."""
    closing = request.method == "PUT" and kind_of(request) == "upload"
    if closing and "digest" in request.query and body:
        return registry_error(413, "SIZE_INVALID")
    return None


async def test_refused_monolithic_upload_falls_back_to_chunks(
    registry: LocalRegistry, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(uploads_module, "CHUNK_SIZE", 64 * 1024)
    blob = Blob("application/octet-stream", random_layer(200_000, seed="chunked"))
    async with Front(registry, refuse_monolithic).running() as front:
        client = RegistryClient(front.host)
        store = RegistryStore(client)
        try:
            # The client says so with UploadRefused; the store then goes chunked.
            with pytest.raises(UploadRefused) as caught:
                await store.put_blob("app", blob.descriptor, chunks_of(blob.data))
            assert caught.value.status == 413
            assert client.chunked_uploads
            assert await client.blob_size("app", blob.digest) is None
            mark = registry.mark()
            await store.put_blob("app", blob.descriptor, chunks_of(blob.data))
            assert await client.blob_size("app", blob.digest) == blob.size
            assert await read_blob(client, "app", blob.digest) == blob.data
            # Later blobs go chunked straight away.
            small = Blob("application/octet-stream", b"small blob")
            await push_blob(client, "app", small)
            assert await client.blob_size("app", small.digest) == small.size
        finally:
            await store.close()
    patches = [r for r in registry.requests(since=mark) if r.method == "PATCH"]
    assert len(patches) == 4 + 1  # 200,000 bytes in 64 KiB chunks, then the small blob
    assert all(r.status == 202 for r in patches)
    puts = front.of("PUT", "upload")
    assert [s.status for s in puts] == [413, 201, 201]
    assert [s.body_size for s in puts] == [blob.size, 0, 0]


# -- 9. tag list pagination ---------------------------------------------------------------


async def paginate(front: Front, request: web.Request, body: bytes) -> web.Response | None:
    """Serve tag lists two at a time with `Link` headers, whatever `n` the client asked.

    distribution 2.8 ignores `n` for tags, so the front pages the registry's full list.
    """
    if request.method != "GET" or kind_of(request) != "tags":
        return None
    full = await front.forward(request, body, path_qs=request.path)
    if full.status != 200:
        return full
    assert isinstance(full.body, bytes)
    doc = json.loads(full.body)
    last = request.query.get("last")
    rest = [t for t in sorted(doc["tags"]) if last is None or t > last]
    page = rest[:2]
    resp = web.json_response({"name": doc["name"], "tags": page})
    if len(rest) > 2:
        resp.headers["Link"] = f'<{request.path}?n=2&last={page[-1]}>; rel="next"'
    return resp


async def test_tags_pagination(registry: LocalRegistry) -> None:
    tags = [f"v{i}" for i in range(7)]
    image = make_image(layer_size=100, seed="pages")
    await seed(registry, "app", [(t, image) for t in tags])
    async with Front(registry, paginate).running() as front, connect(front.host) as client:
        got = await client.list_tags("app")
    assert got == tags  # all of them, each once, in the order served
    pages = front.of("GET", "tags")
    assert len(pages) == 4
    assert [p.query.get("last") for p in pages] == [None, "v1", "v3", "v5"]


# -- 10. cross-repository mount -----------------------------------------------------------


async def test_cross_repo_mount(registry: LocalRegistry) -> None:
    blob = Blob("application/octet-stream", random_layer(50_000, seed="mount"))
    async with connect(registry.host) as client:
        await push_blob(client, "a", blob)
        mark = registry.mark()
        assert await client.start_upload("b", mount=blob.digest, from_repo="a") is None
        assert await client.blob_size("b", blob.digest) == blob.size
        assert await read_blob(client, "b", blob.digest) == blob.data
        seen = registry.requests(since=mark)

        # A mount from a repository without the blob opens an upload session instead.
        absent = digests.of(b"nowhere")
        location = await client.start_upload("c", mount=absent, from_repo="a")
        assert location is not None
        assert location.startswith(f"http://{registry.host}/v2/c/blobs/uploads/")
        await client.cancel_upload(location)

    posts = [r for r in seen if r.method == "POST" and r.kind == "upload"]
    assert len(posts) == 1
    assert posts[0].repository == "b"
    assert f"mount={blob.digest}" in posts[0].query.replace("%3A", ":")
    assert "from=a" in posts[0].query
    assert posts[0].status == 201
    assert not [r for r in seen if r.method in ("PATCH", "PUT")]


async def test_request_sends_with_or_without_the_clients_credentials(
    htpasswd_registry: LocalRegistry,
) -> None:
    assert htpasswd_registry.creds is not None
    user, password = htpasswd_registry.creds
    async with connect(htpasswd_registry.host, credentials=Credentials(user, password)) as client:
        resp = await client.request("GET", "/v2/")  # learns the challenge, then logs in
        assert resp.status == 200
        resp.release()
        raw = await client.request("GET", f"{htpasswd_registry.url}/v2/", authenticate=False)
        assert raw.status == 401  # as it is: none of the client's credentials
        err = await client.error_from(raw, "the ping")
        assert isinstance(err, AuthError)
        assert err.status == 401
        assert str(err).startswith("the ping: HTTP 401")
        assert client.requests["GET"] == 3
        assert client.statuses[401] == 2
        with pytest.raises(ValueError, match="only authenticated requests follow redirects"):
            await client.request("GET", "/v2/", authenticate=False, allow_redirects=True)


# -- 9. compression the client never asked for -----------------------------------------------


async def gzip_when_accepted(
    front: Front, request: web.Request, body: bytes
) -> web.Response | None:
    """Answer a blob or manifest GET gzipped when the client accepts gzip, as a proxy or CDN
    with compression switched on for every type does."""
    accepted = request.headers.get("Accept-Encoding", "").lower()
    if request.method != "GET" or kind_of(request) not in ("blob", "manifest"):
        return None
    if "gzip" not in accepted:
        return None
    plain = await front.forward(request, body)
    assert isinstance(plain.body, bytes)
    return web.Response(
        status=plain.status,
        body=gzip.compress(plain.body),
        headers={
            "Content-Type": plain.headers.get("Content-Type", "application/octet-stream"),
            "Docker-Content-Digest": plain.headers.get("Docker-Content-Digest", ""),
            "Content-Encoding": "gzip",
        },
    )


async def test_blobs_and_manifests_are_asked_for_uncompressed(registry: LocalRegistry) -> None:
    # The client never decompresses (a blob's digest is of the bytes as stored), so it must
    # not accept a compressed answer either: aiohttp's default `Accept-Encoding: gzip,
    # deflate` let a front that compresses hand over gzip bytes as the blob itself.
    image = make_image(layers=[random_layer(100_000, seed="identity")])
    await seed(registry, "app", [("v1", image)])
    blob = max(image.blobs, key=lambda b: b.size)  # the layer
    async with (
        Front(registry, gzip_when_accepted).running() as front,
        connect(front.host) as client,
    ):
        assert await read_blob(client, "app", blob.digest) == blob.data
        assert (await client.get_manifest("app", "v1")).digest == image.digest
    gets = front.of("GET")
    assert {s.kind for s in gets} >= {"blob", "manifest"}
    assert all(s.headers.get("Accept-Encoding") == "identity" for s in gets)
