"""Google Artifact Registry / GCR logins from Application Default Credentials.

Stand-ins on loopback: the metadata server of Cloud Run, GKE and GCE (google-auth reads
`GCE_METADATA_HOST` and `GCE_METADATA_IP`), and the OAuth2 token endpoint a service
account key file names in `token_uri`, which checks the key's signed JWT assertion. The
registry is an htpasswd one whose user is `oauth2accesstoken` with the stand-in's token as
password, reached under an Artifact Registry name through the endpoint mapping. Each
command runs in a child process, since google-auth reads those variables on import.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import re
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from ocimirror.testkit.command import ocimirror_async, ocimirror_command
from ocimirror.testkit.front import serve
from ocimirror.testkit.images import make_image
from ocimirror.testkit.registry import LocalRegistry
from ocimirror.testkit.seeding import seed

AR = "europe-docker.pkg.dev"
TOKEN = "ya29.stand-in-access-token"
EMAIL = "mirror@project.iam.gserviceaccount.com"


@asynccontextmanager
async def metadata_server(seen: list[str]) -> AsyncIterator[str]:
    """The metadata server's few routes google-auth asks; yields `127.0.0.1:PORT`."""

    async def handle(request: web.Request) -> web.Response:
        seen.append(request.path)
        if request.headers.get("Metadata-Flavor") != "Google":
            return web.Response(status=403, text="missing Metadata-Flavor")
        flavour = {"Metadata-Flavor": "Google"}
        path = request.path
        if path == "/":
            return web.Response(text="ok", headers=flavour)
        if "/service-accounts/" in path and path.endswith("/"):
            body: Any = {
                "email": EMAIL,
                "scopes": ["https://www.googleapis.com/auth/cloud-platform"],
            }
            return web.json_response(body, headers=flavour)
        if "/service-accounts/" in path and path.endswith("/token"):
            body = {"access_token": TOKEN, "expires_in": 3599, "token_type": "Bearer"}
            return web.json_response(body, headers=flavour)
        if path.endswith("/project/project-id"):
            return web.Response(text="project", headers=flavour)
        if path.endswith("/universe/universe-domain"):
            return web.Response(text="googleapis.com", headers=flavour)
        return web.Response(status=404, headers=flavour)

    app = web.Application()
    app.router.add_route("GET", "/{tail:.*}", handle)
    async with serve(app) as port:
        yield f"127.0.0.1:{port}"


def _b64url(data: bytes) -> bytes:
    return base64.urlsafe_b64encode(data).rstrip(b"=")


def _unb64url(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


@asynccontextmanager
async def token_endpoint(
    key: rsa.RSAPrivateKey, granted: list[dict[str, Any]]
) -> AsyncIterator[str]:
    """An OAuth2 token endpoint that grants TOKEN for a JWT assertion signed by `key`."""
    public = key.public_key()

    async def token(request: web.Request) -> web.Response:
        form = await request.post()
        if form.get("grant_type") != "urn:ietf:params:oauth:grant-type:jwt-bearer":
            return web.json_response({"error": "unsupported_grant_type"}, status=400)
        head, payload, signature = str(form.get("assertion", "")).split(".")
        try:
            public.verify(
                _unb64url(signature),
                f"{head}.{payload}".encode(),
                padding.PKCS1v15(),
                hashes.SHA256(),
            )
        except Exception:
            return web.json_response({"error": "invalid_grant"}, status=400)
        granted.append(json.loads(_unb64url(payload)))
        return web.json_response(
            {"access_token": TOKEN, "expires_in": 3599, "token_type": "Bearer"}
        )

    app = web.Application()
    app.router.add_post("/token", token)
    async with serve(app) as port:
        yield f"http://127.0.0.1:{port}/token"


def key_file(path: Path, key: rsa.RSAPrivateKey, token_uri: str) -> Path:
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()
    path.write_text(
        json.dumps(
            {
                "type": "service_account",
                "project_id": "project",
                "private_key_id": "k1",
                "private_key": pem,
                "client_email": EMAIL,
                "client_id": "1",
                "token_uri": token_uri,
            }
        )
    )
    return path


@pytest.fixture
def gcp_registry(registry_factory: Any) -> LocalRegistry:
    registry: LocalRegistry = registry_factory(
        "gcp", auth="htpasswd", users={"oauth2accesstoken": TOKEN}
    )
    return registry


def base_env(tmp_path: Path) -> dict[str, str]:
    """Nothing of this machine's own Google setup; the metadata server off unless set."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GCE_", "GOOGLE_"))}
    env.update(
        CLOUDSDK_CONFIG=str(tmp_path / "gcloud"),
        DOCKER_CONFIG=str(tmp_path / "docker"),
        GCE_METADATA_IP="127.0.0.1:9",
        GCE_METADATA_HOST="127.0.0.1:9",
        COLUMNS="200",
    )
    return env


async def _run(args: list[str], env: dict[str, str]) -> tuple[int, str, str]:
    """Run `ocimirror ARGS` in `env` (the whole environment)."""
    return await ocimirror_async(*args, base=env)


async def test_metadata_server_token_pushes_to_artifact_registry(
    gcp_registry: LocalRegistry, registry: LocalRegistry, tmp_path: Path
) -> None:
    """On Cloud Run (the metadata server), a copy's pushes carry the service's token."""
    await seed(registry, "lib/app", [("1", make_image(layer_size=300, seed="gce"))])
    seen: list[str] = []
    async with metadata_server(seen) as md:
        env = {
            **base_env(tmp_path),
            "GCE_METADATA_IP": md,
            "GCE_METADATA_HOST": md,
            "OCIMIRROR_REGISTRY_ENDPOINTS": f"{AR}=http://{gcp_registry.host}",
        }
        code, out, err = await _run(["login-check", AR], env)
        assert code == 0, out + err
        assert f"identity: {EMAIL}" in out
        assert re.search(r"token: yes, expires in [45]\d min", out), out
        assert TOKEN not in out + err
        code, out, err = await _run(
            ["copy", f"{registry.host}/lib/app:1", f"{AR}/project/repo/app:1"], env
        )
        assert code == 0, err
    assert gcp_registry.tags("project/repo/app") == ["1"]
    assert any(p.endswith("/token") for p in seen)


async def test_key_file_token_from_its_token_uri(
    gcp_registry: LocalRegistry, registry: LocalRegistry, tmp_path: Path
) -> None:
    """GOOGLE_APPLICATION_CREDENTIALS: a signed assertion goes to the key's token_uri."""
    await seed(registry, "lib/app", [("2", make_image(layer_size=200, seed="key"))])
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    granted: list[dict[str, Any]] = []
    async with token_endpoint(key, granted) as uri:
        env = {
            **base_env(tmp_path),
            "GOOGLE_APPLICATION_CREDENTIALS": str(key_file(tmp_path / "key.json", key, uri)),
            "OCIMIRROR_REGISTRY_ENDPOINTS": f"{AR}=http://{gcp_registry.host}",
        }
        code, _out, err = await _run(
            ["copy", f"{registry.host}/lib/app:2", f"{AR}/project/repo/app:2"], env
        )
        assert code == 0, err
    assert gcp_registry.tags("project/repo/app") == ["2"]
    assert granted
    assert granted[0]["iss"] == EMAIL
    assert granted[0]["exp"] > time.time()


async def test_without_google_credentials_public_pulls_stay_anonymous(
    registry: LocalRegistry, gcp_registry: LocalRegistry, tmp_path: Path
) -> None:
    """gcr.io without any Google credentials: a public pull works (the keychain is asked
    only when the registry wants credentials); a private one fails with one warning
    naming host, provider and cause; login-check says why there is no token."""
    await seed(registry, "distroless/static", [("1", make_image(layer_size=100, seed="pub"))])
    env = {**base_env(tmp_path), "OCIMIRROR_REGISTRY_ENDPOINTS": f"gcr.io=http://{registry.host}"}
    code, _, err = await _run(
        ["copy", "gcr.io/distroless/static:1", f"{registry.host}/copied/static:1"], env
    )
    assert code == 0, err
    private = {**env, "OCIMIRROR_REGISTRY_ENDPOINTS": f"gcr.io=http://{gcp_registry.host}"}
    code, _, err = await _run(
        ["copy", "gcr.io/private/app:1", f"{registry.host}/copied/private:1"], private
    )
    assert code == 1
    assert "gcr.io: Google Artifact Registry: no Application Default Credentials" in err
    code, out, _ = await _run(["login-check", "gcr.io"], env)
    assert code == 1
    assert "token: no (gcr.io: Google Artifact Registry: no Application Default" in out


async def test_proxy_upstream_logs_in_with_the_key_file(
    gcp_registry: LocalRegistry, tmp_path: Path, start_proxy: Any
) -> None:
    """serverless-registry-proxy's REGISTRY_HOST and GOOGLE_APPLICATION_CREDENTIALS: the
    proxy's upstream requests carry the key's token, so an anonymous client pulls."""
    await seed(gcp_registry, "project/repo/app", [("3", make_image(layer_size=100, seed="px"))])
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    granted: list[dict[str, Any]] = []
    async with token_endpoint(key, granted) as uri:
        env = {
            **base_env(tmp_path),
            "REGISTRY_HOST": AR,
            "GOOGLE_APPLICATION_CREDENTIALS": str(key_file(tmp_path / "key.json", key, uri)),
            "OCIMIRROR_REGISTRY_ENDPOINTS": f"{AR}=http://{gcp_registry.host}",
        }
        proxy = await asyncio.to_thread(start_proxy, env=env)
        accept = {"Accept": "application/vnd.oci.image.manifest.v1+json"}
        answer = await asyncio.to_thread(
            proxy.call, "GET", "/v2/project/repo/app/manifests/3", headers=accept
        )
        assert answer.status == 200, answer.body[:300]
    assert granted
    assert granted[0]["iss"] == EMAIL


async def test_serve_pushes_with_the_metadata_servers_identity(
    gcp_registry: LocalRegistry, registry: LocalRegistry, tmp_path: Path
) -> None:
    """`serve` on Cloud Run: a `POST /` mirrors into Artifact Registry with the service's
    own token (from the metadata server), no credentials configured."""
    import aiohttp

    from ocimirror.testkit.registry import free_port

    await seed(registry, "lib/app", [("3", make_image(layer_size=200, seed="serve-gce"))])
    seen: list[str] = []
    port = free_port()
    log = tmp_path / "serve.log"
    async with metadata_server(seen) as md:
        env = {
            **base_env(tmp_path),
            "GCE_METADATA_IP": md,
            "GCE_METADATA_HOST": md,
            "OCIMIRROR_REGISTRY_ENDPOINTS": f"{AR}=http://{gcp_registry.host}",
        }
        args = ["serve", "--port", str(port), "--state", f"sqlite:///{tmp_path}/state.db"]
        with log.open("w") as out:
            proc = await asyncio.create_subprocess_exec(
                *ocimirror_command(*args, "--allow-private-networks"),
                env=env,
                stdout=out,
                stderr=out,
            )
        base = f"http://127.0.0.1:{port}"
        try:
            async with aiohttp.ClientSession() as http:
                for _ in range(300):  # polling a condition: the server answering
                    assert proc.returncode is None, log.read_text()
                    try:
                        async with http.get(f"{base}/healthz") as r:
                            if r.status == 200:
                                break
                    except aiohttp.ClientError:
                        pass
                    await asyncio.sleep(0.1)
                body = {
                    "mirrors": [
                        {"src": f"{registry.host}/lib/app:3", "dst": f"{AR}/project/repo/app:3"}
                    ]
                }
                async with http.post(f"{base}/", json=body) as r:
                    answer = await r.text()
                    assert r.status == 200, answer + log.read_text()
            assert answer == '{"ok":true}\n'
        finally:
            proc.terminate()
            await proc.wait()
    assert gcp_registry.tags("project/repo/app") == ["3"]
    assert any(p.endswith("/token") for p in seen)
    assert TOKEN not in log.read_text()
