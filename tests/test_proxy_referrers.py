"""`/v2/NAME/referrers/DIGEST` through the proxy, as an oras or cosign client sees it.

The proxy's application runs in-process (on a clock the tests move), in front of:

* the API case: `ReferrersFront` (testkit) over Debian's distribution 2.8, serving the
  referrers API with `artifactType` filters and `Link` pages;
* the fallback-tag case: Debian's distribution 2.8 itself, which has no referrers API,
  holding cosign-shaped artifacts pushed as oras and cosign push them there;
* a bucket (`file://`) written by `ocimirror copy`, with its fallback index objects.

Upstream requests are counted in the registry's access log and the front's record.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from ocimirror import mediatypes as mt
from ocimirror.proxy.app import make_proxy_app
from ocimirror.proxy.cache import ProxyCache
from ocimirror.proxy.flights import Flights
from ocimirror.proxy.policy import PullPolicy
from ocimirror.proxy.referrerindex import NO_API_TTL, ApiAbsence
from ocimirror.proxy.routing import PROXY
from ocimirror.proxy.settings import load_settings
from ocimirror.reference import Reference
from ocimirror.testkit.artifacts import (
    COSIGN_SIG,
    INTOTO,
    SPDX,
    fallback_tag_of,
    intoto_attestation,
    listing,
    push_fallback,
    signature_referrer,
    spdx_sbom,
)
from ocimirror.testkit.front import Front, registry_error
from ocimirror.testkit.images import SampleImage, make_image, make_index, push
from ocimirror.testkit.referrersfront import ReferrersFront, resolving_fallback_tag
from ocimirror.testkit.registry import LocalRegistry
from ocimirror.testkit.seeding import open_store, store_for
from ocimirror.transfer.copy import CopyOptions
from ocimirror.transfer.engine import run_copies

TTL = 300.0


class Clock:
    """A clock the test moves by hand."""

    def __init__(self, now: float = 10_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class Signed:
    """An image with a signature, an attestation and an SBOM, and a signature of the SBOM."""

    def __init__(self, seed: str = "proxy-ref") -> None:
        self.image = make_image(seed=seed)
        self.sig = signature_referrer(self.image.descriptor)
        self.att = intoto_attestation(self.image.descriptor)
        self.sbom = spdx_sbom(self.image.descriptor)
        self.sbom_sig = signature_referrer(self.sbom.descriptor)

    @property
    def of_image(self) -> tuple[SampleImage, ...]:
        return (self.sig, self.att, self.sbom)

    async def push_api(self, host: str, repo: str = "app") -> None:
        async with open_store(host) as s:
            await push(s, repo, self.image, "v1")
            for a in (*self.of_image, self.sbom_sig):
                await push(s, repo, a)

    async def push_fallback(self, host: str, repo: str = "app") -> None:
        async with open_store(host) as s:
            await push(s, repo, self.image, "v1")
            await push_fallback(s, repo, self.image.digest, *self.of_image)
            await push_fallback(s, repo, self.sbom.digest, self.sbom_sig)


@asynccontextmanager
async def proxy_for(
    host: str, *, cache: Path | None = None, clock: Clock | None = None, prefix: str | None = None
) -> AsyncIterator[TestClient[web.Request, web.Application]]:
    """The proxy's application in front of `host` (under `prefix`), with a cache in `cache`
    if given."""
    clock = clock or Clock()
    kept = ProxyCache(cache, tag_ttl=TTL, clock=clock) if cache is not None else None
    settings = load_settings(registry_host=host, repo_prefix=prefix, env={})
    app = make_proxy_app(settings, cache=kept, policy=PullPolicy(tag_ttl=TTL, clock=clock))
    app[PROXY].referrers_api = ApiAbsence(clock=clock)
    try:
        async with TestClient(TestServer(app, host="127.0.0.1")) as client:
            yield client
    finally:
        if kept is not None:
            await kept.close()


async def referrers(
    client: TestClient[web.Request, web.Application],
    subject: str,
    artifact_type: str | None = None,
    *,
    name: str = "app",
) -> tuple[aiohttp.ClientResponse, dict[str, Any]]:
    """GET the referrers of `subject` through the proxy, as oras discover does."""
    params = {"artifactType": artifact_type} if artifact_type else {}
    resp = await client.get(
        f"/v2/{name}/referrers/{subject}", params=params, headers={"Accept": mt.OCI_INDEX}
    )
    body = await resp.read()
    return resp, json.loads(body) if resp.status == 200 else {"raw": body.decode()}


def digests_of(doc: dict[str, Any]) -> set[str]:
    return {m["digest"] for m in doc["manifests"]}


def host_of(client: TestClient[web.Request, web.Application]) -> str:
    return f"127.0.0.1:{client.port}"


async def metric(client: TestClient[web.Request, web.Application], name: str, kind: str) -> float:
    """A counter of the proxy's /metrics, for one `kind`."""
    text = await (await client.get("/metrics")).text()
    wanted = f'{name}{{kind="{kind}"}} '
    return sum(float(line[len(wanted) :]) for line in text.splitlines() if line.startswith(wanted))


# -- the API case --------------------------------------------------------------------------


async def test_api_upstream_pages_are_merged_and_the_filter_goes_upstream(
    registry: LocalRegistry,
) -> None:
    art = Signed()
    async with ReferrersFront(registry, page_size=1).running() as front:
        await art.push_api(front.host, "team/app")
        async with proxy_for(front.host, prefix="team") as proxy:
            mark = len(front.seen)
            resp, doc = await referrers(proxy, art.image.digest)
            assert resp.status == 200
            assert resp.headers["Content-Type"] == mt.OCI_INDEX
            assert "OCI-Filters-Applied" not in resp.headers
            assert "Link" not in resp.headers  # the pages were followed by the proxy
            assert doc["mediaType"] == mt.OCI_INDEX
            assert doc["manifests"] == front.referrers_of("team/app", art.image.digest)
            assert digests_of(doc) == {a.digest for a in art.of_image}
            asks = [s for s in front.seen[mark:] if s.kind == "referrers"]
            assert len(asks) == 3  # three pages of one, under the prefix
            assert all(s.path == f"/v2/team/app/referrers/{art.image.digest}" for s in asks)

            mark = len(front.seen)
            resp, doc = await referrers(proxy, art.image.digest, SPDX)
            assert resp.headers["OCI-Filters-Applied"] == "artifactType"
            assert doc["manifests"] == [listing(art.sbom)]
            asks = [s for s in front.seen[mark:] if s.kind == "referrers"]
            assert [s.query.get("artifactType") for s in asks] == [SPDX]

            # A referrer of a referrer; a HEAD; an unknown subject (an empty index).
            resp, doc = await referrers(proxy, art.sbom.digest)
            assert digests_of(doc) == {art.sbom_sig.digest}
            head = await proxy.head(f"/v2/app/referrers/{art.image.digest}")
            assert head.status == 200
            assert head.headers["Content-Type"] == mt.OCI_INDEX
            resp, doc = await referrers(proxy, "sha256:" + "0" * 64)
            assert doc == {"schemaVersion": 2, "mediaType": mt.OCI_INDEX, "manifests": []}


async def test_a_client_copying_through_the_proxy_gets_every_referrer(
    registry_pair: tuple[LocalRegistry, LocalRegistry],
) -> None:
    """ocimirror's own client, reading through the proxy of a registry without the API:
    it finds the referrers by the API (the proxy's), signature of the SBOM included."""
    src, dst = registry_pair
    art = Signed("proxy-copy")
    await art.push_fallback(src.host)
    async with proxy_for(src.host) as proxy:
        summary = await run_copies(
            [(Reference.parse(f"{host_of(proxy)}/app:v1"), Reference.parse(f"{dst.host}/app:v1"))],
            copy_options=CopyOptions(),
        )
    (result,) = summary.results
    assert result.status == "copied", result.error
    copied = {r.digest: r.via for r in result.referrers if r.status == "copied"}
    assert copied == dict.fromkeys([a.digest for a in (*art.of_image, art.sbom_sig)], "api")
    assert sorted(dst.tags("app")) == sorted(
        ["v1", fallback_tag_of(art.image.digest), fallback_tag_of(art.sbom.digest)]
    )


@pytest.mark.parametrize("cached", [False, True])
async def test_a_pass_through_client_logs_in_through_the_proxy_to_read_them(
    token_registry: LocalRegistry, tmp_path: Path, cached: bool
) -> None:
    """A registry with token auth and no API: the client's anonymous request gets the
    challenge (the proxy's realm), its token from the proxy's
    `/_token`, then the referrers, as any registry client does."""
    art = Signed("proxy-token")
    s = store_for(token_registry)
    try:
        await push(s, "app", art.image, "v1")
        await push_fallback(s, "app", art.image.digest, *art.of_image)
    finally:
        await s.close()
    async with proxy_for(token_registry.host, cache=tmp_path / "c" if cached else None) as proxy:
        resp, doc = await referrers(proxy, art.image.digest)
        assert resp.status == 401
        challenge = resp.headers["WWW-Authenticate"]
        assert f"{host_of(proxy)}/_token" in challenge
        assert token_registry.host not in doc["raw"]
        async with open_store(host_of(proxy)) as client:
            listed = await client.referrers("app", art.image.digest)
            assert listed is not None  # the proxy's API answered
            assert [d.digest for d in listed] == [a.digest for a in art.of_image]
            mark = token_registry.mark()
            assert await client.referrers("app", art.image.digest) == listed
            asked = [r for r in token_registry.requests(since=mark) if r.method == "GET"]
            assert len(asked) == (0 if cached else 1)  # cached: granted to that client
        # Cached or not, a client the upstream has not let read them is asked to log in.
        resp, doc = await referrers(proxy, art.image.digest)
        assert resp.status == 401


# -- the fallback-tag case -------------------------------------------------------------------


async def test_fallback_upstream_answers_from_the_tag_and_its_absence_is_remembered(
    registry: LocalRegistry,
) -> None:
    art = Signed("proxy-fallback")
    await art.push_fallback(registry.host)
    bare = make_image(seed="proxy-bare")
    async with open_store(registry.host) as s:
        await push(s, "app", bare, "bare")
    clock = Clock()
    async with proxy_for(registry.host, clock=clock) as proxy:
        mark = registry.mark()
        resp, doc = await referrers(proxy, art.image.digest)
        assert resp.status == 200
        assert doc["manifests"] == [listing(a) for a in art.of_image]
        assert "OCI-Filters-Applied" not in resp.headers
        resp, doc = await referrers(proxy, art.image.digest, COSIGN_SIG)
        assert resp.headers["OCI-Filters-Applied"] == "artifactType"
        assert doc["manifests"] == [listing(art.sig)]
        # No fallback tag: the empty index the spec asks for.
        resp, doc = await referrers(proxy, bare.digest)
        assert resp.status == 200
        assert doc == {"schemaVersion": 2, "mediaType": mt.OCI_INDEX, "manifests": []}
        # distribution 2.8's 404: asked once, then fallback tags only (one GET each).
        assert registry.count("GET", "referrers", since=mark) == 1
        assert registry.count("GET", "manifest", since=mark) == 3

        clock.advance(NO_API_TTL - 1)
        mark = registry.mark()
        await referrers(proxy, art.sbom.digest)
        assert registry.count("GET", "referrers", since=mark) == 0
        clock.advance(1)  # the absence is forgotten: the API is asked again, once
        resp, doc = await referrers(proxy, art.sbom.digest)
        assert doc["manifests"] == [listing(art.sbom_sig)]
        await referrers(proxy, art.image.digest)
        assert registry.count("GET", "referrers", since=mark) == 1


async def test_a_fallback_tag_resolving_to_the_subject_lists_nothing(
    registry: LocalRegistry,
) -> None:
    """Some registries answer any `sha256-<hex>` tag with the manifest of that digest: an
    index's own children are no referrers of it."""
    image = make_index(("linux/amd64", "linux/arm64"), seed="proxy-self")
    async with open_store(registry.host) as s:
        await push(s, "app", image, "v1")

    async with (
        Front(registry, resolving_fallback_tag(image.digest)).running() as front,
        proxy_for(front.host) as proxy,
    ):
        resp, doc = await referrers(proxy, image.digest)
        assert resp.status == 200
        assert doc["manifests"] == []
        assert [s.status for s in front.of("GET", "manifest")] == [200]  # it was asked


async def test_a_next_page_elsewhere_is_refused_and_never_followed(
    registry: LocalRegistry,
) -> None:
    art = Signed("proxy-link")
    elsewhere: list[str] = []

    async def foreign(front: Front, request: web.Request, body: bytes) -> web.StreamResponse | None:
        if "/referrers/" not in request.path:
            return None
        if request.query.get("page"):
            elsewhere.append(request.path_qs)
        target = links[request.path.rsplit("/", 1)[1]]
        doc = {"schemaVersion": 2, "mediaType": mt.OCI_INDEX, "manifests": [listing(art.sig)]}
        return web.json_response(doc, headers={"Link": f'<{target}>; rel="next"'})

    async with Front(registry, foreign).running() as front:
        await art.push_api(front.host)
        links = {
            art.image.digest: f"http://127.0.0.2:{front.host.rsplit(':', 1)[1]}/v2/app/referrers/"
            f"{art.image.digest}?page=2",
            art.sbom.digest: f"/v2/other/referrers/{art.sbom.digest}?page=2",
        }
        async with proxy_for(front.host) as proxy:
            for subject in (art.image.digest, art.sbom.digest):
                resp, doc = await referrers(proxy, subject)
                assert resp.status == 502
                assert json.loads(doc["raw"])["errors"][0]["code"] == "UNAVAILABLE"
                assert front.host not in doc["raw"]
                assert "127.0.0.2" not in doc["raw"]
    assert elsewhere == []


# -- through the cache ------------------------------------------------------------------------


async def test_cached_referrers_are_a_tag_fresh_for_the_ttl_then_asked_again(
    registry: LocalRegistry, tmp_path: Path
) -> None:
    art = Signed("proxy-cache")
    clock = Clock()
    async with ReferrersFront(registry).running() as api:
        await art.push_api(api.host)
        async with proxy_for(api.host, cache=tmp_path / "cache", clock=clock) as proxy:
            mark = len(api.seen)
            resp, doc = await referrers(proxy, art.image.digest)
            assert digests_of(doc) == {a.digest for a in art.of_image}
            # Fresh: every filter is answered from the one cached list, nothing asked.
            resp, doc = await referrers(proxy, art.image.digest, INTOTO)
            assert resp.headers["OCI-Filters-Applied"] == "artifactType"
            assert doc["manifests"] == [listing(art.att)]
            await referrers(proxy, art.image.digest)
            asks = [s for s in api.seen[mark:] if s.kind == "referrers"]
            assert len(asks) == 1
            assert asks[0].query.get("artifactType") is None  # the whole list is kept

            # Signed again upstream: unseen while the answer is fresh, seen once stale.
            later = signature_referrer(art.image.descriptor, artifact_type="application/x-later")
            async with open_store(api.host) as s:
                await push(s, "app", later)
            clock.advance(TTL - 1)
            resp, doc = await referrers(proxy, art.image.digest)
            assert later.digest not in digests_of(doc)
            clock.advance(1)
            resp, doc = await referrers(proxy, art.image.digest)
            assert later.digest in digests_of(doc)
            assert "Warning" not in resp.headers
            asks = [s for s in api.seen[mark:] if s.kind == "referrers"]
            assert len(asks) == 2
            assert await metric(proxy, "ocimirror_proxy_cache_hits_total", "referrers") == 3
            assert await metric(proxy, "ocimirror_proxy_cache_misses_total", "referrers") == 2


class CountingFlights(Flights):
    """The proxy's flights, setting `all_joined` once `expected` requests joined one."""

    def __init__(self, expected: int, all_joined: asyncio.Event) -> None:
        super().__init__()
        self.expected = expected
        self.joins = 0
        self.all_joined = all_joined

    def joined(self, key: tuple[str, ...]) -> asyncio.Event | None:
        flight = super().joined(key)
        if flight is not None:
            self.joins += 1
            if self.joins == self.expected:
                self.all_joined.set()
        return flight


async def test_concurrent_requests_of_a_subject_not_cached_make_one_upstream_request(
    registry: LocalRegistry, tmp_path: Path
) -> None:
    art = Signed("proxy-flight")
    arrived, decided, release = asyncio.Event(), asyncio.Event(), asyncio.Event()

    async def hold(front: Front, request: web.Request, body: bytes) -> web.StreamResponse | None:
        if "/referrers/" in request.path:
            if arrived.is_set():
                decided.set()  # a second upstream request: no single flight, no waiting
            arrived.set()
            await release.wait()
        return None

    await art.push_fallback(registry.host)
    async with (
        Front(registry, hold).running() as gate,
        proxy_for(gate.host, cache=tmp_path / "cache") as proxy,
    ):
        # The gate holds the first upstream request until seven more have joined it.
        flights = CountingFlights(7, decided)
        proxy.server.app[PROXY].flights = flights
        leader = asyncio.create_task(referrers(proxy, art.image.digest))
        await arrived.wait()
        others = [
            asyncio.create_task(referrers(proxy, art.image.digest, t))
            for t in (None, SPDX, INTOTO, COSIGN_SIG, None, SPDX, None)
        ]
        await decided.wait()
        release.set()
        answers = await asyncio.gather(leader, *others)
        assert all(resp.status == 200 for resp, _ in answers)
        assert [doc["manifests"] for _, doc in answers[3:5]] == [
            [listing(art.att)],
            [listing(art.sig)],
        ]
        assert len(gate.of("GET", "referrers")) == 1
        assert await metric(proxy, "ocimirror_proxy_cache_coalesced_total", "referrers") == 7


async def test_cached_referrers_stand_in_when_the_upstream_fails(
    registry: LocalRegistry, tmp_path: Path
) -> None:
    art = Signed("proxy-stale")
    await art.push_fallback(registry.host)
    down = False

    async def outage(front: Front, request: web.Request, body: bytes) -> web.StreamResponse | None:
        return registry_error(503, "UNAVAILABLE") if down else None

    clock = Clock()
    async with (
        Front(registry, outage).running() as front,
        proxy_for(front.host, cache=tmp_path / "cache", clock=clock) as proxy,
    ):
        mark = registry.mark()
        resp, doc = await referrers(proxy, art.image.digest)
        assert doc["manifests"] == [listing(a) for a in art.of_image]
        # Fresh: a filter is served from the cache, the registry is not asked again.
        resp, doc = await referrers(proxy, art.image.digest, INTOTO)
        assert doc["manifests"] == [listing(art.att)]
        assert [(r.method, r.kind) for r in registry.requests(since=mark)] == [
            ("GET", "referrers"),
            ("GET", "manifest"),
        ]
        down = True
        clock.advance(TTL)
        resp, doc = await referrers(proxy, art.image.digest, SPDX)
        assert resp.status == 200
        assert resp.headers["Warning"] == '110 - "Response is Stale"'
        assert doc["manifests"] == [listing(art.sbom)]
        # Never cached: the upstream's failure, in the proxy's words.
        resp, doc = await referrers(proxy, art.sbom.digest)
        assert resp.status == 503
        assert front.host not in doc["raw"]


# -- a bucket as the upstream -------------------------------------------------------------


async def test_bucket_upstream_answers_from_its_fallback_index_objects(
    src_registry: LocalRegistry, tmp_path: Path
) -> None:
    art = Signed("proxy-bucket")
    await art.push_fallback(src_registry.host)
    site = tmp_path / "site"
    summary = await run_copies(
        [
            (
                Reference.parse(f"{src_registry.host}/app:v1"),
                Reference.parse(f"file://{site}//team/app:v1"),
            )
        ]
    )
    assert summary.ok, summary.to_json()
    async with proxy_for(f"file://{site}") as proxy:
        resp, doc = await referrers(proxy, art.image.digest, name="team/app")
        assert resp.status == 200
        assert {m["digest"]: m.get("artifactType") for m in doc["manifests"]} == {
            a.digest: listing(a)["artifactType"] for a in art.of_image
        }
        resp, doc = await referrers(proxy, art.sbom.digest, COSIGN_SIG, name="team/app")
        assert resp.headers["OCI-Filters-Applied"] == "artifactType"
        assert digests_of(doc) == {art.sbom_sig.digest}
        resp, doc = await referrers(proxy, art.sig.digest, name="team/app")
        assert doc == {"schemaVersion": 2, "mediaType": mt.OCI_INDEX, "manifests": []}


BAD_REQUESTS = [
    "/v2/app/referrers/sha256:1234",
    "/v2/app/referrers/sha256:" + "A" * 64,
    "/v2/app/referrers/latest",
    "/v2/app/referrers/sha256:" + "a" * 64 + "?artifactType=..%2F..%2Fx",
    "/v2/app/referrers/sha256:" + "a" * 64 + "?artifactType=a/b&artifactType=c/d",
]


async def test_a_bad_referrers_request_is_refused_before_the_upstream(
    registry: LocalRegistry,
) -> None:
    async with ReferrersFront(registry).running() as front, proxy_for(front.host) as proxy:
        for path in BAD_REQUESTS:
            resp = await proxy.get(path)
            assert resp.status == 400, path
            code = (await resp.json())["errors"][0]["code"]
            assert code in ("DIGEST_INVALID", "UNSUPPORTED"), path
        assert front.seen == []
