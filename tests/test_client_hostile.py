"""A hostile registry must not get the client to send credentials, or a traceback, anywhere.

Each test puts a `Front` (or a small server of its own) on loopback that answers what an
attacker's registry would: a next-page `Link`, an upload `Location` or a redirect to
another host, a downgrade from HTTPS to HTTP, a token service that is not one. `Other` is
that other host, a second loopback server that records whatever reaches it. The client is
driven directly and through the `ocimirror` command (a child process, as a user runs it),
which must end with a clear error line and no traceback.
"""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import pytest
from aiohttp import web

import ocimirror.uploads as uploads_module
from ocimirror.auth.credentials import Credentials
from ocimirror.client import HostOptions, RegistryClient
from ocimirror.errors import AuthError, NotFound, RegistryError
from ocimirror.settings.loading import parse_config
from ocimirror.stores.registry import RegistryStore
from ocimirror.sync.runner import sync_pass
from ocimirror.testkit.command import run_ocimirror
from ocimirror.testkit.front import Front, kind_of, serve
from ocimirror.testkit.images import Blob, make_image, random_layer
from ocimirror.testkit.registry import LocalRegistry
from ocimirror.testkit.seeding import connect, seed
from ocimirror.testkit.tls import TlsFiles

ALICE = Credentials(username="alice", password="wonderland")
ALICE_FLAG = "alice:wonderland"

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


async def not_json(request: web.Request) -> web.StreamResponse:
    """What the other host answers by default: 200 and a page that is not JSON."""
    return web.Response(text="<html>hello from the other host</html>", content_type="text/html")


@dataclass
class Other:
    """Another host on loopback (`localhost:PORT`): records every request it receives."""

    handler: Handler = not_json
    seen: list[tuple[str, str, dict[str, str]]] = field(default_factory=list)
    port: int = 0

    @property
    def url(self) -> str:
        return f"http://localhost:{self.port}"

    @asynccontextmanager
    async def running(self) -> AsyncIterator[Other]:
        async def record(request: web.Request) -> web.StreamResponse:
            self.seen.append((request.method, request.path_qs, dict(request.headers)))
            await request.read()
            return await self.handler(request)

        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", record)
        async with serve(app) as port:
            self.port = port
            yield self

    def authorizations(self) -> list[str]:
        """The Authorization headers it received (must stay empty)."""
        return [h["Authorization"] for _, _, h in self.seen if "Authorization" in h]


async def ocimirror(*args: str) -> subprocess.CompletedProcess[str]:
    """Run the command in a thread, so the servers of this event loop keep answering."""
    return await asyncio.to_thread(run_ocimirror, *args, timeout=120)


def assert_clean_failure(out: subprocess.CompletedProcess[str], message: str) -> None:
    """Exit 1 with `message` on stderr, no traceback and no password."""
    assert out.returncode == 1, out.stderr
    assert message in out.stderr
    assert "Traceback" not in out.stderr
    assert "wonderland" not in out.stderr + out.stdout


async def chunks_of(data: bytes) -> AsyncIterator[bytes]:
    yield data


# -- tag list pagination ------------------------------------------------------------------


async def test_next_page_link_to_another_host_is_refused(htpasswd_registry: LocalRegistry) -> None:
    await seed(htpasswd_registry, "secret/app", [("1", make_image(layer_size=100, seed="l"))])
    async with Other().running() as other:

        async def link_away(front: Front, request: web.Request, body: bytes) -> web.Response | None:
            if kind_of(request) != "tags":
                return None
            resp = await front.forward(request, body)
            resp.headers["Link"] = f'<{other.url}/v2/secret/app/tags/list?last=1>; rel="next"'
            return resp

        async with (
            Front(htpasswd_registry, link_away).running() as front,
            connect(front.host, credentials=ALICE) as client,
        ):
            with pytest.raises(RegistryError) as caught:
                await client.list_tags("secret/app")
            assert str(caught.value) == (
                f"{front.host}/secret/app: tags list: the next-page link points at another host"
                f" ({other.url}); refused, the credentials are for {front.url}"
            )
            # The first page was read with the credentials (after the 401 that asks for them).
            assert [s.status for s in front.of("GET", "tags")] == [401, 200]
            assert front.of("GET", "tags")[1].headers["Authorization"].startswith("Basic ")

            out = await ocimirror(
                "copy",
                "--all-tags",
                "--src-creds",
                ALICE_FLAG,
                f"{front.host}/secret/app",
                "oci:/nonexistent-never-written",
            )
        assert_clean_failure(out, "the next-page link points at another host")
    assert other.seen == []


async def test_a_next_page_on_the_same_host_is_followed_relative_to_the_page(
    registry: LocalRegistry,
) -> None:
    await seed(registry, "app", [(t, make_image(layer_size=100, seed="p")) for t in ("a", "b")])

    async def two_pages(front: Front, request: web.Request, body: bytes) -> web.Response | None:
        if kind_of(request) != "tags":
            return None
        if "last" in request.query:
            return web.json_response({"name": "app", "tags": ["b"]})
        return web.json_response(
            {"name": "app", "tags": ["a"]},
            headers={"Link": '<list?last=a&n=1>; rel="next", </v2/elsewhere>; rel="prev"'},
        )

    async with Front(registry, two_pages).running() as front, connect(front.host) as client:
        assert await client.list_tags("app") == ["a", "b"]
    assert [s.query.get("last") for s in front.of("GET", "tags")] == [None, "a"]
    assert front.of("GET", "tags")[1].path == "/v2/app/tags/list"


@pytest.mark.parametrize(
    ("body", "problem"),
    [
        (b"<html>not a registry</html>", "the answer is not JSON"),
        (b"[1, 2]", "the answer is not a JSON object"),
        (b'{"name": "app", "tags": "latest"}', "'tags' is not a list of strings"),
        (b'{"name": "app", "tags": [1, "a"]}', "'tags' is not a list of strings"),
    ],
)
async def test_a_tags_list_that_is_not_the_document_is_a_clear_error(
    registry: LocalRegistry, body: bytes, problem: str
) -> None:
    async def garbage(front: Front, request: web.Request, _: bytes) -> web.Response | None:
        if kind_of(request) != "tags":
            return None
        return web.Response(body=body, content_type="application/json")

    async with (
        Front(registry, garbage).running() as front,
        connect(front.host) as client,
    ):
        with pytest.raises(RegistryError) as caught:
            await client.list_tags("app")
        assert str(caught.value) == f"{front.host}/app: tags list: {problem}"
        if problem == "the answer is not JSON":
            out = await ocimirror("copy", "--all-tags", f"{front.host}/app", "oci:/nowhere")
            assert_clean_failure(out, f"{front.host}/app: tags list: the answer is not JSON")


# -- uploads ------------------------------------------------------------------------------


async def test_upload_location_on_another_host_is_refused(
    src_registry: LocalRegistry, htpasswd_registry: LocalRegistry
) -> None:
    image = make_image(layers=1, layer_size=1000, seed="upload-away")
    await seed(src_registry, "app", [("1", image)])
    async with Other().running() as other:

        async def send_away(front: Front, request: web.Request, body: bytes) -> web.Response | None:
            if request.method != "POST" or kind_of(request) != "upload":
                return None
            resp = await front.forward(request, body)  # the registry asks for credentials
            if resp.status == 202:
                resp.headers["Location"] = f"{other.url}/v2/team/app/blobs/uploads/x?_state=y"
            return resp

        async with Front(htpasswd_registry, send_away).running() as front:
            store = RegistryStore(RegistryClient(front.host, credentials=ALICE))
            blob = Blob("application/octet-stream", b"layer bytes")
            try:
                with pytest.raises(RegistryError) as caught:
                    await store.put_blob("team/app", blob.descriptor, chunks_of(blob.data))
            finally:
                await store.close()
            assert str(caught.value) == (
                f"{front.host}/team/app: the registry sent the upload to another host"
                f" ({other.url}); refused, the credentials are for {front.url}"
            )
            # The POST went to the registry with the credentials; nothing went further.
            assert front.of("POST", "upload")[-1].headers["Authorization"].startswith("Basic ")

            out = await ocimirror(
                "copy",
                "--dest-creds",
                ALICE_FLAG,
                f"{src_registry.host}/app:1",
                f"{front.host}/team/app:1",
            )
        assert_clean_failure(out, "the registry sent the upload to another host")
    assert other.seen == []
    assert htpasswd_registry.count(method="PUT") == 0


async def test_chunk_location_on_another_host_is_refused(
    htpasswd_registry: LocalRegistry, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(uploads_module, "CHUNK_SIZE", 1000)
    blob = Blob("application/octet-stream", random_layer(2500, seed="chunks-away"))
    async with Other().running() as other:

        async def send_away(front: Front, request: web.Request, body: bytes) -> web.Response | None:
            if request.method != "PATCH":
                return None
            resp = await front.forward(request, body)
            resp.headers["Location"] = f"{other.url}/v2/team/app/blobs/uploads/next"
            return resp

        async with Front(htpasswd_registry, send_away).running() as front:
            client = RegistryClient(front.host, credentials=ALICE)
            client.chunked_uploads = True
            store = RegistryStore(client)
            try:
                with pytest.raises(RegistryError, match="sent the upload to another host"):
                    await store.put_blob("team/app", blob.descriptor, chunks_of(blob.data))
            finally:
                await store.close()
        assert len(front.of("PATCH")) == 1  # the first chunk, to the registry
        assert len(front.of("DELETE")) == 1  # the session abandoned, at the registry
    assert other.seen == []


# -- redirects ----------------------------------------------------------------------------


async def test_manifest_redirect_to_another_host_carries_no_credentials(
    htpasswd_registry: LocalRegistry,
) -> None:
    image = make_image(layer_size=100, seed="redirect-manifest")
    await seed(htpasswd_registry, "secret/app", [("1", image)])

    async def serve_manifest(request: web.Request) -> web.StreamResponse:
        return web.Response(body=image.manifest.raw, content_type=image.manifest.media_type)

    async with Other(serve_manifest).running() as other:

        async def redirect(front: Front, request: web.Request, body: bytes) -> web.Response | None:
            if request.method != "GET" or kind_of(request) != "manifest":
                return None
            resp = await front.forward(request, body)  # the registry decides who may read
            if resp.status != 200:
                return resp
            return web.Response(status=307, headers={"Location": f"{other.url}/m?sig=s3-like"})

        async with (
            Front(htpasswd_registry, redirect).running() as front,
            connect(front.host, credentials=ALICE) as client,
        ):
            got = await client.get_manifest("secret/app", "1")
    assert got.raw == image.manifest.raw
    assert [(m, p) for m, p, _ in other.seen] == [("GET", "/m?sig=s3-like")]
    assert other.authorizations() == []
    redirected = [s for s in front.of("GET", "manifest") if s.status == 307]
    assert redirected
    assert redirected[0].headers["Authorization"].startswith("Basic ")


async def test_redirect_back_to_the_registry_gets_credentials_again(
    htpasswd_registry: LocalRegistry,
) -> None:
    """Registry → other host → registry: only the registry's own hops carry Authorization."""
    image = make_image(layer_size=100, seed="round-trip")
    await seed(htpasswd_registry, "secret/app", [("1", image)])
    front_url: list[str] = []

    async def bounce(request: web.Request) -> web.StreamResponse:
        raise web.HTTPTemporaryRedirect(f"{front_url[0]}/v2/secret/app/manifests/1?back=1")

    async with Other(bounce).running() as other:

        async def away(front: Front, request: web.Request, body: bytes) -> web.Response | None:
            if kind_of(request) == "manifest" and "back" not in request.query:
                return web.Response(status=302, headers={"Location": f"{other.url}/bounce"})
            return None

        async with Front(htpasswd_registry, away).running() as front:
            front_url.append(front.url)
            async with connect(front.host, credentials=ALICE) as client:
                got = await client.get_manifest("secret/app", "1")
    assert got.raw == image.manifest.raw
    assert other.authorizations() == []
    back = [s for s in front.of("GET", "manifest") if "back" in s.query]
    assert back
    assert back[-1].headers["Authorization"].startswith("Basic ")


@asynccontextmanager
async def hostile_tls_registry(tls_files: TlsFiles, handler: Handler) -> AsyncIterator[str]:
    """A registry over HTTPS on 127.0.0.1 that answers with `handler`; yields its host."""
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handler)
    async with serve(app, tls_files.server_context()) as port:
        yield f"127.0.0.1:{port}"


async def test_redirect_from_https_down_to_http_is_refused(tls_files: TlsFiles) -> None:
    async with Other().running() as other:

        async def basic_then_downgrade(request: web.Request) -> web.StreamResponse:
            if "Authorization" not in request.headers:
                return web.Response(status=401, headers={"WWW-Authenticate": 'Basic realm="r"'})
            return web.Response(status=301, headers={"Location": f"{other.url}/v2/app/m"})

        async with hostile_tls_registry(tls_files, basic_then_downgrade) as host:
            options = HostOptions(plain_http=False, ca_file=str(tls_files.ca_cert))
            async with connect(host, credentials=ALICE, options=options) as client:
                with pytest.raises(RegistryError) as caught:
                    await client.get_manifest("app", "1")
                with pytest.raises(RegistryError, match="from HTTPS down to plain HTTP"):
                    async with client.open_blob("app", "sha256:" + "0" * 64):
                        pass
    assert str(caught.value) == (
        f"{host}: refused a redirect from HTTPS down to plain HTTP ({other.url})"
    )
    assert other.seen == []


async def test_http_links_to_the_registry_itself_are_taken_as_https(tls_files: TlsFiles) -> None:
    """A registry behind a TLS proxy that writes its links in HTTP: upgraded, not refused."""
    host_of: list[str] = []
    seen: list[str] = []

    async def pages(request: web.Request) -> web.StreamResponse:
        seen.append(request.path_qs)
        if "last" in request.query:
            return web.json_response({"name": "app", "tags": ["b"]})
        nxt = f"http://{host_of[0]}/v2/app/tags/list?last=a"
        return web.json_response(
            {"name": "app", "tags": ["a"]}, headers={"Link": f'<{nxt}>; rel="next"'}
        )

    async with hostile_tls_registry(tls_files, pages) as host:
        host_of.append(host)
        options = HostOptions(plain_http=False, ca_file=str(tls_files.ca_cert))
        async with connect(host, options=options) as client:
            assert await client.list_tags("app") == ["a", "b"]
    assert seen == ["/v2/app/tags/list?n=1000", "/v2/app/tags/list?last=a"]


async def test_redirect_to_another_scheme_is_refused(registry: LocalRegistry) -> None:
    async def to_file(front: Front, request: web.Request, _: bytes) -> web.Response | None:
        if kind_of(request) == "manifest":
            return web.Response(status=302, headers={"Location": "file:///etc/passwd"})
        return None

    async with Front(registry, to_file).running() as front, connect(front.host) as client:
        with pytest.raises(RegistryError, match=f"^{front.host}: refused a redirect to"):
            await client.get_manifest("app", "1")


# -- token services -----------------------------------------------------------------------


async def test_a_token_service_that_answers_no_json_is_a_clear_error(
    registry: LocalRegistry,
) -> None:
    async with Other().running() as other:

        async def challenge(front: Front, request: web.Request, _: bytes) -> web.Response | None:
            realm = f"{other.url}/token"
            return web.Response(
                status=401, headers={"WWW-Authenticate": f'Bearer realm="{realm}",service="s"'}
            )

        async with (
            Front(registry, challenge).running() as front,
            connect(front.host) as client,
        ):
            with pytest.raises(AuthError) as caught:
                await client.list_tags("app")
            assert str(caught.value) == (
                f"{front.host}: token service {other.url}/token returned no token"
            )
            out = await ocimirror("copy", f"{front.host}/app:1", "oci:/nowhere:1")
        assert_clean_failure(out, f"token service {other.url}/token returned no token")


async def test_credentials_never_go_to_a_plain_http_token_service(tls_files: TlsFiles) -> None:
    async with Other().running() as other:

        async def challenge(request: web.Request) -> web.StreamResponse:
            realm = f"{other.url}/token"
            return web.Response(
                status=401, headers={"WWW-Authenticate": f'Bearer realm="{realm}",service="s"'}
            )

        async with hostile_tls_registry(tls_files, challenge) as host:
            options = HostOptions(plain_http=False, ca_file=str(tls_files.ca_cert))
            async with connect(host, credentials=ALICE, options=options) as client:
                with pytest.raises(AuthError) as caught:
                    await client.head_manifest("app", "1")
    assert str(caught.value) == (
        f"{host}: refused to send credentials to the token service {other.url}: it is not HTTPS"
    )
    assert other.seen == []


async def test_anonymous_token_from_a_plain_http_service_still_works(
    registry: LocalRegistry,
) -> None:
    """Without credentials nothing can leak: a plain-HTTP realm is asked as before."""
    async with Other().running() as other:

        async def challenge(front: Front, request: web.Request, _: bytes) -> web.Response | None:
            if request.headers.get("Authorization") == "Bearer t0k3n":
                return None
            realm = f"{other.url}/token"
            return web.Response(status=401, headers={"WWW-Authenticate": f'Bearer realm="{realm}"'})

        async def token(request: web.Request) -> web.StreamResponse:
            return web.json_response({"token": "t0k3n"})

        other.handler = token
        async with (
            Front(registry, challenge).running() as front,
            connect(front.host) as client,
        ):
            with pytest.raises(NotFound):
                await client.get_manifest("app", "1")
    assert [p.split("?")[0] for _, p, _ in other.seen] == ["/token"]


# -- tags a registry should never list ------------------------------------------------------

#: Names a hostile (or broken) registry lists among its tags: none is a tag.
BAD_TAGS = ["..", "x" * 200, "-dash", "a/b"]


def listing_bad_tags(front: Front) -> None:
    """Make `front` add BAD_TAGS to every tags list the registry answers."""

    async def add(front: Front, request: web.Request, body: bytes) -> web.Response | None:
        if kind_of(request) != "tags":
            return None
        resp = await front.forward(request, body)
        assert isinstance(resp.body, bytes)
        doc = json.loads(resp.body)
        return web.json_response({**doc, "tags": [*BAD_TAGS[:2], *doc["tags"], *BAD_TAGS[2:]]})

    front.intercept = add


async def test_all_tags_copy_skips_invalid_tags_and_copies_the_others(
    registry_pair: tuple[LocalRegistry, LocalRegistry],
) -> None:
    src, dst = registry_pair
    await seed(src, "app", [(t, make_image(layer_size=300, seed=t)) for t in ("1", "2")])
    async with Front(src).running() as front:
        listing_bad_tags(front)
        out = await ocimirror(
            "copy", "--all-tags", "--json", f"{front.host}/app", f"{dst.host}/app"
        )
        assert out.returncode == 0, out.stderr
        text = await ocimirror("copy", "--all-tags", f"{front.host}/app", f"{dst.host}/app2")
    summary = json.loads(out.stdout)
    assert summary["ok"] is True
    assert summary["counts"] == {"copied": 2, "unchanged": 0, "failed": 0}
    assert summary["skipped"] == [
        {"source": f"{front.host}/app", "tag": t, "reason": "invalid tag"} for t in BAD_TAGS
    ]
    assert dst.tags("app") == dst.tags("app2") == ["1", "2"]
    # Never asked for: no bad name became a request path (referrer lookups name digests).
    assert all(
        s.path.endswith(("/tags/list", "/manifests/1", "/manifests/2"))
        or "/blobs/" in s.path
        or re.fullmatch(
            r"/v2/app/(referrers/sha256:|manifests/sha256-)[0-9a-f]{64}(\.\w+)?", s.path
        )
        for s in front.seen
    )
    assert text.returncode == 0, text.stderr
    assert f"skipped {front.host}/app: invalid tag '..'" in text.stderr
    assert f"skipped {front.host}/app: invalid tag 'xxxxxxxx" in text.stderr
    assert "Traceback" not in text.stderr


async def test_sync_plan_skips_invalid_tags(
    registry_pair: tuple[LocalRegistry, LocalRegistry],
) -> None:
    src, dst = registry_pair
    await seed(src, "lib/app", [(t, make_image(layer_size=300, seed=t)) for t in ("1", "2")])
    async with Front(src).running() as front:
        listing_bad_tags(front)
        config = parse_config(
            f"mirrors:\n  - name: app\n    source: {front.host}/lib/app\n"
            f"    targets: [{dst.host}/mirror/app]\n"
        )
        (dry,) = await sync_pass(config, state=None, mode="dry-run")
    assert dry.plan.errors == []
    assert {t.target.ref: t.reason for t in dry.plan.tasks} == {"1": "new", "2": "new"}
    assert dry.status == "ok"
