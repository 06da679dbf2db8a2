"""Real registries on loopback for tests, the demo and benchmarks, and skopeo to judge them.

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
it into `Request(method, path, status, ...)`, and `count()` filters by method, kind
(`manifest`, `blob`, `upload`, `tags`...), path and status. `mark()` and
`requests(since=mark)`, or `clear_log()`, count from a point on; a restart keeps the log.

The registry writes a line *after* its response, so a client may already hold a large
blob whose line is not written yet (a naive read misses about half of them). With
`exact_counting` (the default) the registry logs at debug level into `registry.log`,
including "authorizing request" as each request starts, before any response;
`requests()` waits until every started request has its access log line, so every request
a client has seen answered is counted, exactly. Debug logging costs the registry about
30% per request: benchmarks pass `exact_counting=False`, which waits instead for a marker
request's line and 5 ms of quiet (right but for rare races under heavy load).

`Skopeo` runs skopeo with a private auth file, policy and registries.conf, so the host's
Docker or containers configuration is never read; `flags()` gives the TLS and credential
flags a `LocalRegistry` needs (plain HTTP on 127.0.0.1 needs `--tls-verify=false`).
"""

from __future__ import annotations

import atexit
import base64
import contextlib
import http.client
import itertools
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Literal, Self

import yaml

from . import secrets as scanned_secrets
from .lifecycle import StartStop
from .tls import TlsFiles
from .tokenserver import Access, TokenServer

#: How a registry authenticates clients.
AuthMode = Literal["none", "htpasswd", "token"]

#: Which side of a skopeo command a registry is on: "" (inspect, delete...), "src", "dest".
Role = Literal["", "src", "dest"]

#: The path prefix of the marker requests `requests()` sends; they are never reported.
SYNC_PREFIX = "/ocimirror-testkit-sync/"

_ACCESS_LINE = re.compile(
    r'^(?P<remote>\S+) \S+ \S+ \[(?P<time>[^\]]*)\] "(?P<method>[A-Z]+) (?P<uri>\S+) [^"]*" '
    r'(?P<status>\d{3}) (?P<size>\d+|-)(?: "(?P<referer>(?:[^"\\]|\\.)*)" "(?P<agent>(?:[^"\\]|\\.)*)")?'
)

_ROUTES: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("base", re.compile(r"^/v2/?$")),
    ("catalog", re.compile(r"^/v2/_catalog$")),
    ("upload", re.compile(r"^/v2/(?P<name>.+?)/blobs/uploads/(?P<ref>[^/]*)$")),
    ("blob", re.compile(r"^/v2/(?P<name>.+?)/blobs/(?P<ref>[^/]+)$")),
    ("manifest", re.compile(r"^/v2/(?P<name>.+?)/manifests/(?P<ref>[^/]+)$")),
    ("tags", re.compile(r"^/v2/(?P<name>.+?)/tags/list$")),
    ("referrers", re.compile(r"^/v2/(?P<name>.+?)/referrers/(?P<ref>[^/]+)$")),
)


class RegistryError(RuntimeError):
    """A local registry could not be started or used."""


class SkopeoError(subprocess.CalledProcessError):
    """skopeo failed; the message includes its stderr."""

    def __str__(self) -> str:
        """Show the command, exit status and stderr."""
        return f"{super().__str__()}\nstderr:\n{self.stderr}"


@dataclass(frozen=True)
class Request:
    """One request a registry answered, from its access log."""

    method: str
    path: str
    status: int
    query: str = ""
    size: int = 0
    user_agent: str = ""

    def _route(self) -> tuple[str, re.Match[str] | None]:
        for kind, pattern in _ROUTES:
            match = pattern.match(self.path)
            if match:
                return kind, match
        return "other", None

    @property
    def kind(self) -> str:
        """What was asked for: base, catalog, manifest, blob, upload, tags, referrers, other."""
        return self._route()[0]

    @property
    def repository(self) -> str | None:
        """The repository name in the path, if any."""
        match = self._route()[1]
        return match.groupdict().get("name") if match else None

    @property
    def reference(self) -> str | None:
        """The tag or digest (manifests), digest (blobs) or session id (uploads)."""
        match = self._route()[1]
        return match.groupdict().get("ref") if match else None

    def __str__(self) -> str:
        """Show it as `METHOD /path?query STATUS`."""
        query = f"?{self.query}" if self.query else ""
        return f"{self.method} {self.path}{query} {self.status}"


def parse_access_log(text: str) -> list[Request]:
    """Parse Combined Log Format lines into requests; other lines and markers are skipped."""
    found: list[Request] = []
    for line in text.splitlines():
        match = _ACCESS_LINE.match(line)
        if not match:
            continue
        path, _, query = match["uri"].partition("?")
        if path.startswith(SYNC_PREFIX):
            continue
        size = match["size"]
        found.append(
            Request(
                method=match["method"],
                path=path,
                status=int(match["status"]),
                query=query,
                size=0 if size == "-" else int(size),
                user_agent=match["agent"] or "",
            )
        )
    return found


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
        self._sync_ids = itertools.count()
        #: Without exact counting: seconds the access log must stay unchanged after the
        #: marker request before `requests()` reads it.
        self.settle = 0.005
        # Exact counting: requests (method, uri) started minus completed since the launch,
        # and how far each log has been read.
        self._in_flight: Counter[tuple[str, str]] = Counter()
        self._access_read = 0
        self._log_read = 0
        directory.mkdir(parents=True, exist_ok=True)
        #: Where blobs and manifests are kept (survives `stop()`).
        self.storage = directory / "storage"
        self.config_path = directory / "config.yml"
        #: The access log: one Combined Log Format line per request.
        self.access_log = directory / "access.log"
        #: The registry's own log, JSON lines.
        self.log_path = directory / "registry.log"
        self.htpasswd_path = directory / "htpasswd"

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
        log_mark = self._size(self.log_path)
        self._in_flight.clear()
        self._access_read, self._log_read = self._size(self.access_log), log_mark
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
        """Wait until the access log holds every request a client has seen answered.

        The registry writes a request's access log line just after the response, so a
        client can see a response (a large blob download above all) a moment before its
        line exists. With `exact_counting` the registry logs "authorizing request" (debug)
        as each request starts, before any response: every request a client has seen
        answered has started, and this waits until every started request has its access
        log line (at most 5 s, for other clients still busy). Without it, a marker request
        is sent and its line awaited, then the log must stay unchanged for `settle` s.
        """
        if not self.running:
            return
        if self.exact_counting:
            deadline = time.monotonic() + 5.0
            while self._catch_up():
                if time.monotonic() > deadline:  # never wait twice for the same ones
                    self._in_flight = Counter({k: n for k, n in self._in_flight.items() if n < 0})
                    return
                time.sleep(0.001)
            return
        marker = f"{SYNC_PREFIX}{os.getpid()}-{next(self._sync_ids)}".encode()
        try:
            self.http("GET", marker.decode(), timeout=5.0)
        except (OSError, http.client.HTTPException):
            return
        deadline = time.monotonic() + 5.0
        while not self._log_holds(marker + b" "):
            if time.monotonic() > deadline:
                return
            time.sleep(0.001)
        size, deadline = self._size(self.access_log), time.monotonic() + 0.5
        while time.monotonic() < deadline:
            time.sleep(self.settle)
            grown = self._size(self.access_log)
            if grown == size:
                return
            size = grown

    @staticmethod
    def _read_lines(path: Path, offset: int) -> tuple[list[bytes], int]:
        """Return the complete lines of `path` from `offset`, and the offset after them."""
        try:
            with path.open("rb") as f:
                f.seek(offset)
                data = f.read()
        except FileNotFoundError:
            return [], offset
        end = data.rfind(b"\n") + 1
        return data[:end].splitlines(), offset + end

    def _catch_up(self) -> bool:
        """Read both logs further; return whether some started request has no line yet."""
        lines, self._access_read = self._read_lines(self.access_log, self._access_read)
        for line in lines:
            match = _ACCESS_LINE.match(line.decode("utf-8", "replace"))
            if match:
                self._in_flight[(match["method"], match["uri"])] -= 1
        lines, self._log_read = self._read_lines(self.log_path, self._log_read)
        for line in lines:
            if b'"authorizing request"' not in line:
                continue
            with contextlib.suppress(ValueError):
                entry = json.loads(line)
                method, uri = entry.get("http.request.method"), entry.get("http.request.uri")
                if isinstance(method, str) and isinstance(uri, str):
                    self._in_flight[(method, uri)] += 1
        return any(n > 0 for n in self._in_flight.values())

    def _log_holds(self, needle: bytes) -> bool:
        with self.access_log.open("rb") as f:
            f.seek(max(0, self._size(self.access_log) - 64 * 1024))
            return needle in f.read()

    @staticmethod
    def _size(path: Path) -> int:
        try:
            return path.stat().st_size
        except FileNotFoundError:
            return 0

    def mark(self) -> int:
        """Return a position in the access log; `requests(since=mark)` counts from there."""
        self._sync()
        return self._size(self.access_log)

    def clear_log(self) -> None:
        """Make `requests()` report only requests answered from now on."""
        self._since = self.mark()

    def requests(self, since: int | None = None) -> list[Request]:
        """Return the requests answered since `since` (a `mark()`), else since `clear_log()`."""
        self._sync()
        start = self._since if since is None else since
        try:
            with self.access_log.open("rb") as f:
                f.seek(start)
                data = f.read()
        except FileNotFoundError:
            return []
        complete = data[: data.rfind(b"\n") + 1]
        return parse_access_log(complete.decode("utf-8", "replace"))

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


class Skopeo:
    """skopeo isolated from the host: a private auth file, policy and registries.conf."""

    def __init__(self, workdir: Path, *, binary: str = "skopeo", timeout: float = 120.0) -> None:
        """Prepare `workdir` for skopeo's configuration and temporary files."""
        self.workdir = workdir
        self.binary = binary
        self.timeout = timeout
        workdir.mkdir(parents=True, exist_ok=True)
        for sub in ("home", "tmp", "run", "docker"):
            (workdir / sub).mkdir(exist_ok=True)
        #: The only auth file skopeo reads and writes (`skopeo login` stores here).
        self.authfile = workdir / "auth.json"
        if not self.authfile.exists():
            self.authfile.write_text('{"auths": {}}\n')
        self.policy = workdir / "policy.json"
        self.policy.write_text('{"default": [{"type": "insecureAcceptAnything"}]}\n')
        self.registries_conf = workdir / "registries.conf"
        self.registries_conf.write_text("")

    def env(self) -> dict[str, str]:
        """Return the environment skopeo runs with."""
        env = {k: v for k, v in os.environ.items() if not k.startswith(("REGISTRY_", "DOCKER_"))}
        env.update(
            HOME=str(self.workdir / "home"),
            TMPDIR=str(self.workdir / "tmp"),
            XDG_RUNTIME_DIR=str(self.workdir / "run"),
            XDG_CONFIG_HOME=str(self.workdir / "home" / ".config"),
            DOCKER_CONFIG=str(self.workdir / "docker"),
            REGISTRY_AUTH_FILE=str(self.authfile),
            CONTAINERS_REGISTRIES_CONF=str(self.registries_conf),
        )
        return env

    def command(self, *args: str) -> list[str]:
        """Return the full command line for skopeo `args`."""
        return [
            self.binary,
            "--policy",
            str(self.policy),
            "--tmpdir",
            str(self.workdir / "tmp"),
            *args,
        ]

    def run(
        self, *args: str, check: bool = True, timeout: float | None = None
    ) -> subprocess.CompletedProcess[str]:
        """Run skopeo with `args` (output captured as text); raise `SkopeoError` if `check`."""
        cmd = self.command(*args)
        result = subprocess.run(
            cmd,
            capture_output=True,
            text=True,
            env=self.env(),
            timeout=timeout or self.timeout,
            check=False,
        )
        if check and result.returncode != 0:
            raise SkopeoError(result.returncode, cmd, result.stdout, result.stderr)
        return result

    @staticmethod
    def flags(registry: LocalRegistry, role: Role = "", *, creds: bool = True) -> list[str]:
        """Return the TLS and credential flags for `registry` (`--src-`/`--dest-` by role)."""
        prefix = f"--{role}-" if role else "--"
        flags = (
            [f"{prefix}cert-dir={registry.tls.cert_dir}"]
            if registry.tls
            else [f"{prefix}tls-verify=false"]
        )
        if creds and registry.creds is not None:
            user, password = registry.creds
            flags.append(f"{prefix}creds={user}:{password}")
        return flags

    def copy(
        self,
        src: str,
        dst: str,
        *,
        src_registry: LocalRegistry | None = None,
        dst_registry: LocalRegistry | None = None,
        creds: bool = True,
        args: Sequence[str] = (),
        check: bool = True,
    ) -> subprocess.CompletedProcess[str]:
        """`skopeo copy src dst` with the flags the registries need."""
        flags: list[str] = []
        if src_registry is not None:
            flags += self.flags(src_registry, "src", creds=creds)
        if dst_registry is not None:
            flags += self.flags(dst_registry, "dest", creds=creds)
        return self.run("copy", *flags, *args, src, dst, check=check)

    def inspect(
        self,
        ref: str,
        *,
        registry: LocalRegistry | None = None,
        creds: bool = True,
        args: Sequence[str] = (),
        check: bool = True,
    ) -> subprocess.CompletedProcess[str]:
        """`skopeo inspect ref` with the flags the registry needs."""
        flags = self.flags(registry, creds=creds) if registry is not None else []
        return self.run("inspect", *flags, *args, ref, check=check)

    def inspect_json(
        self, ref: str, *, registry: LocalRegistry | None = None, args: Sequence[str] = ()
    ) -> Any:
        """Return what `skopeo inspect` prints, parsed (`args=["--raw"]` for the manifest)."""
        return json.loads(self.inspect(ref, registry=registry, args=args).stdout)

    def manifest(
        self, ref: str, *, registry: LocalRegistry | None = None, creds: bool = True
    ) -> bytes:
        """Return the manifest bytes exactly as the registry serves them (`inspect --raw`)."""
        flags = self.flags(registry, creds=creds) if registry is not None else []
        cmd = self.command("inspect", "--raw", *flags, ref)
        result = subprocess.run(
            cmd, capture_output=True, env=self.env(), timeout=self.timeout, check=False
        )
        if result.returncode != 0:
            raise SkopeoError(result.returncode, cmd, result.stdout, result.stderr.decode())
        return result.stdout


_default_skopeo: Skopeo | None = None


def run_skopeo(
    *args: str, check: bool = True, timeout: float | None = None
) -> subprocess.CompletedProcess[str]:
    """Run skopeo isolated from the host's configuration (a private dir removed at exit)."""
    global _default_skopeo
    if _default_skopeo is None:
        workdir = Path(tempfile.mkdtemp(prefix="ocimirror-skopeo-"))
        atexit.register(shutil.rmtree, workdir, True)
        _default_skopeo = Skopeo(workdir)
    return _default_skopeo.run(*args, check=check, timeout=timeout)


__all__ = [
    "SYNC_PREFIX",
    "AuthMode",
    "HttpResponse",
    "LocalRegistry",
    "RegistryError",
    "Request",
    "Role",
    "Skopeo",
    "SkopeoError",
    "free_port",
    "htpasswd_lines",
    "parse_access_log",
    "run_skopeo",
]
