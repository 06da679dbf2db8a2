"""AWS ECR: logins from the AWS chain, and repositories created on push.

moto's server (the `s3` fixture's LocalS3 serves every AWS API) is the control plane:
GetAuthorizationToken, CreateRepository, DescribeRepositories. The data plane is a local
htpasswd registry whose one user is the one moto's token stands for (`AWS`, password
`123456789012-auth-token`), behind a front that answers NAME_UNKNOWN for a push to a
repository moto does not have, as ECR does. It is reached under the real ECR host name
through the endpoint mapping.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
from pathlib import Path
from typing import Any

import boto3
import pytest
from aiohttp import web

from ocimirror.auth.credentials import Keychain
from ocimirror.auth.ecr import EcrProvider, parse_host
from ocimirror.auth.providers import Login, ProviderSource, ProviderUnavailable, detect
from ocimirror.auth.source import Credentials
from ocimirror.errors import AuthError
from ocimirror.settings.connection import keychain_for
from ocimirror.settings.loading import parse_config
from ocimirror.testkit.command import ocimirror_command
from ocimirror.testkit.front import Front, kind_of, registry_error, serve
from ocimirror.testkit.images import make_image
from ocimirror.testkit.registry import LocalRegistry, free_port
from ocimirror.testkit.s3 import LocalS3
from ocimirror.testkit.seeding import seed

ACCOUNT = "123456789012"
REGION = "us-east-1"
ECR = f"{ACCOUNT}.dkr.ecr.{REGION}.amazonaws.com"
#: What moto's GetAuthorizationToken stands for: base64 of `AWS:<account>-auth-token`.
ECR_USERS = {"AWS": f"{ACCOUNT}-auth-token"}


@pytest.fixture
def aws(s3: LocalS3, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> dict[str, str]:
    """The AWS chain pointed at moto (and at nothing of this machine's own)."""
    env = {
        "AWS_ENDPOINT_URL": s3.endpoint,
        "AWS_ACCESS_KEY_ID": "test",
        "AWS_SECRET_ACCESS_KEY": "test",
        "AWS_DEFAULT_REGION": REGION,
        "AWS_CONFIG_FILE": str(tmp_path / "no-aws-config"),
        "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "no-aws-credentials"),
        "AWS_EC2_METADATA_DISABLED": "true",
    }
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    return env


def ecr_client() -> Any:
    return boto3.client("ecr", region_name=REGION)


def repositories() -> set[str]:
    names: set[str] = set()
    for page in ecr_client().get_paginator("describe_repositories").paginate():
        names |= {r["repositoryName"] for r in page["repositories"]}
    return names


@pytest.fixture
def ecr_registry(registry_factory: Any) -> LocalRegistry:
    registry: LocalRegistry = registry_factory("ecr", auth="htpasswd", users=ECR_USERS)
    return registry


async def _name_unknown_unless_in_moto(
    front: Front, request: web.Request, body: bytes
) -> web.StreamResponse | None:
    """ECR's answer to a push into a repository that does not exist."""
    kind = kind_of(request)
    pushing = (request.method == "POST" and kind == "upload") or (
        request.method == "PUT" and kind == "manifest"
    )
    if not pushing:
        return None
    repo = request.path.removeprefix("/v2/").split("/blobs/")[0].split("/manifests/")[0]
    if repo not in await asyncio.to_thread(repositories):
        return registry_error(404, "NAME_UNKNOWN")
    return None


def test_host_names() -> None:
    assert parse_host(ECR) is not None
    assert parse_host(f"{ACCOUNT}.dkr.ecr-fips.us-gov-west-1.amazonaws.com") == parse_host(
        f"{ACCOUNT}.dkr.ecr-fips.us-gov-west-1.amazonaws.com"
    )
    fips = parse_host(f"{ACCOUNT}.dkr.ecr-fips.us-east-2.amazonaws.com")
    assert fips is not None
    assert fips.fips
    assert fips.region == "us-east-2"
    cn = parse_host(f"{ACCOUNT}.dkr.ecr.cn-north-1.amazonaws.com.cn")
    assert cn is not None
    assert cn.region == "cn-north-1"
    public = parse_host("public.ecr.aws")
    assert public is not None
    assert public.public
    assert parse_host("ecr.example.com") is None
    assert parse_host(f"{ACCOUNT}.dkr.ecr.{REGION}.amazonaws.com.evil.example") is None
    assert detect(ECR) == "ecr"
    assert detect("europe-docker.pkg.dev") == "gcp"
    assert detect("gcr.io") == "gcp"
    assert detect("eu.gcr.io") == "gcp"
    assert detect("x.azurecr.io") == "azure"
    assert detect("registry.example.com") is None


async def test_login_is_moto_token_with_its_expiry(aws: dict[str, str]) -> None:
    login = await EcrProvider().login(ECR)
    assert login.credentials.username == "AWS"
    assert login.credentials.password == f"{ACCOUNT}-auth-token"
    assert login.expires_at is not None  # moto's fixed expiresAt (2015-01-01)
    assert "auth-token" not in repr(login.credentials)


async def test_no_aws_credentials_is_one_line_and_falls_back_when_detected(
    aws: dict[str, str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    with pytest.raises(ProviderUnavailable) as e:
        await EcrProvider().login(ECR)
    assert str(e.value).startswith(f"{ECR}: AWS ECR: no AWS credentials found")
    # Detected from the name: anonymous, and the chain is not probed again for a while.
    calls: list[str] = []

    class Counting(EcrProvider):
        async def login(self, host: str) -> Login:
            calls.append(host)
            return await super().login(host)

    source = ProviderSource(providers={"ecr": Counting()})
    chain = Keychain(config_path=os.devnull, cloud_sources=[source])
    assert (await chain.resolve(ECR)).anonymous
    assert await source.credentials_for(ECR) is None
    assert calls == [ECR]
    # Named for the host (docker-sync's `helper: ecr`): an error naming host and cause.
    cfg = parse_config(f"registries:\n  {ECR}:\n    credentials: {{helper: ecr}}\n")
    with pytest.raises(AuthError, match="no AWS credentials"):
        await keychain_for(cfg).resolve(ECR)


async def test_docker_auth_files_come_before_the_cloud_login(
    aws: dict[str, str], tmp_path: Path
) -> None:
    """What `docker login` put in an auth file keeps working, as it did before."""
    authfile = tmp_path / "auth.json"
    authfile.write_text(json.dumps({"auths": {ECR: {"username": "u", "password": "p"}}}))
    chain = Keychain(config_path=authfile, cloud_sources=[ProviderSource()])
    assert (await chain.resolve(ECR)).username == "u"
    chain = Keychain(config_path=os.devnull, cloud_sources=[ProviderSource()])
    assert (await chain.resolve(ECR)).password == f"{ACCOUNT}-auth-token"


async def test_access_denied_and_unreachable_api_name_the_cause(
    aws: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """AccessDenied (ECR's JSON error, from a stand-in of the API) and an API that cannot
    be reached (what a wrong region looks like) are one line naming host and cause."""

    async def denied(request: web.Request) -> web.Response:
        body = {
            "__type": "AccessDeniedException",
            "message": "User: arn:aws:iam::123456789012:user/ci is not authorized to perform:"
            " ecr:GetAuthorizationToken",
        }
        return web.json_response(body, status=400, content_type="application/x-amz-json-1.1")

    app = web.Application()
    app.router.add_post("/", denied)
    async with serve(app) as port:
        monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{port}")
        with pytest.raises(AuthError) as e:
            await EcrProvider().login(ECR)
    message = str(e.value)
    assert message.startswith(f"{ECR}: AWS ECR: get_authorization_token: AccessDeniedException")
    assert "\n" not in message
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{free_port()}")
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    with pytest.raises(AuthError) as e:
        await EcrProvider().login(f"{ACCOUNT}.dkr.ecr.eu-nowhere-1.amazonaws.com")
    assert "cannot reach the ecr API of region eu-nowhere-1 (is the region right?)" in str(e.value)


class _Clocked:
    """A provider stand-in whose logins expire `life` seconds after the clock's now."""

    title = "stand-in"

    def __init__(self, clock: list[float], life: float) -> None:
        self.clock, self.life, self.logins = clock, life, 0

    async def login(self, host: str) -> Login:
        self.logins += 1
        creds = Credentials(username="AWS", password=f"token-{self.logins}")
        return Login(creds, self.clock[0] + self.life)

    async def identity(self, host: str) -> str:
        return "stand-in"


async def test_the_keychain_renews_a_login_before_it_expires() -> None:
    now = [1000.0]
    provider = _Clocked(now, life=3600)
    chain = Keychain(
        cloud_sources=[ProviderSource(providers={"ecr": provider})],
        clock=lambda: now[0],
        config_path=os.devnull,
    )
    assert (await chain.resolve(ECR)).password == "token-1"
    now[0] += 3500  # more than a minute left: the same token
    assert (await chain.resolve(ECR)).password == "token-1"
    now[0] += 50  # within the last minute: a new one
    assert (await chain.resolve(ECR)).password == "token-2"
    assert provider.logins == 2


async def test_moto_expired_token_is_asked_again_each_time(aws: dict[str, str]) -> None:
    """moto's token says it expired in 2015: the keychain never reuses it."""
    calls: list[str] = []

    class Counting(EcrProvider):
        async def login(self, host: str) -> Login:
            calls.append(host)
            return await super().login(host)

    chain = Keychain(
        cloud_sources=[ProviderSource(providers={"ecr": Counting()})], config_path=os.devnull
    )
    first = await chain.resolve(ECR)
    second = await chain.resolve(ECR)
    assert first == second
    assert len(calls) == 2


DMI_INI = """\
[DEFAULT]
refresh = 0

[alpine]
image = lib/alpine
tag = 3.20,3.19
source-repository = {source}
project = mirror
"""


async def _run(args: list[str], env: dict[str, str]) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        *args,
        env={**os.environ, **env, "COLUMNS": "200"},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await proc.communicate()
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_docker_mirror_image_config_mirrors_into_ecr_creating_repositories(
    aws: dict[str, str], ecr_registry: LocalRegistry, registry: LocalRegistry, tmp_path: Path
) -> None:
    """config.ini as Docker Mirror Image's README writes it, with CLOUD=AWS, AWS_ACCOUNT
    and AWS_DEFAULT_REGION: no target flag, the login from the AWS chain, the missing
    repository created in moto, the images at the data plane. A dry run first says which
    repository would be created and creates nothing."""
    await seed(
        registry,
        "lib/alpine",
        [("3.20", make_image(layer_size=300, seed="a1")), ("3.19", make_image(seed="a2"))],
    )
    ini = tmp_path / "config.ini"
    ini.write_text(DMI_INI.format(source=registry.host))
    front = Front(ecr_registry, _name_unknown_unless_in_moto)
    async with front.running():
        env = {
            **aws,
            "CLOUD": "AWS",
            "AWS_ACCOUNT": ACCOUNT,
            "OCIMIRROR_REGISTRY_ENDPOINTS": f"{ECR}=http://{front.host}",
            "DOCKER_CONFIG": str(tmp_path / "no-docker"),
        }
        env.pop("OCIMIRROR_TARGET_REGISTRY", None)
        code, out, err = await _run(
            [*ocimirror_command("sync", "--no-state", "--dry-run", "-c", str(ini))], env
        )
        assert code == 0, err
        assert f"would create repository {ECR}/mirror/alpine" in err
        assert "mirror/alpine" not in await asyncio.to_thread(repositories)
        code, out, err = await _run([*ocimirror_command("sync", "--no-state", "-c", str(ini))], env)
        assert code == 0, err
    assert "mirror/alpine" in await asyncio.to_thread(repositories)
    assert sorted(ecr_registry.tags("mirror/alpine")) == ["3.19", "3.20"]
    pushes = front.of("PUT", "manifest")
    expected = "Basic " + base64.b64encode(f"AWS:{ACCOUNT}-auth-token".encode()).decode()
    assert pushes
    assert all(s.headers.get("Authorization") == expected for s in pushes)
    assert f"{ACCOUNT}-auth-token" not in out + err


async def test_no_repository_creation_without_the_setting(
    aws: dict[str, str], ecr_registry: LocalRegistry, registry: LocalRegistry, tmp_path: Path
) -> None:
    """A docker-sync config with `helper: ecr` logs in natively; its repositories are not
    created (docker-sync never did), so the push is refused with NAME_UNKNOWN."""
    await seed(registry, "lib/app", [("1", make_image(layer_size=200, seed="ds"))])
    cfg = tmp_path / "docker-sync.yaml"
    cfg.write_text(
        "sync:\n"
        "  registries:\n"
        f"    - url: {ECR}\n"
        "      auth: {helper: ecr}\n"
        "  images:\n"
        f"    - source: {registry.host}/lib/app\n"
        f"      targets: [{ECR}/ds/app]\n"
        "ecr:\n"
        f"  region: {REGION}\n"
    )
    await asyncio.to_thread(ecr_client().create_repository, repositoryName="ds/exists")
    front = Front(ecr_registry, _name_unknown_unless_in_moto)
    async with front.running():
        env = {**aws, "OCIMIRROR_REGISTRY_ENDPOINTS": f"{ECR}=http://{front.host}"}
        code, _, err = await _run([*ocimirror_command("sync", "--no-state", "-c", str(cfg))], env)
        assert code != 0
        assert "NAME_UNKNOWN" in err or "name unknown" in err.lower() or "404" in err
        assert "ds/app" not in await asyncio.to_thread(repositories)
        # The login worked: the front saw moto's token on the refused push.
        assert any(s.headers.get("Authorization", "").startswith("Basic ") for s in front.seen)
        # Into a repository that exists the same config pushes.
        cfg.write_text(cfg.read_text().replace("ds/app", "ds/exists"))
        code, _, err = await _run([*ocimirror_command("sync", "--no-state", "-c", str(cfg))], env)
        assert code == 0, err
    assert ecr_registry.tags("ds/exists") == ["1"]


def test_create_repositories_is_refused_for_other_registries() -> None:
    with pytest.raises(Exception, match="AWS ECR registries only"):
        parse_config("registries:\n  registry.example.com:\n    create_repositories: true\n")


async def test_a_login_that_expires_between_passes_of_run_is_renewed(
    registry: LocalRegistry, dst_registry: LocalRegistry
) -> None:
    """The daemon keeps one pool (and keychain) across passes: once the clock passes the
    login's expiry, the next pass logs in again and pushes with the new token. A front
    accepts only the current token, as ECR refuses an expired one."""
    from ocimirror.stores.pool import StorePool
    from ocimirror.sync.runner import sync_pass

    now = [1000.0]
    provider = _Clocked(now, life=12 * 3600)
    valid = ["token-1"]

    async def current_token_only(
        front: Front, request: web.Request, body: bytes
    ) -> web.StreamResponse | None:
        expected = "Basic " + base64.b64encode(f"AWS:{valid[0]}".encode()).decode()
        if request.path.startswith("/v2") and request.headers.get("Authorization") != expected:
            return web.Response(status=401, headers={"WWW-Authenticate": 'Basic realm="ecr"'})
        return None

    await seed(registry, "lib/app", [("1", make_image(layer_size=100, seed="r1"))])
    front = Front(dst_registry, current_token_only)
    async with front.running():
        config = parse_config(
            f"registries:\n  {ECR}:\n    endpoint: http://{front.host}\n"
            f"mirrors:\n  - name: app\n    source: {registry.host}/lib/app\n"
            f"    targets: [{ECR}/app]\n"
        )
        keychain = Keychain(
            cloud_sources=[ProviderSource(providers={"ecr": provider})],
            clock=lambda: now[0],
            config_path=os.devnull,
        )
        pool = StorePool(keychain=keychain)
        try:
            (first,) = await sync_pass(config, state=None, pool=pool)
            assert first.status == "ok", first.failed
            # Twelve hours on: ECR no longer takes the first token.
            now[0] += 12 * 3600
            valid[0] = "token-2"
            await seed(registry, "lib/app", [("2", make_image(layer_size=100, seed="r2"))])
            (second,) = await sync_pass(config, state=None, pool=pool)
            assert second.status == "ok", second.failed
        finally:
            await pool.close()
    assert sorted(dst_registry.tags("app")) == ["1", "2"]
    assert provider.logins == 2


async def test_ecr_public_asks_ecr_public_in_us_east_1(aws: dict[str, str]) -> None:
    """moto has no ecr-public: botocore's Stubber checks the call and gives its answer."""
    from datetime import UTC, datetime

    from botocore.stub import Stubber

    from ocimirror.auth.ecr import EcrRegistry

    provider = EcrProvider()
    client = provider._client("ecr-public", EcrRegistry("", "us-east-1", public=True))
    expires = datetime(2099, 1, 1, tzinfo=UTC)
    token = base64.b64encode(b"AWS:public-token").decode()
    with Stubber(client) as stub:
        stub.add_response(
            "get_authorization_token",
            {"authorizationData": {"authorizationToken": token, "expiresAt": expires}},
            {},
        )
        login = await provider.login("public.ecr.aws")
        stub.assert_no_pending_responses()
    assert client.meta.region_name == "us-east-1"
    assert login.credentials.username == "AWS"
    assert login.credentials.password == "public-token"
    assert login.expires_at == expires.timestamp()
