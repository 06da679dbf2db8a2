"""Real registries on loopback for tests, the demo and benchmarks.

`LocalRegistry` runs the CNCF distribution registry (Debian's `docker-registry`, 2.8) as a
subprocess on 127.0.0.1, with a generated `config.yml` and filesystem storage in its own
directory. Auth is `"none"`, `"htpasswd"` (bcrypt file made with `htpasswd -B`) or
`"token"` (a `TokenServer`); TLS is optional. `stop()` then `start()` brings it back on
the same port with the same storage, for clients and caches that must outlive an outage.
`proxy_remote="http://HOST:PORT"` makes it distribution's pull-through cache of that
registry (its `proxy: remoteurl:` section): pulls are served from its storage, filled from
the remote on a miss; it refuses pushes.

Request counting: the registry writes an access log line (Combined Log Format) for every
request, whatever its status, to stdout, which goes to `access.log`; `requests()` parses
it into `Request(method, path, status, ...)` (`accesslog`), and `count()` filters by
method, kind (`manifest`, `blob`, `upload`, `tags`...), path and status. `mark()` and
`requests(since=mark)`, or `clear_log()`, count from a point on; a restart keeps the log.

The registry writes a line *after* its response, so a client may already hold a large
blob whose line is not written yet (a naive read misses about half of them). With
`exact_counting` (the default) the registry logs at debug level into `registry.log`,
including "authorizing request" as each request starts, before any response;
`requests()` waits until every started request has its access log line, so every request
a client has seen answered is counted, exactly. Debug logging costs the registry about
30% per request: benchmarks pass `exact_counting=False`, which waits instead for a marker
request's line and 5 ms of quiet (right but for rare races under heavy load).

skopeo, to judge a registry the way a user's tool would, is in `skopeo`.
"""

from __future__ import annotations

import atexit
import base64
import contextlib
import http.client
import json
import os
import re
import secrets
import signal
import socket
import subprocess
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Literal, Self

import yaml

from . import secrets as scanned_secrets
from .accesslog import SYNC_PREFIX, Request, RequestLog, file_size
from .lifecycle import StartStop
from .tls import TlsFiles
from .tokenserver import Access, TokenServer

#: How a registry authenticates clients.
AuthMode = Literal["none", "htpasswd", "token"]


class RegistryError(RuntimeError):
    """A local registry could not be started or used."""


@dataclass(frozen=True)
class HttpResponse:
    """A response to `LocalRegistry.http`."""

    status: int
    headers: http.client.HTTPMessage
    body: bytes

    def json(self) -> Any:
        """Parse the body as JSON."""
        return json.loads(self.body)


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that is free right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _deep_merge(base: dict[str, Any], extra: Mapping[str, Any]) -> dict[str, Any]:
    for key, value in extra.items():
        if isinstance(value, Mapping) and isinstance(base.get(key), dict):
            _deep_merge(base[key], value)
        else:
            base[key] = value
    return base


def htpasswd_lines(users: Mapping[str, str], *, cost: int = 4) -> str:
    """Return htpasswd file content with bcrypt hashes, made by `htpasswd -B`."""
    lines = []
    for user, password in users.items():
        if ":" in user:
            raise ValueError(f"a user name cannot hold ':': {user!r}")
        out = subprocess.run(
            ["htpasswd", "-nbB", "-C", str(cost), user, password],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
        lines.append(out.strip())
    return "\n".join(lines) + "\n"


_LIVE: dict[int, subprocess.Popen[bytes]] = {}


@atexit.register
def _kill_leftovers() -> None:
    for proc in list(_LIVE.values()):
        with contextlib.suppress(OSError):
            proc.kill()
            proc.wait(5)
    _LIVE.clear()


class LocalRegistry(StartStop):
    """A distribution registry subprocess on 127.0.0.1, with its storage in `directory`."""

    def __init__(
        self,
        directory: Path,
        *,
        auth: AuthMode = "none",
        users: Mapping[str, str] | None = None,
        token_server: TokenServer | None = None,
        service: str | None = None,
        tls: TlsFiles | None = None,
        port: int = 0,
        readonly: bool = False,
        allow_foreign_urls: bool = True,
        exact_counting: bool = True,
        extra_config: Mapping[str, Any] | None = None,
        proxy_remote: str | None = None,
        binary: str = "docker-registry",
        start_timeout: float = 10.0,
    ) -> None:
        """Prepare a registry; nothing runs until `start()`."""
        if auth == "htpasswd" and not users:
            raise ValueError("htpasswd auth needs users")
        if auth == "token" and token_server is None:
            raise ValueError("token auth needs a token_server")
        if auth not in ("none", "htpasswd", "token"):
            raise ValueError(f"unknown auth mode: {auth!r}")
        if proxy_remote is not None and not re.match(r"^https?://[^/\s]+/?$", proxy_remote):
            raise ValueError(
                f"proxy_remote must be a registry's base URL (http(s)://HOST[:PORT]): "
                f"{proxy_remote!r}"
            )
        self.directory = directory
        self.auth: AuthMode = auth
        self._users = dict(users or {})
        for user, password in self._users.items():
            scanned_secrets.register_login(user, password)
        self.token_server = token_server
        self._service = service
        self.tls = tls
        self.readonly = readonly
        self.allow_foreign_urls = allow_foreign_urls
        #: Log at debug level so `requests()` knows which requests are still in flight.
        self.exact_counting = exact_counting
        self.extra_config: dict[str, Any] = dict(extra_config or {})
        #: Pull-through cache mode: the upstream registry's base URL (distribution's
        #: `proxy: remoteurl:`); such a registry refuses pushes.
        self.proxy_remote = proxy_remote
        self.binary = binary
        self.start_timeout = start_timeout
        self._port = port
        self._fixed_port = port != 0
        self._secret = secrets.token_hex(16)
        self._proc: subprocess.Popen[bytes] | None = None
        self._files: list[IO[bytes]] = []
        self._since = 0
        #: Without exact counting: seconds the access log must stay unchanged after the
        #: marker request before `requests()` reads it.
        self.settle = 0.005
        directory.mkdir(parents=True, exist_ok=True)
        #: Where blobs and manifests are kept (survives `stop()`).
        self.storage = directory / "storage"
        self.config_path = directory / "config.yml"
        #: The access log: one Combined Log Format line per request.
        self.access_log = directory / "access.log"
        #: The registry's own log, JSON lines.
        self.log_path = directory / "registry.log"
        self.htpasswd_path = directory / "htpasswd"
        self._request_log = RequestLog(self.access_log, self.log_path)

    # -- addresses and credentials ---------------------------------------------------------

    @property
    def port(self) -> int:
        """The TCP port (known once started)."""
        if not self._port:
            raise RegistryError("the registry has not been started")
        return self._port

    @property
    def host(self) -> str:
        """`127.0.0.1:PORT`, the registry part of image references."""
        return f"127.0.0.1:{self.port}"

    @property
    def scheme(self) -> str:
        """`https` with TLS, else `http`."""
        return "https" if self.tls else "http"

    @property
    def url(self) -> str:
        """The base URL, `http(s)://127.0.0.1:PORT`."""
        return f"{self.scheme}://{self.host}"

    @property
    def service(self) -> str:
        """The token `service` (audience) of a token-auth registry."""
        return self._service or self.host

    @property
    def users(self) -> dict[str, str]:
        """The users who may log in (htpasswd users, or the token server's)."""
        if self.auth == "token" and self.token_server is not None:
            return dict(self.token_server.users)
        if self.auth == "htpasswd":
            return dict(self._users)
        return {}

    @property
    def creds(self) -> tuple[str, str] | None:
        """The first user's (username, password), or None when the registry has none."""
        return next(iter(self.users.items()), None)

    def rotate_password(self, user: str, password: str) -> None:
        """Give an htpasswd user a new password, as an operator rotating it would.

        The htpasswd file is rewritten in place; the distribution registry re-reads it
        when it changes (Debian's 2.8 does), so the running registry takes it at once.
        """
        if self.auth != "htpasswd":
            raise ValueError("only an htpasswd registry has passwords to rotate")
        self._users[user] = password
        self.htpasswd_path.write_text(htpasswd_lines(self._users))

    def ref(self, name: str) -> str:
        """Return a skopeo reference, `docker://127.0.0.1:PORT/name`."""
        return f"docker://{self.host}/{name}"

    # -- configuration ---------------------------------------------------------------------

    def config(self) -> dict[str, Any]:
        """Return the registry configuration (written to `config.yml` on start)."""
        storage: dict[str, Any] = {
            "filesystem": {"rootdirectory": str(self.storage)},
            "delete": {"enabled": True},
            "maintenance": {
                "uploadpurging": {"enabled": False},
                "readonly": {"enabled": self.readonly},
            },
        }
        http_: dict[str, Any] = {
            "addr": f"127.0.0.1:{self.port}",
            "secret": self._secret,
            "headers": {"X-Content-Type-Options": ["nosniff"]},
        }
        if self.tls:
            http_["tls"] = {"certificate": str(self.tls.cert), "key": str(self.tls.key)}
        config: dict[str, Any] = {
            "version": "0.1",
            "log": {
                "level": "debug" if self.exact_counting else "info",
                "formatter": "json",
                "accesslog": {"disabled": False},
            },
            "storage": storage,
            "http": http_,
            "health": {"storagedriver": {"enabled": False}},
        }
        if self.proxy_remote is not None:
            config["proxy"] = {"remoteurl": self.proxy_remote.rstrip("/")}
        if self.allow_foreign_urls:
            config["validation"] = {"manifests": {"urls": {"allow": ["^https?://"]}}}
        if self.auth == "htpasswd":
            config["auth"] = {
                "htpasswd": {"realm": "ocimirror-testkit", "path": str(self.htpasswd_path)}
            }
        elif self.auth == "token":
            assert self.token_server is not None
            config["auth"] = {
                "token": {
                    "realm": self.token_server.realm,
                    "service": self.service,
                    "issuer": self.token_server.issuer,
                    "rootcertbundle": str(self.token_server.cert_path),
                }
            }
        return _deep_merge(config, self.extra_config)

    # -- lifecycle -------------------------------------------------------------------------

    @property
    def running(self) -> bool:
        """Whether the registry process is alive."""
        return self._proc is not None and self._proc.poll() is None

    @property
    def pid(self) -> int | None:
        """The process id while running."""
        return self._proc.pid if self.running and self._proc else None

    def start(self) -> Self:
        """Start the registry and wait until it answers HTTP(S) requests."""
        if self.running:
            return self
        if self.auth == "htpasswd" and not self.htpasswd_path.exists():
            self.htpasswd_path.write_text(htpasswd_lines(self._users))
        if self.auth == "token" and self.token_server is not None and not self.token_server.running:
            raise RegistryError("start the token server before the registry")
        attempts = 1 if self._fixed_port else 5
        for attempt in range(attempts):
            if not self._fixed_port:
                self._port = free_port()
            try:
                self._launch()
            except RegistryError as exc:
                if self._fixed_port or "address already in use" not in str(exc):
                    raise
                if attempt == attempts - 1:
                    raise
            else:
                self._fixed_port = True  # a restart comes back on the same port
                return self
        raise AssertionError("unreachable")

    def _launch(self) -> None:
        self.config_path.write_text(yaml.safe_dump(self.config(), sort_keys=False))
        log_mark = file_size(self.log_path)
        self._request_log.launched(log_mark)
        access = self.access_log.open("ab")
        log = self.log_path.open("ab")
        self._files = [access, log]
        self._proc = subprocess.Popen(
            [self.binary, "serve", str(self.config_path)],
            stdin=subprocess.DEVNULL,
            stdout=access,
            stderr=log,
            cwd=self.directory,
            # REGISTRY_* variables would override the configuration file.
            env={k: v for k, v in os.environ.items() if not k.startswith("REGISTRY_")},
        )
        _LIVE[self._proc.pid] = self._proc
        deadline = time.monotonic() + self.start_timeout
        while True:
            if self._proc.poll() is not None:
                self._reap()
                raise RegistryError(
                    f"registry exited with status {self._proc.returncode} on start:\n"
                    + self._log_tail(log_mark)
                )
            # Any answer from a registry will do (a marker path keeps the probe out of
            # `requests()`); another server on the port does not answer like one.
            with contextlib.suppress(OSError, http.client.HTTPException):
                probe = self.http("GET", f"{SYNC_PREFIX}ready", timeout=0.25)
                if probe.headers.get("Docker-Distribution-Api-Version"):
                    return
            if time.monotonic() > deadline:
                self.stop()
                raise RegistryError(
                    f"registry did not answer within {self.start_timeout}s:\n"
                    + self._log_tail(log_mark)
                )
            time.sleep(0.005)

    def _log_tail(self, since: int) -> str:
        with contextlib.suppress(OSError), self.log_path.open("rb") as f:
            f.seek(since)
            return f.read()[-4000:].decode("utf-8", "replace")
        return ""

    def _reap(self) -> None:
        if self._proc is not None:
            _LIVE.pop(self._proc.pid, None)
        for f in self._files:
            f.close()
        self._files = []

    def stop(self) -> None:
        """Stop the registry (storage, port and logs are kept for a later `start()`)."""
        proc = self._proc
        if proc is None:
            return
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        self._reap()

    def kill(self) -> None:
        """Kill the registry at once (SIGKILL), as a crash would; `start()` brings it back
        on the same port with the same storage."""
        proc = self._proc
        if proc is None:
            return
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)
        self._reap()

    def restart(self) -> Self:
        """Stop and start again on the same port with the same storage."""
        self.stop()
        return self.start()

    def __repr__(self) -> str:
        """Show address, auth mode and directory."""
        where = self.url if self._port else "not started"
        return f"<LocalRegistry {where} auth={self.auth} dir={self.directory}>"

    # -- raw HTTP --------------------------------------------------------------------------

    def http(
        self,
        method: str,
        path: str,
        *,
        headers: Mapping[str, str] | None = None,
        body: bytes | None = None,
        timeout: float = 10.0,
    ) -> HttpResponse:
        """Send one request straight to the registry (no auth unless in `headers`)."""
        conn: http.client.HTTPConnection
        if self.tls:
            conn = http.client.HTTPSConnection(
                "127.0.0.1", self.port, timeout=timeout, context=self.tls.client_context()
            )
        else:
            conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        try:
            conn.request(method, path, body=body, headers=dict(headers or {}))
            response = conn.getresponse()
            return HttpResponse(response.status, response.headers, response.read())
        finally:
            conn.close()

    def auth_headers(self, repo: str) -> dict[str, str]:
        """Return headers that let the first user pull `repo` (Basic, or a fresh token)."""
        creds = self.creds
        if self.auth == "htpasswd" and creds is not None:
            raw = base64.b64encode(f"{creds[0]}:{creds[1]}".encode()).decode()
            return {"Authorization": f"Basic {raw}"}
        if self.auth == "token" and self.token_server is not None:
            access = [Access.parse(f"repository:{repo}:pull")]
            subject = creds[0] if creds else ""
            token = self.token_server.issue(self.service, access, subject=subject)
            return {"Authorization": f"Bearer {token}"}
        return {}

    def tags(self, repo: str) -> list[str]:
        """Return the sorted tags of `repo` (empty when it does not exist)."""
        resp = self.http("GET", f"/v2/{repo}/tags/list", headers=self.auth_headers(repo))
        if resp.status == 404:
            return []
        if resp.status != 200:
            raise RegistryError(f"{self}: tags of {repo}: HTTP {resp.status}")
        return sorted(resp.json().get("tags") or [])

    # -- request counting ------------------------------------------------------------------

    def _sync(self) -> None:
        """Wait until the access log holds every request a client has seen answered
        (`RequestLog.sync`)."""
        if self.running:
            self._request_log.sync(
                exact=self.exact_counting,
                settle=self.settle,
                probe=lambda path: self.http("GET", path, timeout=5.0),
            )

    def mark(self) -> int:
        """Return a position in the access log; `requests(since=mark)` counts from there."""
        self._sync()
        return file_size(self.access_log)

    def clear_log(self) -> None:
        """Make `requests()` report only requests answered from now on."""
        self._since = self.mark()

    def requests(self, since: int | None = None) -> list[Request]:
        """Return the requests answered since `since` (a `mark()`), else since `clear_log()`."""
        self._sync()
        return self._request_log.read(self._since if since is None else since)

    def count(
        self,
        method: str | None = None,
        kind: str | None = None,
        *,
        path: str | None = None,
        status: int | None = None,
        since: int | None = None,
    ) -> int:
        """Count requests by method, kind (`manifest`, `blob`...), path regex and status."""
        pattern = re.compile(path) if path is not None else None
        return sum(
            1
            for r in self.requests(since)
            if (method is None or r.method == method.upper())
            and (kind is None or r.kind == kind)
            and (pattern is None or pattern.search(r.path))
            and (status is None or r.status == status)
        )


__all__ = [
    "AuthMode",
    "HttpResponse",
    "LocalRegistry",
    "RegistryError",
    "free_port",
    "htpasswd_lines",
]
