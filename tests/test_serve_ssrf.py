"""`ocimirror serve` reached on behalf of its callers: where API jobs may connect (the address
policy) and what their errors may say (never what an internal service answered).

Each test sends the request that showed the hole (issue 11): a `src` naming a loopback
service, a name resolving to loopback, a manifest redirect to loopback, open and closed ports.
"""

from __future__ import annotations

import ipaddress
import json
import socket
import socketserver
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from aiohttp.abc import AbstractResolver, ResolveResult

from ocimirror.errors import public_message, registry_public, scrub
from ocimirror.netpolicy import AddressPolicy, address_refusal
from ocimirror.service.commands import address_policy
from ocimirror.service.jobs import JobManager
from ocimirror.service.models import MirrorEntry, MirrorRequest
from ocimirror.settings.config import Api, Config
from ocimirror.settings.registries import Registry, Tls
from ocimirror.state.db import StateDB
from ocimirror.testkit.command import run_ocimirror
from ocimirror.testkit.registry import LocalRegistry, free_port
from ocimirror.testkit.scripted import ScriptedHandler, ScriptedServer
from test_serve import Server, job_done

SECRET = "hunter2-never-echo-this"
#: What the internal service answers with a 400: a registry-shaped error full of secrets.
JSON_ERROR = {
    "errors": [
        {
            "code": "UNSUPPORTED",
            "message": f"db password {SECRET}",
            "detail": f"dsn=postgres://admin:{SECRET}@db.internal/prod",
        }
    ],
    "config": {"password": SECRET},
}
HINT = "allow it with --allow-registry"


class Internal(ScriptedServer):
    """A loopback HTTP service that must not be read through serve; it records requests.

    `/v2/json/…` answers 400 with `JSON_ERROR`, `/v2/text/…` 403 with a plain-text
    secret, `/v2/redirect/…` 307 to `redirect_to` (same path), `/v2/realm/…` 401 with a
    bearer challenge whose realm is `redirect_to`; anything else 404.
    """

    def __init__(self) -> None:
        self.requests: list[str] = []
        self.redirect_to = ""
        outer = self

        class Handler(ScriptedHandler):
            def do_HEAD(self) -> None:
                self.do_GET()

            def do_GET(self) -> None:
                outer.requests.append(f"{self.command} {self.path}")
                headers: dict[str, str] = {}
                if "/json/" in self.path:
                    status, body = 400, json.dumps(JSON_ERROR).encode()
                    headers["Content-Type"] = "application/json"
                elif "/text/" in self.path:
                    status, body = 403, f"config: password={SECRET}\n".encode()
                    headers["Content-Type"] = "text/plain"
                elif "/realm/" in self.path and outer.redirect_to:
                    status, body = 401, b""
                    realm = f'Bearer realm="{outer.redirect_to}/token",service="x"'
                    headers["WWW-Authenticate"] = realm
                elif "/redirect/" in self.path and outer.redirect_to:
                    status, body = 307, b""
                    headers["Location"] = outer.redirect_to + self.path
                else:
                    status, body = 404, f"nothing here but {SECRET}".encode()
                self.answer(status, body, headers)

        super().__init__(Handler)


class Banner:
    """A loopback TCP service that is not HTTP: it writes a banner and hangs up."""

    def __init__(self) -> None:
        class Handler(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                self.request.sendall(f"SSH-2.0-OpenSSH_9.2 {SECRET}\r\n".encode())

        self.server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.port = int(self.server.server_address[1])

    def stop(self) -> None:
        """Stop serving."""
        self.server.shutdown()
        self.server.server_close()


class StaticResolver(AbstractResolver):
    """Resolves names from a table: a public-looking name for a loopback address."""

    def __init__(self, table: dict[str, str]) -> None:
        self.table = table

    async def resolve(self, host: str, port: int = 0, family: int = 0) -> list[ResolveResult]:
        """The table's address for `host`."""
        text = self.table[host]
        fam = socket.AF_INET if ipaddress.ip_address(text).version == 4 else socket.AF_INET6
        return [
            {"hostname": host, "host": text, "port": port, "family": fam, "proto": 0, "flags": 0}
        ]

    async def close(self) -> None:
        """Nothing to close."""


@pytest.fixture
def internal() -> Iterator[Internal]:
    """An internal service on loopback."""
    service = Internal()
    yield service
    service.stop()


@pytest.fixture
def started(tmp_path: Path) -> Iterator[list[Server]]:
    """Servers a test starts, killed at its end."""
    servers: list[Server] = []
    yield servers
    for s in servers:
        s.kill()


def start(
    started: list[Server], tmp_path: Path, *args: str, env: dict[str, str] | None = None
) -> Server:
    """`ocimirror serve ARGS` with the default address policy (nothing private allowed)."""
    server = Server(tmp_path, *args, env=env, private=False)
    started.append(server)
    return server


def mirror(server: Server, *pairs: tuple[str, str]) -> list[str]:
    """`POST /` with these entries; the error of each (all must fail), in order."""
    answer = server.call("POST", "/", {"mirrors": [{"src": s, "dst": d} for s, d in pairs]})
    assert answer.status == 200
    doc = answer.json()
    assert doc["ok"] is False
    assert [e["index"] for e in doc["errors"]] == list(range(len(pairs)))
    for e, (src, dst) in zip(doc["errors"], pairs, strict=True):
        assert e["name"] == f"({src} to {dst})"
    return [e["error"] for e in doc["errors"]]


# -- the policy -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("address", "reason"),
    [
        ("127.0.0.1", "loopback address"),
        ("127.8.9.10", "loopback address"),
        ("::1", "loopback address"),
        ("10.1.2.3", "private address"),
        ("172.16.0.1", "private address"),
        ("192.168.1.1", "private address"),
        ("169.254.169.254", "link-local address"),
        ("fe80::1", "link-local address"),
        ("100.64.0.1", "shared (CGNAT) address"),
        ("fd00::1", "unique local address"),
        ("0.0.0.0", "unspecified address"),
        ("::", "unspecified address"),
        ("224.0.0.1", "multicast address"),
        ("ff02::1", "multicast address"),
        ("240.0.0.1", "private address"),
        ("::ffff:127.0.0.1", "loopback address"),
        ("::ffff:169.254.169.254", "link-local address"),
        ("64:ff9b::a00:1", "private address"),
        ("2002:7f00:1::", "loopback address"),
        ("8.8.8.8", None),
        ("2606:4700:4700::1111", None),
        ("::ffff:8.8.8.8", None),
    ],
)
def test_addresses_that_are_not_public_are_refused(address: str, reason: str | None) -> None:
    assert address_refusal(ipaddress.ip_address(address)) == reason


def test_policy_allows_by_name_port_glob_and_range() -> None:
    policy = AddressPolicy(
        allowed=("127.0.0.1:5000", "reg.internal", "*.corp.example", "10.1.0.0/16"), hint=HINT
    )
    assert policy.refusal("127.0.0.1:5000") is None
    assert str(policy.refusal("127.0.0.1:5001")) == (
        f"registry 127.0.0.1:5001 is not allowed: loopback address; {HINT}"
    )
    assert str(policy.refusal("LOCALHOST:5000")) == (
        f"registry localhost:5000 is not allowed: loopback address; {HINT}"
    )
    assert policy.refusal("reg.internal:7000") is None  # a name without port: every port
    assert policy.refusal("a.corp.example") is None
    assert policy.refusal("10.1.200.3:443") is None
    assert str(policy.refusal("10.2.0.1")).startswith("registry 10.2.0.1 is not allowed: private")
    assert str(policy.refusal("[::1]:5000")).startswith("registry [::1]:5000 is not allowed")
    assert policy.refusal("registry.example.com") is None  # a name: checked at connection
    assert AddressPolicy(allow_private=True).refusal("127.0.0.1:5001") is None
    with pytest.raises(ValueError, match="expected HOST"):
        AddressPolicy(allowed=("host:99999",))
    with pytest.raises(ValueError, match="address range"):
        AddressPolicy(allowed=("10.0.0.0/99",))


def test_serve_allows_the_registries_its_config_names(monkeypatch: pytest.MonkeyPatch) -> None:
    config = Config.model_validate(
        {
            "registries": {"docker.io": {}, "10.0.0.5:5000": {}},
            "mirrors": [{"source": "127.0.0.1:6000/lib/app", "targets": ["[::1]:7000/m/app"]}],
            "api": {"allowed_registries": ["*.corp.example"]},
        }
    )
    monkeypatch.setenv("OCIMIRROR_ALLOWED_REGISTRIES", " 192.168.0.0/16 , ")
    policy = address_policy(config, ["localhost:5000"], allow_private=False)
    for allowed in (
        "registry-1.docker.io",
        "10.0.0.5:5000",
        "127.0.0.1:6000",
        "[::1]:7000",
        "a.corp.example",
        "192.168.3.4",
        "localhost:5000",
    ):
        assert policy.refusal(allowed) is None, allowed
    for refused in ("10.0.0.5:5001", "127.0.0.1:6001", "localhost:5001", "172.16.0.1"):
        assert str(policy.refusal(refused)).endswith(f"; {HINT}"), refused
    assert not policy.allow_private
    private = config.model_copy(update={"api": Api(allow_private_networks=True)})
    assert address_policy(private, [], allow_private=False).allow_private


def test_bad_allowed_registry_is_a_clear_error(tmp_path: Path) -> None:
    done = run_ocimirror("serve", "--allow-registry", "reg:notaport", timeout=60)
    assert done.returncode == 2
    assert "--allow-registry or $OCIMIRROR_ALLOWED_REGISTRIES: 'reg:notaport'" in done.stderr
    config = tmp_path / "serve.yaml"
    config.write_text("api:\n  allowed_registries: ['10.0.0.0/99']\n")
    done = run_ocimirror("serve", "-c", str(config), timeout=60)
    assert done.returncode == 2
    assert "api.allowed_registries" in done.stderr
    assert "address range" in done.stderr


def test_registry_answers_reach_callers_as_status_and_codes_only() -> None:
    public = registry_public("r.example/a:1", 400, ("UNSUPPORTED", "lower case", "X" * 60))
    assert public == "r.example/a:1: HTTP 400 UNSUPPORTED (the operation is unsupported)"
    text = scrub(f"token service http://10.0.0.9/auth?x={SECRET} said 'x' \x1b[31m{'y' * 300}")
    assert SECRET not in text
    assert "10.0.0.9" not in text
    assert "\x1b" not in text
    assert len(text) <= 120
    assert public_message(KeyError(SECRET)) == "internal error (the server log has the details)"
    assert public_message(ConnectionRefusedError(SECRET)) == "a registry could not be reached"


# -- serve: refused before any connection -----------------------------------------------------


def test_internal_addresses_are_refused_before_any_request(
    internal: Internal, started: list[Server], tmp_path: Path
) -> None:
    server = start(started, tmp_path)
    dst = "registry.example.com/copy/app"
    pairs = [
        (f"{internal.host}/json/app:1", dst),
        (f"localhost:{internal.port}/json/app:1", dst),
        (f"[::1]:{internal.port}/json/app:1", dst),
        ("169.254.169.254/latest/meta-data:1", dst),
        ("10.20.30.40:5000/team/app:1", dst),
        ("registry.example.com/copy/app:1", f"{internal.host}/json/copy"),
    ]
    errors = mirror(server, *pairs)
    assert errors == [
        f"registry {internal.host} is not allowed: loopback address; {HINT}",
        f"registry localhost:{internal.port} is not allowed: loopback address; {HINT}",
        f"registry [::1]:{internal.port} is not allowed: loopback address; {HINT}",
        f"registry 169.254.169.254 is not allowed: link-local address; {HINT}",
        f"registry 10.20.30.40:5000 is not allowed: private address; {HINT}",
        f"registry {internal.host} is not allowed: loopback address; {HINT}",
    ]
    # The jobs API refuses the same way.
    answer = server.call("POST", "/api/v1/jobs", {"mirrors": [{"src": pairs[0][0], "dst": dst}]})
    assert answer.status == 202
    job = job_done(server, answer.json()["id"])
    assert job["state"] == "failed"
    assert job["errors"][0]["error"] == errors[0]
    assert internal.requests == []


def test_open_and_closed_ports_give_the_same_error(
    internal: Internal, dst_registry: LocalRegistry, started: list[Server], tmp_path: Path
) -> None:
    closed = free_port()
    banner = Banner()
    try:
        refusing = start(started, tmp_path)
        open_, shut = mirror(
            refusing,
            (f"{internal.host}/json/app:1", "registry.example.com/a/b"),
            (f"127.0.0.1:{closed}/json/app:1", "registry.example.com/a/b"),
        )
        assert open_.replace(str(internal.port), "PORT") == shut.replace(str(closed), "PORT")
        # Allowed, a service that is not HTTP reads as a closed port, and nothing of it shows.
        allowing = Server(tmp_path, "--allow-private-networks", private=False)
        started.append(allowing)
        talking, silent = mirror(
            allowing,
            (f"127.0.0.1:{banner.port}/a/app:1", f"{dst_registry.host}/a/b"),
            (f"127.0.0.1:{closed}/a/app:1", f"{dst_registry.host}/a/b"),
        )
    finally:
        banner.stop()
    assert talking == f"registry 127.0.0.1:{banner.port} could not be reached"
    assert silent == f"registry 127.0.0.1:{closed} could not be reached"
    assert internal.requests == []


# -- serve: an allowed internal service is not read back --------------------------------------


# SECRET is what an internal service answers: the log (the operator's) names it, by design;
# the answers must not (asserted here).
@pytest.mark.secrets_expected
def test_allowed_internal_service_is_not_echoed(
    internal: Internal, dst_registry: LocalRegistry, started: list[Server], tmp_path: Path
) -> None:
    # Allowed by the config, the destination by the environment.
    config = tmp_path / "serve.yaml"
    config.write_text(f"api:\n  allowed_registries: ['{internal.host}']\n")
    env = {"OCIMIRROR_ALLOWED_REGISTRIES": dst_registry.host}
    server = start(started, tmp_path, "-c", str(config), env=env)
    dst = f"{dst_registry.host}/copy/app"
    as_json, as_text = mirror(
        server, (f"{internal.host}/json/app:1", dst), (f"{internal.host}/text/app:1", dst)
    )
    assert (
        as_json
        == f"{internal.host}/json/app:1: HTTP 400 UNSUPPORTED (the operation is unsupported)"
    )
    assert as_text == f"{internal.host}/text/app:1: HTTP 403"
    assert internal.requests  # it was reached: the policy allowed it
    # Nothing it wrote shows anywhere: the answer, the jobs API, the dashboard.
    answer = server.call(
        "POST", "/api/v1/jobs", {"mirrors": [{"src": f"{internal.host}/json/app:1", "dst": dst}]}
    )
    job_done(server, answer.json()["id"])
    for path in ("/api/v1/jobs", "/api/v1/dashboard", "/"):
        body = server.call("GET", path).body.decode()
        assert internal.host in body
        for leaked in (SECRET, "db password", "db.internal", "postgres://"):
            assert leaked not in body, path


def test_redirect_and_token_realm_to_loopback_are_refused(
    internal: Internal, started: list[Server], tmp_path: Path
) -> None:
    redirector = Internal()
    redirector.redirect_to = f"http://{internal.host}"
    try:
        server = start(started, tmp_path, "--allow-registry", redirector.host)
        redirected, challenged = mirror(
            server,
            (f"{redirector.host}/redirect/app:1", f"{redirector.host}/a/b"),
            (f"{redirector.host}/realm/app:1", f"{redirector.host}/a/b"),
        )
    finally:
        redirector.stop()
    assert redirected == f"registry {internal.host} is not allowed: loopback address; {HINT}"
    # A token realm is a redirect too.
    assert challenged == redirected
    assert redirector.requests  # the allowed registry was asked
    assert internal.requests == []  # neither its redirect nor its realm was followed


# -- in process: a name that resolves to loopback ---------------------------------------------


# SECRET is what an internal service answers: the log (the operator's) names it, by design;
# the answers must not (asserted here).
@pytest.mark.secrets_expected
async def test_name_resolving_to_loopback_is_refused_at_connect(
    internal: Internal, tmp_path: Path
) -> None:
    resolver = StaticResolver({"evil.example": "127.0.0.1", "good.example": "127.0.0.1"})
    policy = AddressPolicy(allowed=("good.example",), hint=HINT, resolver=resolver)
    destination = Internal()  # answers 404 to the destination's HEAD
    good, evil = f"good.example:{internal.port}", f"evil.example:{internal.port}"
    dst = f"good.example:{destination.port}"
    plain = Registry(tls=Tls(plain_http=True))
    config = Config(registries={good: plain, evil: plain, dst: plain})
    request = MirrorRequest(
        mirrors=[
            MirrorEntry(src=f"{evil}/json/evil:1", dst=f"{dst}/a/b"),
            MirrorEntry(src=f"{good}/json/good:1", dst=f"{dst}/a/b"),
        ]
    )
    try:
        async with StateDB(f"sqlite:///{tmp_path}/state.db") as state:
            jobs = JobManager(state, policy=policy, config=config)
            try:
                response = await jobs.run_sync(request)
            finally:
                await jobs.close()
    finally:
        destination.stop()
    assert response.errors is not None
    refused, allowed = (e.error for e in response.errors)
    assert refused == f"registry {evil} is not allowed: loopback address; {HINT}"
    # The name allowed explicitly is reached, whatever its address.
    assert allowed == f"{good}/json/good:1: HTTP 400 UNSUPPORTED (the operation is unsupported)"
    assert destination.requests
    assert internal.requests
    assert not [r for r in internal.requests if "evil" in r]
