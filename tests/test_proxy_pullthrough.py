"""`ocimirror proxy --cache`: the pull-through cache, as a real process in front of real
registries, counted in their access logs: pulls served from the cache, tags revalidated
with a HEAD after their TTL, stale copies when the upstream is gone, one upstream fetch for
concurrent pulls, exact manifest bytes and media types, the size limit, who may read what,
and the metrics."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import http.client
import json
import re
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from ocimirror import mediatypes as mt
from ocimirror.testkit.accesslog import Request
from ocimirror.testkit.images import SampleImage, make_image, make_index, random_layer
from ocimirror.testkit.proxy import Answer, ProxyProcess
from ocimirror.testkit.registry import LocalRegistry
from ocimirror.testkit.scripted import ScriptedHandler, ScriptedServer
from ocimirror.testkit.seeding import seed
from ocimirror.testkit.skopeo import Skopeo
from ocimirror.testkit.tokenserver import TokenServer
from test_proxy import assert_layout_holds, private_image, pull_to_oci

RegistryFactory = Callable[..., LocalRegistry]
TokenServerFactory = Callable[..., TokenServer]
MiB = 1024 * 1024
#: What a client that takes every manifest type sends.
ACCEPT_ALL = ", ".join([mt.OCI_INDEX, mt.OCI_MANIFEST, mt.DOCKER_MANIFEST_LIST, mt.DOCKER_MANIFEST])


def cached_proxy(
    start: Callable[..., ProxyProcess], registry: LocalRegistry, cache: Path, *args: str, **kw: str
) -> ProxyProcess:
    """A proxy in front of `registry` with a cache in `cache`."""
    env = {"OCIMIRROR_PROXY_CACHE": str(cache), **kw}
    return start("--registry-host", registry.host, *args, env=env)


def api(requests: list[Request]) -> list[Request]:
    """The manifest and blob requests among `requests`."""
    return [r for r in requests if r.kind in ("manifest", "blob")]


def metric(proxy: ProxyProcess, name: str, **labels: str) -> float:
    """The sum of a metric's samples that carry `labels`."""
    total = 0.0
    for line in proxy.call("GET", "/metrics").body.decode().splitlines():
        m = re.fullmatch(r"(\w+)(?:\{(.*)\})? (\S+)", line)
        if m is None or m[1] != name:
            continue
        have = dict(re.findall(r'(\w+)="([^"]*)"', m[2] or ""))
        if all(have.get(k) == v for k, v in labels.items()):
            total += float(m[3])
    return total


def get_manifest(proxy: ProxyProcess, name: str, ref: str, accept: str = ACCEPT_ALL) -> Answer:
    """GET a manifest through the proxy."""
    return proxy.call("GET", f"/v2/{name}/manifests/{ref}", headers={"Accept": accept})


# -- tests ----------------------------------------------------------------------------------


def test_second_pull_comes_from_the_cache_and_tags_are_revalidated_with_head(
    registry: LocalRegistry,
    start_proxy: Callable[..., ProxyProcess],
    skopeo: Skopeo,
    tmp_path: Path,
) -> None:
    index = make_index(["linux/amd64", "linux/arm64"], layer_size=4000, seed="pt-index")
    asyncio.run(seed(registry, "team/app", [("1", index)]))
    proxy = cached_proxy(start_proxy, registry, tmp_path / "cache", "--tag-ttl", "2s")
    ref = proxy.ref("team/app:1")

    pull_to_oci(skopeo, ref, tmp_path / "first", "--all")
    assert_layout_holds(tmp_path / "first", index)

    mark = registry.mark()
    pull_to_oci(skopeo, ref, tmp_path / "second", "--all")
    assert_layout_holds(tmp_path / "second", index)
    again = api(registry.requests(since=mark))
    assert [r for r in again if r.method == "GET"] == []  # every manifest and blob cached
    assert all(r.method == "HEAD" and r.reference == "1" for r in again)  # the tag, at most

    # A fresh tag: no upstream request at all.
    assert get_manifest(proxy, "team/app", "1").body == index.manifest.raw
    mark = registry.mark()
    assert get_manifest(proxy, "team/app", "1").body == index.manifest.raw
    assert api(registry.requests(since=mark)) == []

    # Past the TTL the tag is revalidated with a HEAD, never a GET.
    time.sleep(2.1)
    mark = registry.mark()
    pull_to_oci(skopeo, ref, tmp_path / "third", "--all")
    assert_layout_holds(tmp_path / "third", index)
    late = api(registry.requests(since=mark))
    assert [(r.method, r.kind, r.reference) for r in late] == [("HEAD", "manifest", "1")]

    assert metric(proxy, "ocimirror_proxy_cache_hits_total", kind="blob") >= 2 * 4
    assert metric(proxy, "ocimirror_proxy_cache_hits_total", kind="manifest") >= 2 * 3
    assert metric(proxy, "ocimirror_proxy_cache_misses_total", kind="blob") == 4
    assert metric(proxy, "ocimirror_proxy_cache_misses_total", kind="manifest") == 3
    blob_bytes = sum(b.size for b in index.all_blobs())
    assert metric(proxy, "ocimirror_proxy_bytes_total", source="upstream") >= blob_bytes
    assert metric(proxy, "ocimirror_proxy_bytes_total", source="cache") >= 2 * blob_bytes
    assert metric(proxy, "ocimirror_proxy_requests_total", kind="blob") >= 12


def test_tag_ttl_revalidation_follows_a_moved_tag_and_head_stays_head(
    registry: LocalRegistry, start_proxy: Callable[..., ProxyProcess], tmp_path: Path
) -> None:
    images = [make_image(layer_size=500, seed=f"ttl-{i}") for i in range(3)]
    asyncio.run(seed(registry, "app", [("t", images[0])]))
    proxy = cached_proxy(start_proxy, registry, tmp_path / "cache", "--tag-ttl", "1s")
    assert get_manifest(proxy, "app", "t").body == images[0].manifest.raw

    # Past the TTL, the tag unchanged: one HEAD, answered from the cache.
    time.sleep(1.1)
    mark = registry.mark()
    assert get_manifest(proxy, "app", "t").body == images[0].manifest.raw
    assert [(r.method, r.kind) for r in api(registry.requests(since=mark))] == [
        ("HEAD", "manifest")
    ]

    # The tag moved: the HEAD says so, then one GET brings the new manifest.
    asyncio.run(seed(registry, "app", [("t", images[1])]))
    time.sleep(1.1)
    mark = registry.mark()
    moved = get_manifest(proxy, "app", "t")
    assert moved.body == images[1].manifest.raw
    assert moved.headers["Docker-Content-Digest"] == images[1].digest
    assert [(r.method, r.kind) for r in api(registry.requests(since=mark))] == [
        ("HEAD", "manifest"),
        ("GET", "manifest"),
    ]
    mark = registry.mark()
    assert get_manifest(proxy, "app", "t").body == images[1].manifest.raw  # cached now
    assert api(registry.requests(since=mark)) == []

    # A client's HEAD of a moved tag stays a HEAD upstream.
    asyncio.run(seed(registry, "app", [("t", images[2])]))
    time.sleep(1.1)
    mark = registry.mark()
    head = proxy.call("HEAD", "/v2/app/manifests/t", headers={"Accept": ACCEPT_ALL})
    assert head.status == 200
    assert head.headers["Docker-Content-Digest"] == images[2].digest
    assert [(r.method, r.kind) for r in api(registry.requests(since=mark))] == [
        ("HEAD", "manifest")
    ]


def test_pull_succeeds_from_the_cache_after_the_upstream_stopped(
    registry: LocalRegistry,
    start_proxy: Callable[..., ProxyProcess],
    skopeo: Skopeo,
    tmp_path: Path,
) -> None:
    image = make_image(layers=2, layer_size=3000, seed="stale")
    other = make_image(seed="never-pulled")
    asyncio.run(seed(registry, "app", [("1", image), ("2", other)]))
    proxy = cached_proxy(start_proxy, registry, tmp_path / "cache", "--tag-ttl", "1s")
    pull_to_oci(skopeo, proxy.ref("app:1"), tmp_path / "before")

    registry.stop()
    time.sleep(1.1)  # the tag is stale: revalidation fails, the cached copy stands in
    pull_to_oci(skopeo, proxy.ref("app:1"), tmp_path / "after")
    assert_layout_holds(tmp_path / "after", image)
    answer = get_manifest(proxy, "app", "1")
    assert answer.status == 200
    assert answer.body == image.manifest.raw
    assert answer.headers["Warning"] == '110 - "Response is Stale"'
    assert "serving the stale cached copy" in proxy.text()
    assert metric(proxy, "ocimirror_proxy_cache_stale_total", kind="manifest") >= 2
    assert metric(proxy, "ocimirror_proxy_upstream_errors_total", reason="unreachable") >= 2

    # What was never cached cannot be served.
    missing = get_manifest(proxy, "app", "2")
    assert missing.status == 502
    assert missing.json()["errors"][0]["code"] == "UNAVAILABLE"


class Flaky(ScriptedServer):
    """A scripted upstream serving one image, that can be told to fail every request."""

    def __init__(self, image: SampleImage) -> None:
        self.image = image
        self.fail: int | None = None
        self.seen: list[tuple[str, str]] = []
        outer = self

        class Handler(ScriptedHandler):
            def do_HEAD(self) -> None:
                self.do_GET()

            def do_GET(self) -> None:
                outer.seen.append((self.command, self.path))
                m = outer.image.manifest
                blobs = {b.digest: b.data for b in outer.image.blobs}
                if outer.fail is not None:
                    self.answer(outer.fail, b'{"errors":[{"code":"TOOMANYREQUESTS"}]}')
                elif self.path == "/v2/":
                    self.answer(200, b"{}")
                elif self.path in ("/v2/app/manifests/1", f"/v2/app/manifests/{m.digest}"):
                    headers = {"Content-Type": m.media_type, "Docker-Content-Digest": m.digest}
                    self.answer(200, m.raw, headers)
                elif self.path.startswith("/v2/app/blobs/") and self.path[14:] in blobs:
                    self.answer(200, blobs[self.path[14:]])
                else:
                    self.answer(404, b'{"errors":[{"code":"MANIFEST_UNKNOWN"}]}')

        super().__init__(Handler)


class Lying(ScriptedServer):
    """A scripted upstream whose one blob differs from its digest in its very last byte,
    with a Content-Length or (`sized=False`) ending the body by closing the connection."""

    def __init__(self, data: bytes, *, sized: bool) -> None:
        self.digest = "sha256:" + hashlib.sha256(data).hexdigest()
        self.sent = data[:-1] + bytes([data[-1] ^ 1])
        self.blob_gets = 0
        outer = self

        class Handler(ScriptedHandler):
            def do_GET(self) -> None:
                if self.path == "/v2/":
                    self.answer(200, b"{}")
                elif self.path == f"/v2/app/blobs/{outer.digest}":
                    outer.blob_gets += 1
                    self.send_response(200)
                    if sized:
                        self.send_header("Content-Length", str(len(outer.sent)))
                    self.end_headers()
                    self.wfile.write(outer.sent)
                    self.close_connection = True
                else:
                    self.send_error(404)

        super().__init__(Handler)


@pytest.mark.parametrize("sized", [True, False], ids=["content-length", "no-size"])
def test_a_blob_failing_its_digest_at_the_last_byte_reaches_no_client_whole(
    start_proxy: Callable[..., ProxyProcess], tmp_path: Path, sized: bool
) -> None:
    """Every byte but the last goes out while the blob downloads; the digest fails at the
    end, so the clients' responses are cut short (not a complete-looking wrong blob, with
    or without a Content-Length) and the cache keeps nothing."""
    data = random_layer(3 * MiB + 7, seed="lying")
    lying = Lying(data, sized=sized)
    try:
        cache = tmp_path / "cache"
        proxy = start_proxy(
            "--registry-host", lying.host, env={"OCIMIRROR_PROXY_CACHE": str(cache)}
        )
        path = f"/v2/app/blobs/{lying.digest}"
        for attempt in (1, 2):
            conn = http.client.HTTPConnection("127.0.0.1", proxy.port, timeout=60)
            try:
                conn.request("GET", path)
                resp = conn.getresponse()
                assert resp.status == 200
                assert resp.getheader("Content-Length") == (str(len(data)) if sized else None)
                with pytest.raises(http.client.IncompleteRead) as cut:
                    resp.read()
                assert len(cut.value.partial) < len(data)
                assert cut.value.partial == lying.sent[: len(cut.value.partial)]
            finally:
                conn.close()
            assert lying.blob_gets == attempt  # nothing was kept: the next one goes upstream
        assert not (cache / "blobs" / "sha256" / lying.digest[7:]).exists()
        assert list((cache / "blobs" / "sha256").glob(".tmp-*")) == []
        errors = metric(proxy, "ocimirror_proxy_upstream_errors_total", reason="broken_body")
        assert errors == 2
        assert "digest mismatch" in proxy.text()
    finally:
        lying.stop()


def test_stale_copy_stands_in_for_429_and_5xx(
    start_proxy: Callable[..., ProxyProcess], tmp_path: Path
) -> None:
    image = make_image(seed="flaky")
    flaky = Flaky(image)
    try:
        env = {"OCIMIRROR_PROXY_CACHE": str(tmp_path / "cache"), "OCIMIRROR_PROXY_TAG_TTL": "0"}
        proxy = start_proxy("--registry-host", flaky.host, env=env)
        layer = f"/v2/app/blobs/{image.blobs[1].digest}"
        assert get_manifest(proxy, "app", "1").headers.get("Warning") is None
        assert proxy.call("GET", layer).body == image.blobs[1].data
        for status in (429, 503):
            flaky.fail = status
            flaky.seen.clear()
            answer = get_manifest(proxy, "app", "1")
            assert answer.status == 200
            assert answer.body == image.manifest.raw
            assert answer.headers["Warning"] == '110 - "Response is Stale"'
            assert flaky.seen == [("HEAD", "/v2/app/manifests/1")]  # the HEAD, nothing more
            assert proxy.call("GET", layer).body == image.blobs[1].data  # granted before
            reason = f"http_{status}"
            assert metric(proxy, "ocimirror_proxy_upstream_errors_total", reason=reason) >= 1
            # Nothing cached to stand in: the upstream's answer.
            assert get_manifest(proxy, "app", "other").status == status
        assert metric(proxy, "ocimirror_proxy_cache_stale_total", kind="manifest") == 2
    finally:
        flaky.stop()


def test_ten_concurrent_pulls_of_a_50_mib_blob_make_one_upstream_fetch(
    registry: LocalRegistry, start_proxy: Callable[..., ProxyProcess], tmp_path: Path
) -> None:
    image = make_image(layers=[random_layer(50 * MiB, seed="big")], seed="big")
    blob = image.blobs[1]
    assert blob.size > 50 * MiB
    asyncio.run(seed(registry, "big", [("1", image)]))
    proxy = cached_proxy(start_proxy, registry, tmp_path / "cache")
    mark = registry.mark()

    results: list[tuple[int, str, int]] = []
    start = threading.Barrier(10)

    def pull() -> None:
        start.wait()
        answer = proxy.call("GET", f"/v2/big/blobs/{blob.digest}")
        digest = "sha256:" + hashlib.sha256(answer.body).hexdigest()
        results.append((answer.status, digest, len(answer.body)))

    threads = [threading.Thread(target=pull) for _ in range(10)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert results == [(200, blob.digest, blob.size)] * 10
    # One GET upstream; the others joined it (anonymous: the fetch's grant covers them).
    asked = [(r.method, r.kind) for r in registry.requests(since=mark) if r.reference]
    assert asked == [("GET", "blob")]
    assert metric(proxy, "ocimirror_proxy_cache_coalesced_total", kind="blob") >= 1
    assert (
        metric(proxy, "ocimirror_proxy_cache_misses_total", kind="blob")
        + metric(proxy, "ocimirror_proxy_cache_hits_total", kind="blob")
        == 10
    )

    # Cached now: HEAD and ranges answered by the proxy alone.
    mark = registry.mark()
    head = proxy.call("HEAD", f"/v2/big/blobs/{blob.digest}")
    assert head.status == 200
    assert head.headers["Content-Length"] == str(blob.size)
    assert head.headers["Docker-Content-Digest"] == blob.digest
    whole = proxy.call("GET", f"/v2/big/blobs/{blob.digest}")  # sent with sendfile
    assert whole.status == 200
    assert hashlib.sha256(whole.body).hexdigest() == blob.digest.removeprefix("sha256:")
    assert whole.headers["Content-Type"] == "application/octet-stream"
    assert whole.headers["Docker-Content-Digest"] == blob.digest
    assert whole.headers["Content-Length"] == str(blob.size)
    part = proxy.call("GET", f"/v2/big/blobs/{blob.digest}", headers={"Range": "bytes=10-19"})
    assert part.status == 206
    assert part.body == blob.data[10:20]
    assert part.headers["Content-Range"] == f"bytes 10-19/{blob.size}"
    tail = proxy.call("GET", f"/v2/big/blobs/{blob.digest}", headers={"Range": "bytes=-5"})
    assert tail.body == blob.data[-5:]
    beyond = proxy.call(
        "GET", f"/v2/big/blobs/{blob.digest}", headers={"Range": f"bytes={blob.size}-"}
    )
    assert beyond.status == 416
    assert api(registry.requests(since=mark)) == []


def test_cached_blobs_go_out_one_after_another_on_one_keep_alive_connection(
    registry: LocalRegistry, start_proxy: Callable[..., ProxyProcess], tmp_path: Path
) -> None:
    image = make_image(layers=3, layer_size=200_000, seed="keep-alive")
    asyncio.run(seed(registry, "app", [("1", image)]))
    proxy = cached_proxy(start_proxy, registry, tmp_path / "cache")
    for blob in image.blobs:  # fill the cache
        assert proxy.call("GET", f"/v2/app/blobs/{blob.digest}").status == 200
    conn = http.client.HTTPConnection("127.0.0.1", proxy.port, timeout=30)
    try:
        for _ in range(20):
            for blob in image.blobs:  # whole cached blobs go out with sendfile
                conn.request("GET", f"/v2/app/blobs/{blob.digest}")
                resp = conn.getresponse()
                assert (resp.status, resp.read()) == (200, blob.data)
    finally:
        conn.close()
    assert "Unhandled exception" not in proxy.text()


def test_concurrent_gets_of_an_uncached_tag_make_one_upstream_get(
    registry: LocalRegistry, start_proxy: Callable[..., ProxyProcess], tmp_path: Path
) -> None:
    index = make_index(["linux/amd64", "linux/arm64"], seed="tag-flight")
    asyncio.run(seed(registry, "app", [("1", index)]))
    proxy = cached_proxy(start_proxy, registry, tmp_path / "cache")
    mark = registry.mark()
    results: list[tuple[int, bytes]] = []
    start = threading.Barrier(20)

    def pull() -> None:
        start.wait()
        answer = get_manifest(proxy, "app", "1")
        results.append((answer.status, answer.body))

    threads = [threading.Thread(target=pull) for _ in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert results == [(200, index.manifest.raw)] * 20
    asked = [(r.method, r.reference) for r in api(registry.requests(since=mark))]
    assert asked == [("GET", "1")]
    assert metric(proxy, "ocimirror_proxy_cache_coalesced_total", kind="manifest") >= 1


def _raw(registry: LocalRegistry, repo: str, ref: str, accept: str) -> Answer:
    got = registry.http("GET", f"/v2/{repo}/manifests/{ref}", headers={"Accept": accept})
    assert got.status == 200
    return Answer(got.status, got.headers, got.body)


@pytest.mark.parametrize("oci", [False, True], ids=["docker-list", "oci-index"])
def test_manifests_keep_their_exact_bytes_and_media_type(
    oci: bool, registry: LocalRegistry, start_proxy: Callable[..., ProxyProcess], tmp_path: Path
) -> None:
    index = make_index(["linux/amd64", "linux/arm64"], oci=oci, seed=f"exact-{oci}")
    asyncio.run(seed(registry, "app", [("1", index)]))
    proxy = cached_proxy(start_proxy, registry, tmp_path / "cache")
    upstream = _raw(registry, "app", "1", ACCEPT_ALL)
    assert upstream.headers["Content-Type"] == index.manifest.media_type

    for _ in range(2):  # fetched and stored, then from the cache
        mark = registry.mark()
        got = get_manifest(proxy, "app", "1")
        assert got.status == 200
        assert got.body == upstream.body == index.manifest.raw
        assert got.headers["Content-Type"] == upstream.headers["Content-Type"]
        assert got.headers["Docker-Content-Digest"] == index.digest
    assert api(registry.requests(since=mark)) == []

    # HEAD from the cache, by tag and by digest.
    for ref in ("1", index.digest):
        head = proxy.call("HEAD", f"/v2/app/manifests/{ref}", headers={"Accept": ACCEPT_ALL})
        assert head.status == 200
        assert head.body == b""
        assert head.headers["Content-Type"] == index.manifest.media_type
        assert head.headers["Content-Length"] == str(len(index.manifest.raw))
        assert head.headers["Docker-Content-Digest"] == index.digest
    assert api(registry.requests(since=mark)) == []

    # A child by digest, fetched then cached, exact as well.
    child = index.children[0].manifest
    for _ in range(2):
        got = get_manifest(proxy, "app", child.digest)
        assert got.body == child.raw
        assert got.headers["Content-Type"] == child.media_type

    # A client that does not take the cached type: the upstream's answer for its Accept,
    # stored by digest only; the tag keeps its manifest.
    single = mt.OCI_MANIFEST if oci else mt.DOCKER_MANIFEST
    narrow = get_manifest(proxy, "app", "1", accept=single)
    direct = registry.http("GET", "/v2/app/manifests/1", headers={"Accept": single})
    assert narrow.status == direct.status
    if direct.status < 400:
        assert narrow.body == direct.body
        assert narrow.headers["Content-Type"] == direct.headers["Content-Type"]
    else:  # an error: its codes, with the proxy's own messages (never the upstream's text)
        codes = [e["code"] for e in json.loads(narrow.body)["errors"]]
        assert codes == [e["code"] for e in direct.json()["errors"]]
    mark = registry.mark()
    got = get_manifest(proxy, "app", "1")
    assert got.body == index.manifest.raw
    assert got.headers["Content-Type"] == index.manifest.media_type
    assert api(registry.requests(since=mark)) == []


def test_size_limit_evicts_the_least_recently_used_blobs(
    registry: LocalRegistry, start_proxy: Callable[..., ProxyProcess], tmp_path: Path
) -> None:
    images = [make_image(layer_size=150_000, seed=f"lru-{i}") for i in range(3)]
    asyncio.run(seed(registry, "app", [(str(i), img) for i, img in enumerate(images)]))
    layers = [img.blobs[1] for img in images]
    cache = tmp_path / "cache"
    proxy = cached_proxy(start_proxy, registry, cache, "--cache-max-size", "350KB")

    def pull(i: int) -> None:
        answer = proxy.call("GET", f"/v2/app/blobs/{layers[i].digest}")
        assert answer.status == 200
        assert answer.body == layers[i].data

    def fetches(i: int, since: int) -> int:
        return registry.count("GET", "blob", path=layers[i].digest, since=since)

    mark = registry.mark()
    for i in (0, 1, 2):  # the third evicts the first
        pull(i)
    on_disk = sum(f.stat().st_size for f in (cache / "blobs").rglob("*") if f.is_file())
    assert on_disk <= 350_000
    pull(2)
    pull(1)
    pull(0)  # fetched again, evicting the 3rd (least recently used now)
    assert [fetches(i, mark) for i in (0, 1, 2)] == [2, 1, 1]


def test_pass_through_auth_is_asked_for_cache_hits(
    registry_factory: RegistryFactory,
    token_server_factory: TokenServerFactory,
    start_proxy: Callable[..., ProxyProcess],
    skopeo: Skopeo,
    tmp_path: Path,
) -> None:
    private, image = private_image(registry_factory, token_server_factory, "private-cache")
    proxy = cached_proxy(start_proxy, private, tmp_path / "cache")
    pull_to_oci(skopeo, proxy.ref("secret/app:1"), tmp_path / "bob", "--src-creds=bob:builder")
    assert_layout_holds(tmp_path / "bob", image)

    # Cached, but an anonymous client is still sent to the upstream, which says no.
    layer = image.blobs[1]
    for path in (
        f"/v2/secret/app/blobs/{layer.digest}",
        f"/v2/secret/app/manifests/{image.digest}",
        "/v2/secret/app/manifests/1",
    ):
        for method in ("GET", "HEAD"):
            refused = proxy.call(method, path, headers={"Accept": ACCEPT_ALL})
            assert refused.status == 401, (method, path)
            assert "Bearer " in refused.headers["WWW-Authenticate"]
            assert layer.data not in refused.body
    # Not cached either: the one who would start the fetch gets the upstream's no.
    unpulled = make_image(seed="never-pulled-private")
    asyncio.run(seed(private, "secret/app", [("2", unpulled)]))
    refused = proxy.call("GET", f"/v2/secret/app/blobs/{unpulled.blobs[1].digest}")
    assert refused.status == 401
    assert "Bearer " in refused.headers["WWW-Authenticate"]
    bad = skopeo.run(
        "copy", "--src-tls-verify=false", proxy.ref("secret/app:1"), f"oci:{tmp_path}/x:t",
        check=False,
    )  # fmt: skip
    assert bad.returncode != 0

    # Bob again: the upstream is asked (HEADs) and the bytes come from the cache; the
    # anonymous ping is answered as the upstream answered the proxy's own, not sent on.
    mark = private.mark()
    pull_to_oci(skopeo, proxy.ref("secret/app:1"), tmp_path / "again", "--src-creds=bob:builder")
    assert_layout_holds(tmp_path / "again", image)
    asked = private.requests(since=mark)
    assert [r for r in api(asked) if r.method == "GET"] == []
    assert [r for r in asked if r.kind == "base"] == []
    ping = proxy.call("GET", "/v2/")
    assert ping.status == 401
    assert ping.headers["WWW-Authenticate"] == (
        f'Bearer realm="http://{proxy.host}/_token",service="{private.service}"'
    )


def test_proxy_credentials_serve_cache_hits_without_the_upstream(
    registry_factory: RegistryFactory,
    token_server_factory: TokenServerFactory,
    start_proxy: Callable[..., ProxyProcess],
    skopeo: Skopeo,
    tmp_path: Path,
) -> None:
    private, image = private_image(registry_factory, token_server_factory, "proxy-creds-cache")
    auth_header = "Basic " + base64.b64encode(b"bob:builder").decode()
    config = tmp_path / "proxy.yaml"
    config.write_text(
        f"upstreams: [{{host: '{private.host}', auth_header: '{auth_header}'}}]\n"
        f"clients: {{tokens: [letmein]}}\n"
        f"cache: {{directory: '{tmp_path / 'cache'}', max_size: 1GiB, tag_ttl: 1h}}\n"
    )
    proxy = start_proxy("--config", str(config))
    pull_to_oci(skopeo, proxy.ref("secret/app:1"), tmp_path / "one", "--src-creds=x:letmein")
    mark = private.mark()
    pull_to_oci(skopeo, proxy.ref("secret/app:1"), tmp_path / "two", "--src-creds=x:letmein")
    assert_layout_holds(tmp_path / "two", image)
    assert api(private.requests(since=mark)) == []
    # Clients still log in to the proxy.
    assert proxy.call("GET", f"/v2/secret/app/blobs/{image.blobs[1].digest}").status == 401
    refused = skopeo.run(
        "copy", "--src-tls-verify=false", proxy.ref("secret/app:1"), f"oci:{tmp_path}/x:t",
        check=False,
    )  # fmt: skip
    assert refused.returncode != 0


def test_cache_settings_from_flags_environment_and_file(tmp_path: Path) -> None:
    from ocimirror.errors import ConfigError
    from ocimirror.proxy.settings import load_settings
    from ocimirror.settings.sizes import parse_size

    assert parse_size("20GiB") == 20 * 1024**3
    assert parse_size("500MB") == 500_000_000
    assert parse_size("1.5K") == 1500
    assert parse_size("4096") == 4096
    for bad in ("0", "-1", "GiB", "12 parsecs"):
        with pytest.raises(ValueError, match="invalid size"):
            parse_size(bad)

    config = tmp_path / "proxy.yaml"
    config.write_text(f"cache: '{tmp_path / 'from-file'}'\n")
    env = {
        "REGISTRY_HOST": "localhost:5000",
        "OCIMIRROR_PROXY_CACHE_MAX_SIZE": "2GiB",
        "OCIMIRROR_PROXY_TAG_TTL": "10m",
    }
    s = load_settings(config=config, env=env).cache
    assert (s.directory, s.max_size, s.tag_ttl) == (tmp_path / "from-file", 2 * 1024**3, 600)
    s = load_settings(
        config=config,
        cache=str(tmp_path / "flag"),
        cache_max_size="500MB",
        tag_ttl="30s",
        env={**env, "OCIMIRROR_PROXY_CACHE": str(tmp_path / "env")},
    ).cache
    assert (s.directory, s.max_size, s.tag_ttl) == (tmp_path / "flag", 500_000_000, 30)
    assert not load_settings(env={"REGISTRY_HOST": "localhost:5000"}).cache.enabled
    with pytest.raises(ConfigError, match="invalid interval"):
        load_settings(tag_ttl="soon", env={"REGISTRY_HOST": "localhost:5000"})
    config.write_text("cache: {directory: /x, max_size: lots}\n")
    with pytest.raises(ConfigError, match=r"cache\.max_size"):
        load_settings(config=config, env={"REGISTRY_HOST": "localhost:5000"})


def test_accept_negotiation_rules() -> None:
    from ocimirror.proxy.cachedblobs import Unsatisfiable, byte_range
    from ocimirror.proxy.pullthrough import accepts

    assert accepts("", mt.OCI_INDEX)
    assert accepts("*/*", mt.OCI_INDEX)
    assert accepts(f"{mt.OCI_MANIFEST}, application/*", mt.OCI_INDEX)
    assert accepts(f"{mt.OCI_INDEX};q=0.5", mt.OCI_INDEX)
    assert not accepts(f"{mt.OCI_INDEX};q=0, {mt.OCI_MANIFEST}", mt.OCI_INDEX)
    assert not accepts(mt.DOCKER_MANIFEST, mt.DOCKER_MANIFEST_LIST)
    assert byte_range("bytes=0-9", 100) == (0, 9)
    assert byte_range("bytes=90-200", 100) == (90, 99)
    assert byte_range("bytes=-10", 100) == (90, 99)
    assert byte_range("bytes=0-1,5-6", 100) is None
    assert byte_range("items=0-1", 100) is None
    with pytest.raises(Unsatisfiable):
        byte_range("bytes=100-", 100)
