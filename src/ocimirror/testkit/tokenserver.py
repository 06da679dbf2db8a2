"""A token server for registries with `auth: token:`, after the Docker registry token spec.

`TokenServer` answers the two forms of the spec on one endpoint, `/token`:

* `GET /token?service=S&scope=repository:NAME:pull,push&scope=...` with optional Basic
  credentials (https://distribution.github.io/distribution/spec/auth/token/); the answer
  is `{"token", "access_token", "expires_in", "issued_at"}`, plus `refresh_token` when
  `offline_token=true` was asked with credentials.
* `POST /token` with a form (https://distribution.github.io/distribution/spec/auth/oauth/):
  `grant_type=password` (`username`, `password`) or `grant_type=refresh_token`
  (`refresh_token`), with `client_id`, `service`, space-separated `scope` and optional
  `access_type=offline`; the answer is `{"access_token", "scope", "expires_in",
  "issued_at"}`, plus `refresh_token` when offline access was asked with a password.

Tokens are JWTs signed by hand (ES256 by default, or RS256) with a self-signed certificate
that the registry is given as `rootcertbundle`. The JOSE header carries that certificate
as `x5c` and its libtrust key id as `kid`; distribution 2.8 checks `x5c` first (the chain
must verify against the bundle; a self-signed certificate that is itself in the bundle
does) and falls back to looking `kid` up among the bundle's keys. Claims: `iss`, `sub`,
`aud` (the requested `service`, a string as distribution 2.8 wants), `exp`, `nbf`, `iat`,
`jti` and `access`.

Who gets what: anonymous requests get `pull` on repositories when `anonymous_pull` is true
and nothing otherwise (like Docker Hub, a token with no access, not a refusal); users with
the right password get every action they ask for; wrong credentials get a 401. A custom
`policy` can decide instead. Every request is recorded in `requests` so tests can count
how many tokens a client fetched.

The server runs in a background thread with its own event loop, so it serves requests
whatever the caller's loop is doing (even when the caller blocks), and works the same from
sync and async tests, scripts and benchmarks.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import datetime as dt
import hashlib
import json
import secrets
import socket
import ssl
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Self

from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.types import PublicKeyTypes
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

from . import secrets as scanned_secrets
from .lifecycle import StartStop
from .tls import TlsFiles, cert_pem, self_signed

#: Signature algorithms the server can sign with.
Algorithm = Literal["ES256", "RS256"]

#: Decides the actions granted: (username or None when anonymous, requested access) -> actions.
Policy = Callable[[str | None, "Access"], Sequence[str]]


class TokenServerError(RuntimeError):
    """The token server could not start."""


@dataclass(frozen=True)
class Access:
    """One entry of a token's `access` claim, or one requested scope."""

    type: str
    name: str
    actions: tuple[str, ...]

    @classmethod
    def parse(cls, scope: str) -> Access:
        """Parse a scope such as `repository:team/app:pull,push`."""
        kind, sep, rest = scope.partition(":")
        name, sep2, actions = rest.rpartition(":")
        if not sep or not sep2 or not kind or not name:
            raise ValueError(f"malformed scope: {scope!r}")
        return cls(kind, name, tuple(a for a in actions.split(",") if a))

    @property
    def scope(self) -> str:
        """Return the scope string, `type:name:a,b`."""
        return f"{self.type}:{self.name}:{','.join(self.actions)}"

    def claim(self) -> dict[str, Any]:
        """Return the JSON form used in the `access` claim."""
        return {"type": self.type, "name": self.name, "actions": list(self.actions)}


@dataclass(frozen=True)
class TokenRequest:
    """One request the token server answered."""

    method: str
    grant_type: str | None
    username: str | None
    service: str | None
    scopes: tuple[str, ...]
    status: int
    granted: tuple[Access, ...] = ()
    client_id: str | None = None

    @property
    def ok(self) -> bool:
        """Whether a token was issued."""
        return self.status == 200


def b64url(data: bytes) -> str:
    """Encode bytes as unpadded base64url, as JOSE does."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64url_decode(text: str) -> bytes:
    """Decode unpadded base64url."""
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def libtrust_key_id(public_key: PublicKeyTypes) -> str:
    """Return the libtrust key id (`ABCD:EFGH:...`) distribution uses as a JWT `kid`."""
    der = public_key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    encoded = base64.b32encode(hashlib.sha256(der).digest()[:30]).decode("ascii").rstrip("=")
    return ":".join(encoded[i : i + 4] for i in range(0, len(encoded), 4))


def decode_token(token: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """Return the (header, claims) of a JWT, without verifying it."""
    parts = token.split(".")
    if len(parts) != 3:
        raise ValueError("a JWT has three parts")
    header: dict[str, Any] = json.loads(b64url_decode(parts[0]))
    claims: dict[str, Any] = json.loads(b64url_decode(parts[1]))
    return header, claims


def _rfc3339(timestamp: float) -> str:
    return dt.datetime.fromtimestamp(timestamp, dt.UTC).isoformat().replace("+00:00", "Z")


def _split_scopes(values: Sequence[str]) -> list[str]:
    return [s for value in values for s in value.split(" ") if s]


class TokenServer(StartStop):
    """A Docker registry token server on 127.0.0.1, served from a background thread."""

    def __init__(
        self,
        directory: Path,
        *,
        users: Mapping[str, str] | None = None,
        anonymous_pull: bool = True,
        lifetime: int = 300,
        issuer: str = "ocimirror-testkit",
        algorithm: Algorithm = "ES256",
        embed_x5c: bool = True,
        allow_post: bool = True,
        policy: Policy | None = None,
        tls: TlsFiles | None = None,
        port: int = 0,
    ) -> None:
        """Make the signing key and certificate in `directory`; `start()` serves."""
        self.directory = directory
        self.users: dict[str, str] = dict(users or {})
        for user, password in self.users.items():
            scanned_secrets.register_login(user, password)
        self.anonymous_pull = anonymous_pull
        #: Seconds a token lives, as reported in `expires_in`.
        self.lifetime = lifetime
        #: Seconds from issue to the `exp` claim; None means `lifetime`. A value below
        #: -60 makes tokens the registry already rejects (it allows 60 s of clock skew).
        self.claim_lifetime: int | None = None
        self.issuer = issuer
        self.algorithm: Algorithm = algorithm
        #: Send the certificate as `x5c` (else only the libtrust `kid`).
        self.embed_x5c = embed_x5c
        #: Serve the OAuth2 POST form (else POST gets 404 and clients must fall back to GET).
        self.allow_post = allow_post
        self.policy = policy
        self.tls = tls
        #: Every request answered, in order (appended from the server thread).
        self.requests: list[TokenRequest] = []
        self._refresh_tokens: dict[str, str] = {}
        self._port = port
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping: asyncio.Event | None = None
        self._lock = threading.Lock()

        directory.mkdir(parents=True, exist_ok=True)
        self._key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey
        if algorithm == "ES256":
            self._key = ec.generate_private_key(ec.SECP256R1())
        elif algorithm == "RS256":
            self._key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        else:
            raise ValueError(f"unsupported algorithm: {algorithm!r}")
        self.certificate: x509.Certificate = self_signed(self._key, f"{issuer} token signer")
        #: The signing certificate, to give the registry as `rootcertbundle`.
        self.cert_path = directory / "token-signer.crt"
        self.cert_path.write_bytes(cert_pem(self.certificate))
        #: The libtrust id of the signing key (the JWT `kid`).
        self.key_id = libtrust_key_id(self._key.public_key())

    # -- addresses ---------------------------------------------------------------------

    @property
    def port(self) -> int:
        """The TCP port (known once started)."""
        if not self._port:
            raise TokenServerError("the token server has not been started")
        return self._port

    @property
    def url(self) -> str:
        """The base URL, `http(s)://127.0.0.1:PORT`."""
        scheme = "https" if self.tls else "http"
        return f"{scheme}://127.0.0.1:{self.port}"

    @property
    def realm(self) -> str:
        """The token endpoint, for a registry's `realm`."""
        return f"{self.url}/token"

    @property
    def running(self) -> bool:
        """Whether the server thread is serving."""
        return self._thread is not None and self._thread.is_alive()

    # -- counting ----------------------------------------------------------------------

    def tokens_issued(self, *, username: str | Literal[False] | None = False) -> int:
        """Count the tokens issued (to `username`, None for anonymous, when given)."""
        return sum(
            1 for r in list(self.requests) if r.ok and (username is False or r.username == username)
        )

    def clear(self) -> None:
        """Forget the recorded requests."""
        with self._lock:
            self.requests.clear()

    # -- tokens ------------------------------------------------------------------------

    def issue(
        self,
        service: str,
        access: Sequence[Access] = (),
        *,
        subject: str = "",
        lifetime: int | None = None,
        now: float | None = None,
    ) -> str:
        """Return a signed token (what the endpoint would issue, without recording it)."""
        issued = time.time() if now is None else now
        if lifetime is None:
            lifetime = self.lifetime if self.claim_lifetime is None else self.claim_lifetime
        header: dict[str, Any] = {"typ": "JWT", "alg": self.algorithm, "kid": self.key_id}
        if self.embed_x5c:
            der = self.certificate.public_bytes(serialization.Encoding.DER)
            header["x5c"] = [base64.b64encode(der).decode("ascii")]
        claims = {
            "iss": self.issuer,
            "sub": subject,
            "aud": service,
            "exp": int(issued) + lifetime,
            "nbf": int(issued),
            "iat": int(issued),
            "jti": secrets.token_hex(16),
            "access": [a.claim() for a in access],
        }
        signing_input = ".".join(
            b64url(json.dumps(part, separators=(",", ":")).encode()) for part in (header, claims)
        )
        return f"{signing_input}.{b64url(self._sign(signing_input.encode('ascii')))}"

    def _sign(self, data: bytes) -> bytes:
        if isinstance(self._key, rsa.RSAPrivateKey):
            return self._key.sign(data, padding.PKCS1v15(), hashes.SHA256())
        r, s = decode_dss_signature(self._key.sign(data, ec.ECDSA(hashes.SHA256())))
        return r.to_bytes(32, "big") + s.to_bytes(32, "big")

    def grant(self, username: str | None, scopes: Sequence[str]) -> tuple[Access, ...]:
        """Return the access `username` (None: anonymous) gets for the requested scopes."""
        granted: list[Access] = []
        for scope in scopes:
            try:
                wanted = Access.parse(scope)
            except ValueError:
                continue
            if self.policy is not None:
                actions = tuple(self.policy(username, wanted))
            elif username is not None:
                actions = wanted.actions
            elif self.anonymous_pull and wanted.type == "repository":
                actions = tuple(a for a in wanted.actions if a == "pull")
            else:
                actions = ()
            if actions:
                granted.append(Access(wanted.type, wanted.name, actions))
        return tuple(granted)

    # -- HTTP ----------------------------------------------------------------------------

    def _record(self, request: TokenRequest) -> None:
        with self._lock:
            self.requests.append(request)

    def _check_password(self, username: str, password: str) -> bool:
        expected = self.users.get(username)
        return expected is not None and secrets.compare_digest(expected.encode(), password.encode())

    @staticmethod
    def _basic(request: web.Request) -> tuple[str, str] | Literal[False] | None:
        """Return Basic credentials, None when absent, False when malformed."""
        header = request.headers.get("Authorization")
        if header is None:
            return None
        scheme, _, value = header.partition(" ")
        if scheme.lower() != "basic":
            return False
        try:
            user, sep, password = (
                base64.b64decode(value.strip(), validate=True).decode().partition(":")
            )
        except (binascii.Error, UnicodeDecodeError):
            return False
        return (user, password) if sep else False

    def _unauthorized(self, detail: str) -> web.Response:
        body = {"errors": [{"code": "UNAUTHORIZED", "message": detail}], "details": detail}
        return web.json_response(
            body,
            status=401,
            headers={"WWW-Authenticate": f'Basic realm="{self.realm}"'},
        )

    def _respond(
        self,
        *,
        method: str,
        grant_type: str | None,
        username: str | None,
        service: str | None,
        scopes: list[str],
        client_id: str | None,
        status: int,
        body: Mapping[str, Any],
        granted: tuple[Access, ...] = (),
        response: web.Response | None = None,
    ) -> web.Response:
        self._record(
            TokenRequest(
                method=method,
                grant_type=grant_type,
                username=username,
                service=service,
                scopes=tuple(scopes),
                status=status,
                granted=granted,
                client_id=client_id,
            )
        )
        if response is not None:
            return response
        return web.json_response(dict(body), status=status)

    async def _get(self, request: web.Request) -> web.Response:
        query = request.query
        service = query.get("service")
        scopes = _split_scopes(query.getall("scope", []))
        client_id = query.get("client_id")
        record: dict[str, Any] = {
            "method": "GET",
            "grant_type": None,
            "service": service,
            "scopes": scopes,
            "client_id": client_id,
        }
        creds = self._basic(request)
        if creds is False or (creds is not None and not self._check_password(*creds)):
            user = creds[0] if creds else None
            return self._respond(
                **record,
                username=user,
                status=401,
                body={},
                response=self._unauthorized("incorrect username or password"),
            )
        username = creds[0] if creds else None
        granted = self.grant(username, scopes)
        now = time.time()
        token = self.issue(service or "", granted, subject=username or "", now=now)
        body: dict[str, Any] = {
            "token": token,
            "access_token": token,
            "expires_in": self.lifetime,
            "issued_at": _rfc3339(now),
        }
        if username is not None and query.get("offline_token", "").lower() == "true":
            body["refresh_token"] = self._new_refresh_token(username)
        return self._respond(**record, username=username, status=200, body=body, granted=granted)

    def _new_refresh_token(self, username: str) -> str:
        token = secrets.token_urlsafe(24)
        with self._lock:
            self._refresh_tokens[token] = username
        return token

    async def _post(self, request: web.Request) -> web.Response:
        if not self.allow_post:
            raise web.HTTPNotFound()
        form = await request.post()

        def field_(name: str) -> str | None:
            value = form.get(name)
            return value if isinstance(value, str) else None

        grant_type = field_("grant_type")
        service = field_("service")
        client_id = field_("client_id")
        scopes = _split_scopes([field_("scope") or ""])
        record: dict[str, Any] = {
            "method": "POST",
            "grant_type": grant_type,
            "service": service,
            "scopes": scopes,
            "client_id": client_id,
        }

        def oauth_error(
            status: int, error: str, description: str, user: str | None
        ) -> web.Response:
            return self._respond(
                **record,
                username=user,
                status=status,
                body={"error": error, "error_description": description},
            )

        if not client_id:
            return oauth_error(400, "invalid_request", "client_id is required", None)
        username: str | None
        if grant_type == "password":
            username = field_("username") or ""
            if not self._check_password(username, field_("password") or ""):
                return oauth_error(401, "invalid_grant", "incorrect username or password", username)
        elif grant_type == "refresh_token":
            with self._lock:
                username = self._refresh_tokens.get(field_("refresh_token") or "")
            if username is None:
                return oauth_error(401, "invalid_grant", "unknown refresh token", None)
        else:
            return oauth_error(400, "unsupported_grant_type", f"grant_type {grant_type!r}", None)

        granted = self.grant(username, scopes)
        now = time.time()
        token = self.issue(service or "", granted, subject=username, now=now)
        body: dict[str, Any] = {
            "access_token": token,
            "scope": " ".join(a.scope for a in granted),
            "expires_in": self.lifetime,
            "issued_at": _rfc3339(now),
        }
        if grant_type == "password" and field_("access_type") == "offline":
            body["refresh_token"] = self._new_refresh_token(username)
        return self._respond(**record, username=username, status=200, body=body, granted=granted)

    def _app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/token", self._get)
        app.router.add_post("/token", self._post)
        return app

    # -- lifecycle -----------------------------------------------------------------------

    def start(self) -> Self:
        """Start serving on 127.0.0.1 (on the same port again after a `stop()`)."""
        if self.running:
            return self
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(("127.0.0.1", self._port))
            sock.listen(128)
        except OSError:
            sock.close()
            raise
        self._port = sock.getsockname()[1]
        ready = threading.Event()
        failure: list[BaseException] = []
        thread = threading.Thread(
            target=self._serve,
            args=(sock, ready, failure),
            name=f"token-server-{self._port}",
            daemon=True,
        )
        thread.start()
        if not ready.wait(10) or failure:
            raise TokenServerError(f"token server did not start: {failure[:1]}")
        self._thread = thread
        return self

    def _serve(
        self, sock: socket.socket, ready: threading.Event, failure: list[BaseException]
    ) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        try:
            loop.run_until_complete(self._main(sock, ready))
        except BaseException as exc:  # reported to start()
            failure.append(exc)
            ready.set()
        finally:
            loop.close()

    async def _main(self, sock: socket.socket, ready: threading.Event) -> None:
        self._stopping = asyncio.Event()
        runner = web.AppRunner(self._app(), access_log=None, shutdown_timeout=0.5)
        await runner.setup()
        try:
            context: ssl.SSLContext | None = self.tls.server_context() if self.tls else None
            site = web.SockSite(runner, sock, ssl_context=context)
            await site.start()
            ready.set()
            await self._stopping.wait()
        finally:
            await runner.cleanup()
            sock.close()

    def stop(self) -> None:
        """Stop serving (recorded requests are kept); a no-op when not running."""
        thread, loop, stopping = self._thread, self._loop, self._stopping
        self._thread = None
        if thread is None or loop is None or stopping is None:
            return
        with contextlib.suppress(RuntimeError):  # the loop may have closed in between
            loop.call_soon_threadsafe(stopping.set)
        thread.join(10)

    def __repr__(self) -> str:
        """Show the realm."""
        where = self.realm if self._port else "not started"
        return f"<TokenServer {where} users={sorted(self.users)}>"


__all__ = [
    "Access",
    "Algorithm",
    "Policy",
    "TokenRequest",
    "TokenServer",
    "TokenServerError",
    "b64url",
    "b64url_decode",
    "decode_token",
    "libtrust_key_id",
]
