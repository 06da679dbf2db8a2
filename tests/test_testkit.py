"""The testkit against real peers: distribution registries, skopeo, the token server.

Each test pushes a tiny one-layer image, written by hand as an OCI layout directory, with
`skopeo copy`, reads it back with `skopeo inspect`, and checks what the registry logged.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import http.client
import io
import json
import os
import socket
import tarfile
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509

from ocimirror.testkit.accesslog import SYNC_PREFIX, Request, parse_access_log
from ocimirror.testkit.registry import LocalRegistry, RegistryError
from ocimirror.testkit.skopeo import Skopeo, SkopeoError, run_skopeo
from ocimirror.testkit.tls import TlsFiles
from ocimirror.testkit.tokenserver import (
    Access,
    TokenServer,
    decode_token,
    libtrust_key_id,
)

RegistryFactory = Callable[..., LocalRegistry]
TokenServerFactory = Callable[..., TokenServer]

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"


@dataclass(frozen=True)
class OciImage:
    """A one-layer image in an OCI layout directory."""

    layout: Path
    tag: str
    manifest: bytes
    digest: str
    blobs: tuple[str, ...]

    @property
    def ref(self) -> str:
        """The skopeo reference of the image in its layout."""
        return f"oci:{self.layout}:{self.tag}"


def _sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def write_oci_layout(directory: Path, tag: str = "v1", payload: bytes = b"hello\n") -> OciImage:
    """Write a one-layer image as an OCI layout (plain files) and return what it holds."""
    tar_buf = io.BytesIO()
    with tarfile.open(fileobj=tar_buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        info = tarfile.TarInfo("hello.txt")
        info.size = len(payload)
        info.mtime = 0
        tar.addfile(info, io.BytesIO(payload))
    layer_tar = tar_buf.getvalue()
    layer = gzip.compress(layer_tar, mtime=0)
    config = json.dumps(
        {
            "architecture": "amd64",
            "os": "linux",
            "config": {"Cmd": ["/bin/true"]},
            "rootfs": {"type": "layers", "diff_ids": [_sha256(layer_tar)]},
        }
    ).encode()
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {
                "mediaType": "application/vnd.oci.image.config.v1+json",
                "digest": _sha256(config),
                "size": len(config),
            },
            "layers": [
                {
                    "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                    "digest": _sha256(layer),
                    "size": len(layer),
                }
            ],
        },
        indent=2,
    ).encode()
    blobs_dir = directory / "blobs" / "sha256"
    blobs_dir.mkdir(parents=True)
    for blob in (layer, config, manifest):
        (blobs_dir / hashlib.sha256(blob).hexdigest()).write_bytes(blob)
    (directory / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')
    index = {
        "schemaVersion": 2,
        "manifests": [
            {
                "mediaType": OCI_MANIFEST,
                "digest": _sha256(manifest),
                "size": len(manifest),
                "annotations": {"org.opencontainers.image.ref.name": tag},
            }
        ],
    }
    (directory / "index.json").write_text(json.dumps(index))
    return OciImage(directory, tag, manifest, _sha256(manifest), (_sha256(layer), _sha256(config)))


@pytest.fixture
def image(tmp_path: Path) -> OciImage:
    """A one-layer image in an OCI layout under tmp_path."""
    return write_oci_layout(tmp_path / "layout")


def push(skopeo: Skopeo, image: OciImage, registry: LocalRegistry, name: str = "demo/app") -> str:
    """Push `image` to `registry` as name:tag with skopeo; return the docker:// reference."""
    ref = registry.ref(f"{name}:{image.tag}")
    skopeo.copy(image.ref, ref, dst_registry=registry)
    return ref


def basic(user: str, password: str) -> dict[str, str]:
    """An Authorization header for Basic credentials."""
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


def bearer(token: str) -> dict[str, str]:
    """An Authorization header for a bearer token."""
    return {"Authorization": f"Bearer {token}"}


def token_get(server: TokenServer, query: str, headers: dict[str, str] | None = None) -> Any:
    """GET the token endpoint; return (status, parsed body)."""
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    try:
        conn.request("GET", f"/token?{query}", headers=headers or {})
        response = conn.getresponse()
        return response.status, json.loads(response.read() or b"null")
    finally:
        conn.close()


def token_post(server: TokenServer, form: dict[str, str]) -> Any:
    """POST the OAuth2 form to the token endpoint; return (status, parsed body)."""
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    try:
        body = urllib.parse.urlencode(form)
        conn.request(
            "POST",
            "/token",
            body=body,
            headers={"Content-Type": "application/x-www-form-urlencoded"},
        )
        response = conn.getresponse()
        raw = response.read()
        return response.status, (json.loads(raw) if raw.startswith(b"{") else None)
    finally:
        conn.close()


# -- TLS material ---------------------------------------------------------------------------


def test_tls_files_chain_and_names(tls_files: TlsFiles) -> None:
    ca = x509.load_pem_x509_certificate(tls_files.ca_cert.read_bytes())
    cert = x509.load_pem_x509_certificate(tls_files.cert.read_bytes())
    cert.verify_directly_issued_by(ca)
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    names = {str(n) for n in san.get_values_for_type(x509.DNSName)}
    ips = {str(ip) for ip in san.get_values_for_type(x509.IPAddress)}
    assert names == {"localhost"}
    assert ips == {"127.0.0.1", "::1"}
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    # skopeo's cert dir: only the CA ends in .crt; nothing looks like a client cert or key
    assert sorted(
        p.name for p in tls_files.cert_dir.iterdir() if p.suffix in {".crt", ".cert", ".key"}
    ) == ["ca.crt"]
    assert oct(tls_files.key.stat().st_mode & 0o777) == oct(0o600)


# -- anonymous registries, request counting ----------------------------------------------------


def test_registry_push_inspect_and_count(
    registry: LocalRegistry, skopeo: Skopeo, image: OciImage
) -> None:
    assert registry.url == f"http://127.0.0.1:{registry.port}"
    assert registry.requests() == []  # the start-up probe is not counted
    ref = push(skopeo, image, registry)

    assert skopeo.manifest(ref, registry=registry) == image.manifest  # byte for byte
    info = skopeo.inspect_json(ref, registry=registry)
    assert info["Digest"] == image.digest
    assert sorted(info["Layers"]) == [image.blobs[0]]

    requests = registry.requests()
    manifest_puts = [r for r in requests if r.method == "PUT" and r.kind == "manifest"]
    assert [(r.repository, r.reference, r.status) for r in manifest_puts] == [
        ("demo/app", "v1", 201)
    ]
    # two blobs uploaded: each a POST (202) then a PUT with the digest (201)
    assert registry.count("POST", "upload", status=202) == 2
    uploads = [r for r in requests if r.method == "PUT" and r.kind == "upload"]
    assert sorted(urllib.parse.parse_qs(r.query)["digest"][0] for r in uploads) == sorted(
        image.blobs
    )
    assert all(r.status == 201 for r in uploads)
    assert registry.count("GET", "manifest", path=r"/demo/app/") >= 2  # the two inspects
    assert not any(r.path.startswith(SYNC_PREFIX) for r in requests)
    assert all("skopeo" in r.user_agent for r in requests)


@pytest.mark.parametrize("exact_counting", [True, False])
def test_requests_sees_a_request_at_once_and_clear_log(
    registry_factory: RegistryFactory, exact_counting: bool
) -> None:
    registry = registry_factory("counting", exact_counting=exact_counting)
    for i in range(20):
        assert registry.http("HEAD", f"/v2/nope/manifests/t{i}").status == 404
        last = registry.requests()[-1]
        assert (last.method, last.path, last.status, last.kind) == (
            "HEAD",
            f"/v2/nope/manifests/t{i}",
            404,
            "manifest",
        )
    assert registry.count("HEAD") == 20
    mark = registry.mark()
    registry.http("GET", "/v2/")
    assert [str(r) for r in registry.requests(since=mark)] == ["GET /v2/ 200"]
    registry.clear_log()
    assert registry.requests() == []
    registry.http("GET", "/v2/_catalog?n=5")
    assert [(r.kind, r.query) for r in registry.requests()] == [("catalog", "n=5")]
    assert registry.count(since=0) == 22  # the whole log is still there


def test_requests_sees_large_downloads_at_once(registry: LocalRegistry) -> None:
    # The registry logs a request after its response; a large body is on the client's
    # side before that, so a naive read of the log misses about half of these.
    blob = os.urandom(2 << 20)
    digest = _sha256(blob)
    location = urllib.parse.urlsplit(
        registry.http("POST", "/v2/big/blobs/uploads/").headers["Location"]
    )
    put = registry.http("PUT", f"{location.path}?{location.query}&digest={digest}", body=blob)
    assert put.status == 201
    for i in range(40):
        response = registry.http("GET", f"/v2/big/blobs/{digest}?try={i}")
        assert response.body == blob
        assert str(registry.requests()[-1]) == f"GET /v2/big/blobs/{digest}?try={i} 200"
    assert registry.count("GET", "blob") == 40


def test_parse_access_log_kinds_and_junk() -> None:
    text = "\n".join(
        [
            'time="x" level=info msg="not an access line"',
            '127.0.0.1 - - [22/Nov/2026:14:04:41 +0000] "GET /v2/ HTTP/1.1" 401 87 "" "ua \\"q\\" x"',
            '127.0.0.1 - - [22/Nov/2026:14:04:41 +0000] "POST /v2/a/b/blobs/uploads/ HTTP/1.1" 202 0 "" "c"',
            '127.0.0.1 - - [22/Nov/2026:14:04:41 +0000] "PATCH /v2/a/b/blobs/uploads/u-1?_state=x HTTP/1.1" 202 - "" "c"',
            '127.0.0.1 - - [22/Nov/2026:14:04:41 +0000] "HEAD /v2/a/blobs/sha256:ab HTTP/1.1" 200 9 "" "c"',
            '127.0.0.1 - - [22/Nov/2026:14:04:41 +0000] "GET /v2/a/tags/list HTTP/1.1" 200 9 "" "c"',
            f'127.0.0.1 - - [22/Nov/2026:14:04:41 +0000] "GET {SYNC_PREFIX}1 HTTP/1.1" 404 19 "" ""',
            '127.0.0.1 - - [22/Nov/2026:14:04:41 +0000] "GET /metrics HTTP/1.1" 404 19 "" "c"',
        ]
    )
    requests = parse_access_log(text)
    assert [(r.method, r.kind, r.repository, r.reference) for r in requests] == [
        ("GET", "base", None, None),
        ("POST", "upload", "a/b", ""),
        ("PATCH", "upload", "a/b", "u-1"),
        ("HEAD", "blob", "a", "sha256:ab"),
        ("GET", "tags", "a", None),
        ("GET", "other", None, None),
    ]
    assert requests[0] == Request("GET", "/v2/", 401, "", 87, 'ua \\"q\\" x')
    assert requests[2].query == "_state=x"
    assert requests[2].size == 0


def test_restart_keeps_port_storage_and_log(
    registry: LocalRegistry, skopeo: Skopeo, image: OciImage
) -> None:
    ref = push(skopeo, image, registry)
    port, pid = registry.port, registry.pid
    registry.stop()
    assert not registry.running
    with pytest.raises(ConnectionRefusedError):
        registry.http("GET", "/v2/", timeout=1)
    assert skopeo.inspect(ref, registry=registry, check=False).returncode != 0
    registry.start()
    assert (registry.port, registry.running) == (port, True)
    assert registry.pid != pid
    assert skopeo.manifest(ref, registry=registry) == image.manifest
    assert registry.count("PUT", "manifest") == 1  # counted before and after the restart


def test_registry_pair_copy(
    registry_pair: tuple[LocalRegistry, LocalRegistry], skopeo: Skopeo, image: OciImage
) -> None:
    src, dst = registry_pair
    assert src.port != dst.port
    assert src.storage != dst.storage
    src_ref = push(skopeo, image, src)
    src.clear_log()
    dst_ref = dst.ref("mirror/app:v1")
    skopeo.copy(src_ref, dst_ref, src_registry=src, dst_registry=dst)
    assert skopeo.manifest(dst_ref, registry=dst) == image.manifest
    assert not [r for r in src.requests() if r.method not in ("GET", "HEAD")]  # source only read
    assert dst.count("PUT", "manifest") == 1
    assert dst.count("PUT", "upload") == 2


def test_foreign_layers_allowed_and_readonly(registry_factory: RegistryFactory) -> None:
    # distribution refuses manifests with layer `urls` unless configured; ours allow them
    registry = registry_factory("foreign")
    config = b'{"os": "windows", "architecture": "amd64", "rootfs": {"type": "layers"}}'
    location = urllib.parse.urlsplit(
        registry.http("POST", "/v2/win/blobs/uploads/").headers["Location"]
    )
    query = f"{location.query}&digest={_sha256(config)}"
    assert registry.http("PUT", f"{location.path}?{query}", body=config).status == 201
    docker_v2 = "application/vnd.docker.distribution.manifest.v2+json"
    manifest = {
        "schemaVersion": 2,
        "mediaType": docker_v2,
        "config": {
            "mediaType": "application/vnd.docker.container.image.v1+json",
            "digest": _sha256(config),
            "size": len(config),
        },
        "layers": [
            {
                "mediaType": "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip",
                "digest": "sha256:" + "ab" * 32,
                "size": 123,
                "urls": ["https://mcr.microsoft.com/v2/windows/blobs/x"],
            }
        ],
    }
    put = registry.http(
        "PUT",
        "/v2/win/manifests/ltsc",
        body=json.dumps(manifest).encode(),
        headers={"Content-Type": docker_v2},
    )
    assert put.status == 201

    readonly = registry_factory("readonly", readonly=True)
    assert readonly.http("GET", "/v2/").status == 200
    assert readonly.http("POST", "/v2/win/blobs/uploads/").status == 405


def test_context_manager_stops_and_reaps(tmp_path: Path) -> None:
    with LocalRegistry(tmp_path / "r") as reg:
        pid = reg.pid
        assert pid is not None
        assert reg.http("GET", "/v2/").status == 200
    assert not reg.running
    assert reg.pid is None
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)  # gone and reaped, not a zombie


def test_start_failures_are_reported(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        taken = busy.getsockname()[1]
        with pytest.raises(RegistryError, match="address already in use"):
            LocalRegistry(tmp_path / "a", port=taken).start()
    bad = LocalRegistry(tmp_path / "b", extra_config={"storage": {"nosuchdriver": {}}})
    with pytest.raises(RegistryError, match="exited"):
        bad.start()
    assert not bad.running
    with pytest.raises(ValueError, match="token_server"):
        LocalRegistry(tmp_path / "c", auth="token")


# -- htpasswd --------------------------------------------------------------------------------


def test_htpasswd_registry(
    htpasswd_registry: LocalRegistry, skopeo: Skopeo, image: OciImage
) -> None:
    reg = htpasswd_registry
    assert reg.creds == ("alice", "wonderland")
    assert reg.htpasswd_path.read_text().startswith("alice:$2y$")  # bcrypt
    anonymous = reg.http("GET", "/v2/")
    assert anonymous.status == 401
    assert anonymous.headers["WWW-Authenticate"].startswith("Basic ")
    assert reg.http("GET", "/v2/", headers=basic("alice", "wrong")).status == 401
    assert reg.http("GET", "/v2/", headers=basic("alice", "wonderland")).status == 200

    ref = reg.ref("private/app:v1")
    refused = skopeo.copy(image.ref, ref, dst_registry=reg, creds=False, check=False)
    assert refused.returncode != 0
    assert reg.count("PUT", "manifest") == 0
    push(skopeo, image, reg, "private/app")
    assert skopeo.inspect(ref, registry=reg, creds=False, check=False).returncode != 0
    assert skopeo.manifest(ref, registry=reg) == image.manifest
    assert reg.count(status=401) >= 4


def test_skopeo_uses_only_its_own_authfile(
    htpasswd_registry: LocalRegistry, skopeo: Skopeo, image: OciImage
) -> None:
    reg = htpasswd_registry
    ref = push(skopeo, image, reg)
    skopeo.run("login", "--tls-verify=false", "-u", "alice", "-p", "wonderland", reg.host)
    assert reg.host in json.loads(skopeo.authfile.read_text())["auths"]
    # no --creds: the login stored in the private auth file is used
    assert skopeo.inspect(ref, registry=reg, creds=False).returncode == 0
    # a fresh Skopeo (another auth file) has no login
    other = Skopeo(skopeo.workdir.parent / (skopeo.workdir.name + "-other"))
    assert other.inspect(ref, registry=reg, creds=False, check=False).returncode != 0
    with pytest.raises(SkopeoError, match=r"unauthorized|authentication required"):
        other.inspect(ref, registry=reg, creds=False)


def test_run_skopeo_module_function() -> None:
    result = run_skopeo("--version")
    assert result.stdout.startswith("skopeo version")
    assert run_skopeo("no-such-command", check=False).returncode != 0


# -- token auth ----------------------------------------------------------------------------


def test_token_registry_with_skopeo(
    token_registry: LocalRegistry, skopeo: Skopeo, image: OciImage
) -> None:
    reg, server = token_registry, token_registry.token_server
    assert server is not None
    assert reg.creds == ("bob", "builder")
    challenge = reg.http("GET", "/v2/")
    assert challenge.status == 401
    assert challenge.headers["WWW-Authenticate"] == (
        f'Bearer realm="{server.realm}",service="{reg.service}"'
    )

    ref = reg.ref("team/app:v1")
    assert skopeo.copy(image.ref, ref, dst_registry=reg, creds=False, check=False).returncode != 0
    assert reg.count("PUT", "manifest") == 0
    assert server.tokens_issued(username=None) >= 1  # anonymous tokens, pull only

    before = server.tokens_issued(username="bob")
    push(skopeo, image, reg, "team/app")
    assert server.tokens_issued(username="bob") > before
    pushes = [r for r in server.requests if r.username == "bob" and r.ok]
    assert any(
        a == Access("repository", "team/app", ("pull", "push")) for r in pushes for a in r.granted
    )
    assert all(r.service == reg.service for r in server.requests)

    anonymous_before = server.tokens_issued(username=None)
    assert skopeo.manifest(ref, registry=reg, creds=False) == image.manifest  # anonymous pull
    assert server.tokens_issued(username=None) > anonymous_before
    assert reg.count("PUT", "manifest", status=201) == 1


def test_token_get_flow_and_registry_verification(token_registry: LocalRegistry) -> None:
    reg, server = token_registry, token_registry.token_server
    assert server is not None
    scope = "scope=repository:team/app:pull,push"
    service = f"service={urllib.parse.quote(reg.service)}"

    status, body = token_get(server, f"{service}&{scope}&scope=repository:other:pull")
    assert status == 200
    assert set(body) == {"token", "access_token", "expires_in", "issued_at"}
    header, claims = decode_token(body["token"])
    assert header["alg"] == "ES256"
    assert header["kid"] == server.key_id
    assert len(header["x5c"]) == 1
    assert claims["iss"] == server.issuer
    assert claims["aud"] == reg.service
    assert claims["sub"] == ""
    assert claims["access"] == [
        {"type": "repository", "name": "team/app", "actions": ["pull"]},
        {"type": "repository", "name": "other", "actions": ["pull"]},
    ]
    assert claims["nbf"] <= time.time() <= claims["exp"] == claims["iat"] + body["expires_in"]
    anonymous = body["token"]
    # the registry verifies it: pull works (404 unknown name), push is refused
    assert reg.http("GET", "/v2/team/app/tags/list", headers=bearer(anonymous)).status == 404
    push_try = reg.http("POST", "/v2/team/app/blobs/uploads/", headers=bearer(anonymous))
    assert push_try.status == 401
    assert 'error="insufficient_scope"' in push_try.headers["WWW-Authenticate"]

    status, body = token_get(
        server, f"{service}&{scope}&offline_token=true", basic("bob", "builder")
    )
    assert status == 200
    assert "refresh_token" in body
    assert decode_token(body["token"])[1]["sub"] == "bob"
    upload = reg.http("POST", "/v2/team/app/blobs/uploads/", headers=bearer(body["token"]))
    assert upload.status == 202

    status, _ = token_get(server, f"{service}&{scope}", basic("bob", "wrong"))
    assert status == 401
    assert [r.status for r in server.requests] == [200, 200, 401]
    assert server.tokens_issued() == 2


def test_token_oauth_post_flow(token_registry: LocalRegistry) -> None:
    reg, server = token_registry, token_registry.token_server
    assert server is not None
    form = {
        "grant_type": "password",
        "username": "bob",
        "password": "builder",
        "client_id": "ocimirror-tests",
        "service": reg.service,
        "scope": "repository:team/app:pull,push repository:team/base:pull",
        "access_type": "offline",
    }
    status, body = token_post(server, form)
    assert status == 200
    assert set(body) == {"access_token", "scope", "expires_in", "issued_at", "refresh_token"}
    assert body["scope"] == "repository:team/app:pull,push repository:team/base:pull"
    assert (
        reg.http("POST", "/v2/team/app/blobs/uploads/", headers=bearer(body["access_token"])).status
        == 202
    )

    refresh = {
        "grant_type": "refresh_token",
        "refresh_token": body["refresh_token"],
        "client_id": "ocimirror-tests",
        "service": reg.service,
        "scope": "repository:team/app:pull",
    }
    status, refreshed = token_post(server, refresh)
    assert status == 200
    assert "refresh_token" not in refreshed
    assert decode_token(refreshed["access_token"])[1]["sub"] == "bob"

    assert token_post(server, {**form, "password": "nope"})[0] == 401
    assert token_post(server, {**refresh, "refresh_token": "forged"})[0] == 401
    assert token_post(server, {k: v for k, v in form.items() if k != "client_id"})[0] == 400
    assert token_post(server, {**form, "grant_type": "client_credentials"})[0] == 400
    assert [(r.grant_type, r.status) for r in server.requests] == [
        ("password", 200),
        ("refresh_token", 200),
        ("password", 401),
        ("refresh_token", 401),
        ("password", 400),
        ("client_credentials", 400),
    ]
    server.allow_post = False
    assert token_post(server, form)[0] == 404


def test_expired_and_foreign_tokens_are_refused(
    token_registry: LocalRegistry, token_server_factory: TokenServerFactory
) -> None:
    reg, server = token_registry, token_registry.token_server
    assert server is not None
    pull = [Access("repository", "team/app", ("pull",))]
    path = "/v2/team/app/tags/list"
    assert reg.http("GET", path, headers=bearer(server.issue(reg.service, pull))).status == 404
    # distribution allows 60 s of clock skew past `exp`
    assert (
        reg.http("GET", path, headers=bearer(server.issue(reg.service, pull, lifetime=-30))).status
        == 404
    )
    expired = reg.http("GET", path, headers=bearer(server.issue(reg.service, pull, lifetime=-90)))
    assert expired.status == 401
    assert 'error="invalid_token"' in expired.headers["WWW-Authenticate"]
    wrong_audience = server.issue("another-service", pull)
    assert reg.http("GET", path, headers=bearer(wrong_audience)).status == 401
    stranger = token_server_factory()
    assert reg.http("GET", path, headers=bearer(stranger.issue(reg.service, pull))).status == 401

    # claim_lifetime: the endpoint reports a long life but issues already-expired tokens
    server.claim_lifetime = -120
    status, body = token_get(server, f"service={reg.service}&scope=repository:team/app:pull")
    assert status == 200
    assert body["expires_in"] == server.lifetime
    assert reg.http("GET", path, headers=bearer(body["token"])).status == 401


@pytest.mark.parametrize(
    ("algorithm", "embed_x5c"),
    [("ES256", True), ("ES256", False), ("RS256", True), ("RS256", False)],
)
def test_token_signing_variants_verify(
    registry_factory: RegistryFactory,
    token_server_factory: TokenServerFactory,
    algorithm: Any,
    embed_x5c: bool,
) -> None:
    server = token_server_factory(
        users={"u": "p"}, algorithm=algorithm, embed_x5c=embed_x5c, lifetime=7
    )
    reg = registry_factory("variant", auth="token", token_server=server)
    status, body = token_get(
        server, f"service={reg.service}&scope=repository:x:pull,push", basic("u", "p")
    )
    assert status == 200
    assert body["expires_in"] == 7
    header, _ = decode_token(body["token"])
    assert header["alg"] == algorithm
    assert ("x5c" in header) == embed_x5c
    assert header["kid"] == libtrust_key_id(server.certificate.public_key())
    assert reg.http("POST", "/v2/x/blobs/uploads/", headers=bearer(body["token"])).status == 202
    tampered = body["token"][:-4] + ("AAAA" if not body["token"].endswith("AAAA") else "BBBB")
    assert reg.http("GET", "/v2/", headers=bearer(tampered)).status == 401


def test_anonymous_pull_can_be_disabled(
    registry_factory: RegistryFactory, token_server_factory: TokenServerFactory
) -> None:
    server = token_server_factory(users={"u": "p"}, anonymous_pull=False)
    reg = registry_factory("closed", auth="token", token_server=server)
    status, body = token_get(server, f"service={reg.service}&scope=repository:x:pull")
    assert status == 200
    assert decode_token(body["token"])[1]["access"] == []
    refused = reg.http("GET", "/v2/x/tags/list", headers=bearer(body["token"]))
    assert refused.status == 401
    assert 'error="insufficient_scope"' in refused.headers["WWW-Authenticate"]


def test_token_server_restarts_on_same_port(token_server: TokenServer) -> None:
    port = token_server.port
    token_server.stop()
    assert not token_server.running
    with pytest.raises(ConnectionRefusedError):
        token_get(token_server, "service=s")
    token_server.start()
    assert token_server.port == port
    assert token_get(token_server, "service=s")[0] == 200


def test_token_server_over_tls(
    token_server_factory: TokenServerFactory, tls_files: TlsFiles
) -> None:
    server = token_server_factory(tls=tls_files)
    assert server.realm == f"https://127.0.0.1:{server.port}/token"
    conn = http.client.HTTPSConnection(
        "localhost", server.port, timeout=10, context=tls_files.client_context()
    )
    try:
        conn.request("GET", "/token?service=s&scope=repository:a:pull")
        response = conn.getresponse()
        assert response.status == 200
        assert "token" in json.loads(response.read())
    finally:
        conn.close()
    assert server.tokens_issued(username=None) == 1


# -- TLS -----------------------------------------------------------------------------------


def test_tls_registry(
    tls_registry: LocalRegistry, ca_cert: Path, skopeo: Skopeo, image: OciImage
) -> None:
    reg = tls_registry
    assert reg.url == f"https://127.0.0.1:{reg.port}"
    assert reg.tls is not None
    assert reg.tls.ca_cert == ca_cert
    assert reg.http("GET", "/v2/").status == 200  # over HTTPS, CA verified
    assert Skopeo.flags(reg) == [f"--cert-dir={ca_cert.parent}"]
    ref = push(skopeo, image, reg)  # with --dest-cert-dir, TLS verified
    assert skopeo.manifest(ref, registry=reg) == image.manifest
    # without the CA, verification fails: the TLS is real and the CA is what makes it pass
    untrusted = skopeo.run("inspect", ref, check=False)
    assert untrusted.returncode != 0
    assert "certificate" in untrusted.stderr
    assert reg.count("PUT", "manifest") == 1


def _wait_for(paths: list[Path], timeout: float = 15.0) -> list[Path]:
    """Poll until every path exists or `timeout` passes; return the missing ones."""
    deadline = time.monotonic() + timeout
    while True:
        missing = [p for p in paths if not p.exists()]
        if not missing or time.monotonic() > deadline:
            return missing
        time.sleep(0.02)


def test_pull_through_cache_registry(
    registry_factory: RegistryFactory, skopeo: Skopeo, image: OciImage, tmp_path: Path
) -> None:
    upstream = registry_factory("upstream")
    push(skopeo, image, upstream)
    cache = registry_factory("cache", proxy_remote=upstream.url)
    assert cache.config()["proxy"] == {"remoteurl": upstream.url}
    upstream.clear_log()

    skopeo.copy(cache.ref("demo/app:v1"), f"dir:{tmp_path / 'first'}", src_registry=cache)
    assert (tmp_path / "first" / "manifest.json").read_bytes() == image.manifest
    fetched = {r.reference for r in upstream.requests() if r.method == "GET" and r.kind == "blob"}
    assert fetched == set(image.blobs)  # a miss: every blob came from upstream

    # distribution stores a blob in the background; then it serves without the upstream
    v2 = cache.storage / "docker" / "registry" / "v2"
    links = [
        v2 / "repositories" / "demo" / "app" / "_layers" / "sha256" / d.split(":")[1] / "link"
        for d in image.blobs
    ]
    assert _wait_for(links) == []
    upstream.stop()
    skopeo.copy(cache.ref("demo/app:v1"), f"dir:{tmp_path / 'second'}", src_registry=cache)
    assert (tmp_path / "second" / "manifest.json").read_bytes() == image.manifest
    for digest in image.blobs:
        blob = tmp_path / "second" / digest.split(":")[1]
        assert _sha256(blob.read_bytes()) == digest
    # a pull-through cache refuses pushes
    assert cache.http("POST", "/v2/demo/app/blobs/uploads/").status == 405


def test_pull_through_cache_needs_a_base_url(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="proxy_remote must be a registry's base URL"):
        LocalRegistry(tmp_path, proxy_remote="127.0.0.1:5000")
