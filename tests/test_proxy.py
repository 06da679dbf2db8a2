"""`ocimirror proxy` as a real process in front of real registries on loopback, judged by
skopeo and podman: prefixes, token auth, scope rewriting, pagination, redirects, several
upstreams, containerd's `?ns=`, credentials on either side, and writes refused."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import shutil
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import urlencode

import pytest

from ocimirror import digest as digests
from ocimirror.testkit.images import SampleImage, make_image, make_index
from ocimirror.testkit.podman import podman_pull
from ocimirror.testkit.proxy import PROXY_COMMAND, PROXY_ENV, ProxyProcess
from ocimirror.testkit.registry import LocalRegistry
from ocimirror.testkit.scripted import ScriptedHandler, ScriptedServer
from ocimirror.testkit.seeding import seed
from ocimirror.testkit.skopeo import Skopeo
from ocimirror.testkit.tokenserver import TokenServer

TokenServerFactory = Callable[..., TokenServer]
RegistryFactory = Callable[..., LocalRegistry]


def private_image(
    registry_factory: RegistryFactory, token_server_factory: TokenServerFactory, seed_text: str
) -> tuple[LocalRegistry, SampleImage]:
    """A token-auth registry that lets only bob (password builder) pull, holding one image
    made from `seed_text` at secret/app:1."""
    server = token_server_factory(users={"bob": "builder"}, anonymous_pull=False)
    private = registry_factory("private", auth="token", token_server=server)
    image = make_image(seed=seed_text)
    asyncio.run(seed(private, "secret/app", [("1", image)]))
    return private, image


def pull_to_oci(skopeo: Skopeo, ref: str, dest: Path, *args: str) -> None:
    """skopeo copy through the proxy (plain HTTP) into an OCI layout."""
    skopeo.run("copy", "--src-tls-verify=false", *args, ref, f"oci:{dest}:t")


def assert_layout_holds(dest: Path, image: SampleImage) -> None:
    """Every blob and manifest of `image` is in the layout, byte for byte."""
    for blob in image.all_blobs():
        assert (dest / "blobs" / "sha256" / blob.digest.split(":")[1]).read_bytes() == blob.data
    for m in image.all_manifests():
        assert (dest / "blobs" / "sha256" / m.digest.split(":")[1]).read_bytes() == m.raw


def config_hex(image: SampleImage) -> str:
    """The hex of an image's config digest: podman's image id."""
    return image.blobs[0].digest.split(":")[1]


# -- a stand-in upstream and storage ------------------------------------------------------


class StandIn:
    """A tiny upstream with scripted answers, and a storage host blobs redirect to."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, str, dict[str, str]]] = []
        self.blob = b"blob bytes from the storage host\n" * 100
        self.digest = digests.of(self.blob)
        self.storage_port = 0
        outer = self

        class Handler(ScriptedHandler):
            def do_GET(self) -> None:
                outer.seen.append((self.command, self.path, dict(self.headers)))
                path = self.path.partition("?")[0]
                if path == "/v2/":
                    self.answer(200, b"{}")
                elif path == "/v2/pre/foo/tags/list":
                    link = '</v2/pre/foo/tags/list?last=a&n=1>; rel="next"'
                    self.answer(200, b'{"name":"pre/foo","tags":["a"]}', {"Link": link})
                elif path == f"/v2/pre/foo/blobs/{outer.digest}":
                    location = f"http://127.0.0.1:{outer.storage_port}/storage/x?sig=1"
                    self.answer(307, b"", {"Location": location})
                elif path == "/v2/pre/foo/manifests/old":
                    self.answer(301, b"", {"Location": "/v2/pre/foo/manifests/new"})
                elif path == "/storage/x":
                    self.answer(200, outer.blob, {"Content-Type": "application/octet-stream"})
                else:
                    self.answer(404, b'{"errors":[{"code":"NAME_UNKNOWN"}]}')

        self.upstream = ScriptedServer(Handler)
        self.storage = ScriptedServer(Handler)
        self.storage_port = self.storage.port

    @property
    def host(self) -> str:
        """`127.0.0.1:PORT` of the upstream."""
        return self.upstream.host

    def stop(self) -> None:
        """Stop both servers."""
        self.upstream.stop()
        self.storage.stop()


@pytest.fixture
def stand_in() -> Iterator[StandIn]:
    """A scripted upstream with a storage host."""
    s = StandIn()
    yield s
    s.stop()


# -- tests ----------------------------------------------------------------------------------


def test_prefix_over_anonymous_upstream_skopeo_and_podman(
    registry: LocalRegistry,
    start_proxy: Callable[..., ProxyProcess],
    skopeo: Skopeo,
    tmp_path: Path,
) -> None:
    index = make_index(["linux/amd64", "linux/arm64"], layer_size=2000, seed="px")
    image = make_image(layers=2, layer_size=5000, seed="px-single")
    asyncio.run(seed(registry, "mirror/team/app", [("1", index), ("single", image)]))
    # The environment names another upstream: the flags win.
    proxy = start_proxy(
        "--registry-host",
        registry.host,
        "--repo-prefix",
        "mirror",
        env={"REGISTRY_HOST": "127.0.0.1:9", "REPO_PREFIX": "elsewhere"},
    )
    mark = registry.mark()
    assert skopeo.manifest(proxy.ref("team/app:1"), registry=registry) == index.manifest.raw
    pull_to_oci(skopeo, proxy.ref("team/app:1"), tmp_path / "all", "--all")
    assert_layout_holds(tmp_path / "all", index)
    pull_to_oci(skopeo, proxy.ref("team/app:single"), tmp_path / "one")
    assert_layout_holds(tmp_path / "one", image)
    seen = registry.requests(since=mark)
    assert seen
    assert {r.repository for r in seen if r.repository} == {"mirror/team/app"}

    tags = proxy.call("GET", "/v2/team/app/tags/list")
    assert tags.json()["name"] == "team/app"
    assert sorted(tags.json()["tags"]) == ["1", "single"]
    head = proxy.call(
        "HEAD", "/v2/team/app/manifests/1", headers={"Accept": index.manifest.media_type}
    )
    assert head.status == 200
    assert head.headers["Docker-Content-Digest"] == index.digest
    assert head.headers["Content-Length"] == str(index.manifest.size)
    assert proxy.call("GET", "/v2/team/none/manifests/1").status == 404

    if shutil.which("podman") is None:
        pytest.skip("podman is not installed (scripts/bootstrap.sh installs it)")
    result = podman_pull(skopeo, f"{proxy.host}/team/app:single")
    assert result.returncode == 0, result.stderr
    assert config_hex(image) in result.stdout


def test_token_auth_upstream_challenge_and_credentials(
    token_registry: LocalRegistry,
    token_server: TokenServer,
    start_proxy: Callable[..., ProxyProcess],
    skopeo: Skopeo,
    tmp_path: Path,
) -> None:
    image = make_image(layers=1, layer_size=3000, seed="tok")
    asyncio.run(seed(token_registry, "lib/app", [("1", image)]))
    asyncio.run(seed(token_registry, "pre/lib/app", [("1", image)]))
    plain = start_proxy("--registry-host", token_registry.host)
    prefixed = start_proxy("--registry-host", token_registry.host, "--repo-prefix", "pre")

    # The challenge points at the proxy, with the client's names.
    answer = prefixed.call("GET", "/v2/lib/app/manifests/1")
    assert answer.status == 401
    challenge = answer.headers["WWW-Authenticate"]
    assert f'realm="http://{prefixed.host}/_token"' in challenge
    assert f'service="{token_registry.service}"' in challenge
    assert 'scope="repository:lib/app:pull"' in challenge
    assert prefixed.call("GET", "/v2/").status == 401  # the ping says so too

    for proxy, upstream_name in ((plain, "lib/app"), (prefixed, "pre/lib/app")):
        token_server.clear()
        dest = tmp_path / upstream_name.replace("/", "-")
        pull_to_oci(skopeo, proxy.ref("lib/app:1"), dest)
        assert_layout_holds(dest, image)
        asked = [r for r in token_server.requests if r.ok]
        assert asked
        assert all(r.scopes == (f"repository:{upstream_name}:pull",) for r in asked)
        assert all(r.username is None for r in asked)

    # The client's own credentials go through the proxy to the token server.
    token_server.clear()
    skopeo.run("inspect", "--tls-verify=false", "--creds=bob:builder", prefixed.ref("lib/app:1"))
    assert {r.username for r in token_server.requests} == {"bob"}
    bad = skopeo.run(
        "inspect", "--tls-verify=false", "--creds=bob:wrong", prefixed.ref("lib/app:1"), check=False
    )
    assert bad.returncode != 0

    if shutil.which("podman") is None:
        pytest.skip("podman is not installed (scripts/bootstrap.sh installs it)")
    token_server.clear()
    result = podman_pull(skopeo, f"{prefixed.host}/lib/app:1")
    assert result.returncode == 0, result.stderr
    assert config_hex(image) in result.stdout
    assert {r.scopes for r in token_server.requests} == {("repository:pre/lib/app:pull",)}


def test_token_endpoint_rewrites_every_scope(
    token_registry: LocalRegistry,
    token_server: TokenServer,
    start_proxy: Callable[..., ProxyProcess],
) -> None:
    proxy = start_proxy("--registry-host", token_registry.host, "--repo-prefix", "pre")
    service = token_registry.service
    basic = "Basic " + base64.b64encode(b"bob:builder").decode()
    query = urlencode(
        [
            ("service", service),
            ("scope", "repository:a:pull"),
            ("scope", "repository:b/c:pull,push repository:d:pull"),
            ("scope", "registry:catalog:*"),
        ]
    )
    answer = proxy.call("GET", f"/_token?{query}", headers={"Authorization": basic})
    assert answer.status == 200
    assert answer.json()["token"]
    got = token_server.requests[-1]
    # Only `pull` is ever asked for, and only repository scopes go on.
    assert got.scopes == (
        "repository:pre/a:pull",
        "repository:pre/b/c:pull",
        "repository:pre/d:pull",
    )
    assert (got.username, got.service) == ("bob", service)

    # No scope at all (a login), anonymous.
    assert proxy.call("GET", f"/_token?service={service}").status == 200
    assert token_server.requests[-1].scopes == ()

    # The OAuth2 form, POSTed.
    form = urlencode(
        {
            "grant_type": "password",
            "username": "bob",
            "password": "builder",
            "client_id": "test",
            "service": service,
            "scope": "repository:x:pull repository:y/z:pull",
        }
    ).encode()
    posted = proxy.call(
        "POST",
        "/_token",
        body=form,
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert posted.status == 200, posted.body
    assert posted.json()["access_token"]
    got = token_server.requests[-1]
    assert (got.method, got.grant_type, got.username) == ("POST", "password", "bob")
    assert got.scopes == ("repository:pre/x:pull", "repository:pre/y/z:pull")

    # The upstream's refusal comes back as it is.
    wrong = "Basic " + base64.b64encode(b"bob:nope").decode()
    assert proxy.call("GET", f"/_token?{query}", headers={"Authorization": wrong}).status == 401


def test_writes_refused_without_reaching_upstream(
    registry: LocalRegistry,
    start_proxy: Callable[..., ProxyProcess],
    skopeo: Skopeo,
    tmp_path: Path,
) -> None:
    image = make_image(seed="w")
    asyncio.run(seed(registry, "app", [("1", image)]))
    proxy = start_proxy("--registry-host", registry.host, env={"AUTH_HEADER": "Basic Ym9iOng="})
    mark = registry.mark()
    paths = [
        "/v2/app/blobs/uploads/",
        "/v2/app/blobs/uploads/some-session",
        "/v2/app/manifests/1",
        f"/v2/app/blobs/{image.blobs[0].digest}",
        "/v2/",
        "/anything",
    ]
    for method in ("POST", "PUT", "PATCH", "DELETE"):
        for path in paths:
            answer = proxy.call(method, path, body=b"x" if method != "DELETE" else None)
            assert answer.status == 405, (method, path)
            assert answer.json()["errors"][0]["code"] == "UNSUPPORTED"
            assert answer.headers["Allow"] == "GET, HEAD"
    # Reading an upload session is part of a push too.
    assert proxy.call("GET", "/v2/app/blobs/uploads/x").status == 405
    pushed = skopeo.run(
        "copy",
        "--dest-tls-verify=false",
        f"oci:{tmp_path}/nothing:t",
        proxy.ref("app:2"),
        check=False,
    )
    assert pushed.returncode != 0
    src = tmp_path / "src"
    pull_to_oci(skopeo, registry.ref("app:1"), src)
    pushed = skopeo.run(
        "copy", "--dest-tls-verify=false", f"oci:{src}:t", proxy.ref("app:2"), check=False
    )
    assert pushed.returncode != 0
    assert "405" in pushed.stderr or "unsupported" in pushed.stderr.lower()
    assert [r for r in registry.requests(since=mark) if r.method not in ("GET", "HEAD")] == []
    assert registry.tags("app") == ["1"]


def test_browser_redirects_and_their_switch(
    registry: LocalRegistry, start_proxy: Callable[..., ProxyProcess]
) -> None:
    proxy = start_proxy("--registry-host", registry.host, "--repo-prefix", "mirror")
    answer = proxy.call("GET", "/team/app")
    assert answer.status == 307
    assert answer.headers["Location"] == f"http://{registry.host}/mirror/team/app"
    off = start_proxy("--registry-host", registry.host, env={"DISABLE_BROWSER_REDIRECTS": "true"})
    assert off.call("GET", "/team/app").status == 404
    assert off.call("GET", "/v2/").status == 200
    # The flag wins over the environment, either way.
    on = start_proxy("--registry-host", registry.host, env={"DISABLE_BROWSER_REDIRECTS": "1"})
    assert on.call("GET", "/x").status == 404
    assert (
        start_proxy("--registry-host", registry.host, "--disable-browser-redirects")
        .call("GET", "/x")
        .status
        == 404
    )


def test_pagination_and_locations_in_client_names(
    stand_in: StandIn, registry: LocalRegistry, start_proxy: Callable[..., ProxyProcess]
) -> None:
    proxy = start_proxy("--registry-host", stand_in.host, "--repo-prefix", "pre")
    tags = proxy.call("GET", "/v2/foo/tags/list?n=1")
    assert tags.status == 200
    assert tags.json() == {"name": "foo", "tags": ["a"]}
    assert tags.headers["Link"] == '</v2/foo/tags/list?last=a&n=1>; rel="next"'
    assert ("GET", "/v2/pre/foo/tags/list?n=1") in [(m, p) for m, p, _ in stand_in.seen]
    moved = proxy.call("GET", "/v2/foo/manifests/old")
    assert moved.status == 301
    assert moved.headers["Location"] == f"http://{proxy.host}/v2/foo/manifests/new"

    # The catalog of a real registry, one by one, under the prefix.
    for repo in ("pre/a", "pre/b", "other/c", "pre/c/d"):
        asyncio.run(seed(registry, repo, [("1", make_image(seed=repo))]))
    catalog = start_proxy("--registry-host", registry.host, "--repo-prefix", "pre")
    seen: list[str] = []
    path: str | None = "/v2/_catalog?n=1"
    while path is not None:
        page = catalog.call("GET", path)
        assert page.status == 200
        seen += page.json()["repositories"]
        link = page.headers.get("Link")
        path = link.split(";")[0].strip("<>") if link else None
        assert len(seen) < 10
    assert seen == ["a", "b", "c/d"]


def test_blob_redirects_pass_through_or_stream(
    stand_in: StandIn, start_proxy: Callable[..., ProxyProcess]
) -> None:
    path = f"/v2/foo/blobs/{stand_in.digest}"
    token = {"Authorization": "Bearer client-token"}
    passing = start_proxy("--registry-host", stand_in.host, "--repo-prefix", "pre")
    answer = passing.call("GET", path, headers=token)
    assert answer.status == 307
    assert answer.headers["Location"] == f"http://127.0.0.1:{stand_in.storage_port}/storage/x?sig=1"
    assert not any(p.startswith("/storage") for _, p, _ in stand_in.seen)

    # The storage host is on loopback: followed only when private addresses are allowed
    # (test_proxy_hostile: refused otherwise).
    streaming = start_proxy(
        "--registry-host", stand_in.host, "--repo-prefix", "pre", "--stream-blobs",
        "--allow-private-redirects",
    )  # fmt: skip
    answer = streaming.call("GET", path, headers=token)
    assert answer.status == 200
    assert answer.body == stand_in.blob
    upstream = [h for _, p, h in stand_in.seen if p.startswith("/v2/pre/foo/blobs/")]
    storage = [h for _, p, h in stand_in.seen if p.startswith("/storage/")]
    assert upstream[-1].get("Authorization") == "Bearer client-token"
    assert storage
    assert "Authorization" not in storage[-1]  # credentials stay with the registry

    metrics = streaming.call("GET", "/metrics").body.decode()
    assert 'ocimirror_proxy_bytes_total{source="upstream",upstream="127.0.0.1' in metrics
    assert "ocimirror_proxy_requests_total{" in metrics


def test_two_upstreams_and_containerd_ns(
    registry: LocalRegistry,
    token_registry: LocalRegistry,
    token_server: TokenServer,
    start_proxy: Callable[..., ProxyProcess],
    skopeo: Skopeo,
    tmp_path: Path,
) -> None:
    one = make_image(seed="one")
    two = make_image(seed="two")
    asyncio.run(seed(registry, "x/app", [("1", one)]))
    asyncio.run(seed(token_registry, "pre/y", [("1", two)]))
    config = tmp_path / "proxy.yaml"
    config.write_text(
        f"upstreams:\n"
        f"  - {{name: plain, host: '{registry.host}', namespaces: [example.io]}}\n"
        f"  - {{name: tok, host: '{token_registry.host}', prefix: pre}}\n"
    )
    proxy = start_proxy("--config", str(config))
    # The ping: some upstream wants tokens, so the proxy's own challenge.
    ping = proxy.call("GET", "/v2/")
    assert ping.status == 401
    assert f'realm="http://{proxy.host}/_token"' in ping.headers["WWW-Authenticate"]

    assert skopeo.manifest(proxy.ref("plain/x/app:1"), registry=registry) == one.manifest.raw
    token_server.clear()
    pull_to_oci(skopeo, proxy.ref("tok/y:1"), tmp_path / "two")
    assert_layout_holds(tmp_path / "two", two)
    assert {r.scopes for r in token_server.requests} == {("repository:pre/y:pull",)}

    # A challenge from a routed request names the upstream's own token endpoint.
    answer = proxy.call("GET", "/v2/tok/y/manifests/1")
    assert f'realm="http://{proxy.host}/_token/tok"' in answer.headers["WWW-Authenticate"]
    assert 'scope="repository:tok/y:pull"' in answer.headers["WWW-Authenticate"]
    assert proxy.call("GET", "/_token/tok?scope=repository:tok/y:pull").status == 200
    assert token_server.requests[-1].scopes == ("repository:pre/y:pull",)

    # containerd as a mirror: the path has no route component, ?ns= names the registry.
    accept = {"Accept": one.manifest.media_type}
    by_ns = proxy.call("GET", "/v2/x/app/manifests/1?ns=example.io", headers=accept)
    assert by_ns.status == 200
    assert by_ns.body == one.manifest.raw
    by_host = proxy.call("GET", f"/v2/x/app/manifests/1?ns={registry.host}", headers=accept)
    assert by_host.status == 404  # namespaces replaced the host
    assert proxy.call("GET", "/v2/nowhere/manifests/1").status == 404
    assert proxy.call("GET", "/plain/x/app").headers["Location"] == f"http://{registry.host}/x/app"


def test_proxy_credentials_and_client_login(
    registry_factory: RegistryFactory,
    token_server_factory: TokenServerFactory,
    start_proxy: Callable[..., ProxyProcess],
    skopeo: Skopeo,
    tmp_path: Path,
) -> None:
    private, image = private_image(registry_factory, token_server_factory, "private")
    server = private.token_server
    assert server is not None
    auth_header = "Basic " + base64.b64encode(b"bob:builder").decode()
    proxy = start_proxy(
        "--registry-host",
        private.host,
        "--client-token",
        "letmein",
        env={"AUTH_HEADER": auth_header},
    )
    ref = proxy.ref("secret/app:1")
    refused = skopeo.run("inspect", "--tls-verify=false", ref, check=False)
    assert refused.returncode != 0
    assert proxy.call("GET", "/v2/").headers["WWW-Authenticate"].startswith("Basic ")
    server.clear()
    pull_to_oci(skopeo, ref, tmp_path / "out", "--src-creds=anyone:letmein")
    assert_layout_holds(tmp_path / "out", image)
    assert {r.username for r in server.requests} == {"bob"}  # the proxy's own login
    assert proxy.call(
        "GET", "/v2/secret/app/tags/list", headers={"Authorization": "Bearer letmein"}
    ).json() == {"name": "secret/app", "tags": ["1"]}
    # The proxy's login stays with it: /_token gives clients no upstream token.
    server.clear()
    scope = "/_token?scope=repository:secret/app:pull,push"
    given = proxy.call("GET", scope, headers={"Authorization": "Bearer letmein"})
    assert given.json()["token"] == "ocimirror-proxy-anonymous"
    assert server.requests == []

    # Credentials from a docker config file instead of a static header.
    docker_config = tmp_path / "config.json"
    auth = base64.b64encode(b"bob:builder").decode()
    docker_config.write_text(json.dumps({"auths": {private.host: {"auth": auth}}}))
    keyed = start_proxy("--registry-host", private.host, "--authfile", str(docker_config))
    assert skopeo.manifest(keyed.ref("secret/app:1"), registry=private) == image.manifest.raw

    # An htpasswd user, and credentials the upstream refuses.
    htpasswd = tmp_path / "htpasswd"
    subprocess.run(["htpasswd", "-cbB", "-C", "4", str(htpasswd), "carol", "pw"], check=True)
    bad = "Basic " + base64.b64encode(b"bob:wrong").decode()
    wrong = start_proxy(
        "--registry-host", private.host, "--htpasswd", str(htpasswd), env={"AUTH_HEADER": bad}
    )
    carol = {"Authorization": "Basic " + base64.b64encode(b"carol:pw").decode()}
    mallory = {"Authorization": "Basic " + base64.b64encode(b"carol:nope").decode()}
    assert wrong.call("GET", "/v2/", headers=mallory).status == 401
    assert wrong.call("GET", "/v2/", headers=carol).status == 200
    denied = wrong.call("GET", "/v2/secret/app/manifests/1", headers=carol)
    assert denied.status == 403
    assert denied.json()["errors"][0]["code"] == "DENIED"
    assert "ocimirror_proxy_upstream_errors_total{" in wrong.call("GET", "/metrics").body.decode()


def test_docker_config_credentials_on_a_machine_just_booted(
    registry_factory: RegistryFactory, token_server_factory: TokenServerFactory, tmp_path: Path
) -> None:
    """The first request's credentials are looked up however small the monotonic clock is.

    The lookup time started at 0.0, so on a machine up for less than `credentials_refresh`
    (300 s) the first lookup was skipped: the proxy fetched an anonymous token and the
    pull was denied (test_proxy_credentials_and_client_login failed so, once, on a machine
    that had just started). The clock here reads 12 s, as right after a boot.
    """
    from ocimirror.proxy.settings import UpstreamConfig
    from ocimirror.proxy.upstream import Upstream

    private, image = private_image(registry_factory, token_server_factory, "booted")
    docker_config = tmp_path / "config.json"
    auth = base64.b64encode(b"bob:builder").decode()
    docker_config.write_text(json.dumps({"auths": {private.host: {"auth": auth}}}))
    config = UpstreamConfig.model_validate(
        {"host": private.host, "credentials": {"docker_config": str(docker_config)}}
    )
    now = [12.0]

    async def pull_then_rotate() -> None:
        upstream = Upstream(config, clock=lambda: now[0])
        assert upstream.mode == "proxy"
        try:
            resp = await upstream.request(
                "GET",
                "/v2/secret/app/manifests/1",
                headers={"Accept": image.manifest.media_type},
                client_auth=None,
                scopes=frozenset({"repository:secret/app:pull"}),
            )
            assert resp.status == 200
            assert await resp.read() == image.manifest.raw
            # Looked up again once `credentials_refresh` has passed, not before.
            rotated = base64.b64encode(b"bob:rotated").decode()
            docker_config.write_text(json.dumps({"auths": {private.host: {"auth": rotated}}}))
            now[0] += config.credentials_refresh - 1
            await upstream.refresh_credentials()
            assert {c.credentials.password for c in upstream.clients} == {"builder"}
            now[0] += 1
            await upstream.refresh_credentials()
            assert {c.credentials.password for c in upstream.clients} == {"rotated"}
        finally:
            await upstream.close()

    asyncio.run(pull_then_rotate())


def test_keychain_kept_across_refreshes_picks_up_a_rotated_auth_file(tmp_path: Path) -> None:
    """The upstream's keychain is built once: a refresh asks it again, and its auth file is
    read again only when it changed. A rotation by rename (same size, new inode) is picked
    up at the next refresh; a broken file (a rotation half done) keeps the last good
    credentials, where rebuilding the keychain every refresh raised ConfigError."""
    from ocimirror.proxy.settings import UpstreamConfig
    from ocimirror.proxy.upstream import Upstream

    docker_config = tmp_path / "config.json"
    host = "registry.example:5000"

    def rotate(text: str) -> None:
        fresh = tmp_path / "config.json.new"
        fresh.write_text(text)
        os.replace(fresh, docker_config)

    def auths(user_pass: bytes) -> str:
        return json.dumps({"auths": {host: {"auth": base64.b64encode(user_pass).decode()}}})

    docker_config.write_text(auths(b"bob:builder"))
    config = UpstreamConfig.model_validate(
        {"host": host, "credentials": {"docker_config": str(docker_config)}}
    )
    now = [1000.0]

    async def refreshes() -> None:
        upstream = Upstream(config, clock=lambda: now[0])
        try:
            await upstream.refresh_credentials()
            assert {c.credentials.password for c in upstream.clients} == {"builder"}
            rotate("{not json")
            now[0] += config.credentials_refresh
            await upstream.refresh_credentials()
            assert {c.credentials.password for c in upstream.clients} == {"builder"}
            rotate(auths(b"bob:rotated"))  # the same size as before
            await upstream.refresh_credentials()  # not yet due
            assert {c.credentials.password for c in upstream.clients} == {"builder"}
            now[0] += config.credentials_refresh
            await upstream.refresh_credentials()
            assert {c.credentials.password for c in upstream.clients} == {"rotated"}
        finally:
            await upstream.close()

    asyncio.run(refreshes())


def test_basic_auth_upstream_passes_through(
    htpasswd_registry: LocalRegistry, start_proxy: Callable[..., ProxyProcess], skopeo: Skopeo
) -> None:
    image = make_image(seed="basic")
    asyncio.run(seed(htpasswd_registry, "app", [("1", image)]))
    proxy = start_proxy("--registry-host", htpasswd_registry.host)
    assert proxy.call("GET", "/v2/").headers["WWW-Authenticate"].startswith("Basic ")
    raw = skopeo.run(
        "inspect", "--raw", "--tls-verify=false", "--creds=alice:wonderland", proxy.ref("app:1")
    ).stdout
    assert raw.encode() == image.manifest.raw


def test_upstream_without_auth_gets_placeholder_tokens(
    registry: LocalRegistry, start_proxy: Callable[..., ProxyProcess]
) -> None:
    image = make_image(seed="anon")
    asyncio.run(seed(registry, "app", [("1", image)]))
    proxy = start_proxy("--registry-host", registry.host)
    token = proxy.call("GET", "/_token?scope=repository:app:pull").json()["token"]
    answer = proxy.call(
        "GET",
        "/v2/app/manifests/1",
        headers={"Authorization": f"Bearer {token}", "Accept": image.manifest.media_type},
    )
    assert answer.status == 200
    assert answer.body == image.manifest.raw


def test_bad_settings_exit_2(tmp_path: Path) -> None:
    environ = {k: v for k, v in os.environ.items() if k not in PROXY_ENV}
    nothing = subprocess.run(PROXY_COMMAND, capture_output=True, text=True, env=environ)
    assert nothing.returncode == 2
    assert "REGISTRY_HOST" in nothing.stderr
    config = tmp_path / "bad.yaml"
    config.write_text("upstreams:\n  - {name: Bad Name, host: x.io, colour: blue}\n")
    bad = subprocess.run(
        [*PROXY_COMMAND, "--config", str(config)], capture_output=True, text=True, env=environ
    )
    assert bad.returncode == 2
    assert "colour" in bad.stderr
    assert "upstreams.0.name" in bad.stderr


def test_docker_hub_names_and_scopes() -> None:
    from ocimirror.proxy.routing import Proxy as AppProxy
    from ocimirror.proxy.routing import Route
    from ocimirror.proxy.settings import load_settings
    from ocimirror.proxy.tokens import map_token_scope

    settings = load_settings(registry_host="docker.io", env={})
    proxy = AppProxy(settings)
    hub = proxy.upstreams[""]
    assert hub.base == "https://registry-1.docker.io"
    assert hub.upstream_repo("alpine") == "library/alpine"
    assert hub.upstream_repo("org/app") == "org/app"
    assert map_token_scope(proxy, "repository:alpine:pull", hub) == (
        hub,
        "repository:library/alpine:pull",
    )
    route = Route(hub, "", "alpine")
    assert route.client_scope("repository:library/alpine:pull") == "repository:alpine:pull"
    assert hub.browser_url("/alpine") == "https://hub.docker.com/_/alpine"
    assert hub.browser_url("/org/app") == "https://hub.docker.com/r/org/app"
    prefixed = AppProxy(load_settings(registry_host="docker.io", repo_prefix="myorg", env={}))
    assert prefixed.upstreams[""].upstream_repo("app") == "myorg/app"
    routed = proxy.locate("library/alpine", "docker.io")
    assert routed is not None
    assert routed.upstream is hub


async def test_upstream_blob_for_a_cache(stand_in: StandIn) -> None:
    from aiohttp.test_utils import make_mocked_request

    from ocimirror.errors import NotFound
    from ocimirror.proxy.app import make_proxy_app
    from ocimirror.proxy.forward import upstream_blob
    from ocimirror.proxy.routing import PROXY
    from ocimirror.proxy.settings import load_settings

    # The stand-in's storage host is on loopback: redirects there must be allowed.
    settings = load_settings(
        registry_host=stand_in.host, repo_prefix="pre", allow_private_redirects=True, env={}
    )
    app = make_proxy_app(settings)
    proxy = app[PROXY]
    route = proxy.locate("foo")
    assert route is not None
    request = make_mocked_request("GET", f"/v2/foo/blobs/{stand_in.digest}", app=app)
    try:
        path = f"/v2/{route.upstream_repo}/blobs/{stand_in.digest}"
        async with upstream_blob(request, route, path) as chunks:
            data = b"".join([c async for c in chunks])
        assert data == stand_in.blob  # the redirect to the storage host was followed
        with pytest.raises(NotFound):
            async with upstream_blob(request, route, "/v2/pre/foo/blobs/sha256:" + "0" * 64):
                pass
    finally:
        await proxy.close()
