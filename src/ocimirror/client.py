"""RegistryClient: the OCI distribution API of one registry host, over aiohttp.

It sends every request with the Authorization header its `Authenticator` gives
(auth/tokens.py: basic auth, bearer tokens per scope, credentials fixed or from a
keychain); on a 401 it learns the challenge and tries once more, and when credentials
that came from a keychain are refused it asks the keychain for fresh ones and tries once
more again. It owns retries of idempotent requests (stamina, honouring `Retry-After`),
redirects of GETs and HEADs (followed here, not by aiohttp: `Authorization` goes only to
the registry's own scheme, host and port, and never from HTTPS down to HTTP), uploads
(monolithic, chunked, cross-repository mount: `uploads.Uploads`, a mixin over `_send`),
request accounting and the per-host
limits: a request pace (`requests_per_second`) and a reserve of Docker Hub's manifest
pulls (`rate_limit_reserve`). `request()` and `error_from()` are the public way to send
any other request (the proxy forwards through them). It knows nothing of copying.

Why it is long: it is one class over one connection pool, and every request method
shares the session, the retry wrapper, the pace, the accounting and the authenticator.
What could leave has left: the authentication (auth/), uploads (uploads.py), the
listing documents (listings.py) and how a host is reached (hosts.py: `HostOptions`,
endpoints, origins; still importable from here).
"""

from __future__ import annotations

import asyncio
import json
import ssl
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode, urljoin

import aiohttp
import stamina
import structlog

from . import digest as digests
from . import mediatypes as mt
from .auth.credentials import Credentials, Keychain
from .auth.tokens import Authenticator, TokenRefused
from .errors import (
    AuthError,
    DeleteRefused,
    DigestMismatch,
    ManifestError,
    NotFound,
    RateLimited,
    RegistryError,
    Unreachable,
    is_retryable,
    registry_public,
)
from .hosts import (
    ENDPOINTS_ENV,
    HostOptions,
    base_url,
    endpoint_base,
    endpoint_for,
    environment_endpoints,
    origin,
    parse_endpoints,
    repo_scope,
    shown_origin,
)
from .listings import next_link, referrers_of, tags_of
from .manifest import MAX_MANIFEST_SIZE, Descriptor, Manifest, parse
from .ratelimit import HostLimiter, Pacer
from .reference import is_loopback_host
from .uploads import Uploads

log = structlog.get_logger(__name__)

USER_AGENT = "ocimirror/0.1"
#: Bytes per read from a blob response.
READ_SIZE = 256 * 1024
_REDIRECTS = frozenset({301, 302, 303, 307, 308})
_MAX_REDIRECTS = 5


@dataclass
class _Tries:
    """What one request has tried already: each extra attempt happens at most once."""

    #: The 401's challenge was learnt and the request sent again.
    learnt: bool = False
    #: Fresh credentials were asked of the keychain after a refusal.
    renewed: bool = False


def _retry_hook(exc: Exception) -> bool | float:
    """Decide retries for stamina: Retry-After wins for 429, else the error tree decides."""
    if isinstance(exc, RateLimited) and exc.retry_after:
        # A positive Retry-After is the wait; `Retry-After: 0` in a storm is no reason to
        # go again at once: it backs off (jittered, growing) like an answer without one.
        return min(max(exc.retry_after, 0.0), 60.0)
    return is_retryable(exc)


def _reason(exc: BaseException) -> str:
    """The cause of a connection failure in a few words (aiohttp's OSError text, else the type)."""
    cause = getattr(exc, "os_error", None) or exc.__cause__ or exc
    text = getattr(cause, "strerror", None) or str(cause)
    return text or type(exc).__name__


class RegistryClient(Uploads):
    """Talks the distribution API to one registry host."""

    options: HostOptions

    def __init__(
        self,
        host: str,
        *,
        credentials: Credentials | None = None,
        keychain: Keychain | None = None,
        options: HostOptions | None = None,
        attempts: int = 5,
        pacer: Pacer | None = None,
    ) -> None:
        """Prepare a client; nothing is sent before the first request.

        `credentials` are presented as they are; without them, those `keychain` has for
        the host (asked again when they go stale or are refused); else none.
        """
        self.host = host
        self.options = options or HostOptions()
        o = self.options
        if pacer is None:
            #: The host's limits, shared by every client of it in the process.
            self.limiter = HostLimiter.for_host(
                host,
                max_concurrency=o.max_concurrency,
                requests_per_second=o.requests_per_second,
                adaptive=o.adaptive,
                min_concurrency=o.min_concurrency,
                min_rate=o.min_requests_per_second,
            )
        else:  # a pace of the caller's own (tests on fake time): not shared
            self.limiter = HostLimiter(
                max_concurrency=o.max_concurrency, adaptive=o.adaptive, pacer=pacer
            )
        #: Every request start takes a slot here (a no-op pace without a rate).
        self.pacer = self.limiter.pacer
        #: A loopback host without an explicit choice starts on plain HTTP and moves to
        #: HTTPS if the server turns out to speak TLS (as Docker and crane allow both).
        self._probe_scheme = (
            self.options.plain_http is None and not self.options.endpoint and is_loopback_host(host)
        )
        #: Where requests go: the host itself, or the endpoint serving it. Credentials go
        #: to this origin only, since that is where the host is served.
        self.base = base_url(host, self.options)
        self._netloc = self.base.partition("://")[2]
        #: How requests are authenticated (challenge, credentials, tokens per scope).
        self.auth = Authenticator(host, self, credentials=credentials, keychain=keychain)
        self.attempts = attempts
        #: Requests sent, by method (including token fetches under "TOKEN").
        self.requests: Counter[str] = Counter()
        #: Registry API responses received, by HTTP status (a 429 counts once per answer).
        self.statuses: Counter[int] = Counter()
        #: The last `RateLimit-Remaining` the registry announced, if any.
        self.rate_limit_remaining: int | None = None
        #: Set once the registry refuses a monolithic upload; later uploads go chunked.
        self.chunked_uploads = False
        self._session: aiohttp.ClientSession | None = None
        #: Held by the one task waiting for the rate limit to recover; others queue on it.
        self._rate_limit_lock = asyncio.Lock()
        #: Repository creations started (`HostOptions.create_repository`), by repository.
        self._creations: dict[str, asyncio.Future[None]] = {}

    # -- plumbing ---------------------------------------------------------------------

    def _ssl(self) -> ssl.SSLContext | bool:
        if not self.options.tls_verify:
            return False
        if self.options.ca_file:
            return ssl.create_default_context(cafile=self.options.ca_file)
        return True

    @property
    def session(self) -> aiohttp.ClientSession:
        """Return the HTTP session, creating it on first use (inside the event loop)."""
        if self._session is None or self._session.closed:
            policy = self.options.address_policy
            connector = (policy.connector if policy else aiohttp.TCPConnector)(
                limit=self.options.max_concurrency, ssl=self._ssl(), ttl_dns_cache=300
            )
            self._session = aiohttp.ClientSession(
                connector=connector,
                auto_decompress=False,
                # Nothing is decompressed (a digest is of the bytes as stored), so nothing
                # compressed is asked for: aiohttp would send `gzip, deflate`.
                headers={"User-Agent": USER_AGENT, "Accept-Encoding": "identity"},
                timeout=aiohttp.ClientTimeout(total=None, connect=30, sock_read=300),
                read_bufsize=READ_SIZE,
            )
        return self._session

    async def close(self) -> None:
        """Close the HTTP session."""
        if self._session is not None:
            await self._session.close()
            self._session = None

    def url(self, path: str) -> str:
        """Return the absolute URL of an API path (`/v2/...`)."""
        return self.base + path

    async def _exchange(
        self, method: str, url: str, *, counted: str = "", **kwargs: Any
    ) -> aiohttp.ClientResponse:
        """Send one request, counted (as `counted` or its method), in a slot of the host's
        limiter (capped, paced; the slot ends with the answer's headers); no redirects."""
        self.requests[counted or method] += 1
        async with self.limiter.slot():
            return await self.session.request(method, url, allow_redirects=False, **kwargs)

    def _note_rate_limit(self, resp: aiohttp.ClientResponse) -> None:
        self.limiter.answered(resp.status, resp.headers)
        value = resp.headers.get("RateLimit-Remaining")
        if value:
            with suppress(ValueError):
                self.rate_limit_remaining = int(value.split(";", 1)[0].strip())
                self.limiter.note_remaining(self.rate_limit_remaining)

    def _remaining(self) -> int | None:
        """The last known remaining count (every worker's, when the limits are shared)."""
        return self.limiter.remaining(self.rate_limit_remaining)

    def _below_reserve(self) -> bool:
        """Tell whether the last known remaining count is below the configured reserve."""
        reserve = self.options.rate_limit_reserve
        remaining = self._remaining()
        return reserve is not None and remaining is not None and remaining < reserve

    async def _await_rate_limit(self, repo: str, ref: str) -> None:
        """Hold a manifest GET while the registry's remaining pulls are below the reserve.

        One task at a time waits, then refreshes the count with a HEAD of the same manifest
        (HEADs do not count on Docker Hub); the others queue on the lock behind it.
        """
        if not self._below_reserve():
            return
        async with self._rate_limit_lock:
            while self._below_reserve():
                wait = self.options.rate_limit_wait
                log.warning(
                    "rate limit reserve reached, waiting",
                    host=self.host,
                    remaining=self._remaining(),
                    reserve=self.options.rate_limit_reserve,
                    wait=wait,
                )
                await asyncio.sleep(wait)
                await self._retrying(lambda: self._refresh_rate_limit(repo, ref))

    async def _refresh_rate_limit(self, repo: str, ref: str) -> None:
        """HEAD a manifest to learn the remaining count; no header means no limit now."""
        resp = await self._send(
            "HEAD",
            self.url(f"/v2/{repo}/manifests/{ref}"),
            scopes=self._scopes(repo),
            headers={"Accept": mt.MANIFEST_ACCEPT},
        )
        resp.release()
        # A 429 without the header tells nothing; any other answer without it means the
        # registry no longer limits us (or the GET will say what is wrong).
        if resp.status != 429 and not resp.headers.get("RateLimit-Remaining"):
            self.rate_limit_remaining = None
            self.limiter.note_remaining(None)

    # -- authentication ---------------------------------------------------------------

    @property
    def credentials(self) -> Credentials:
        """Return the credentials in use (the keychain's last answer when keychain-based)."""
        return self.auth.credentials

    def set_credentials(self, credentials: Credentials) -> None:
        """Use other credentials from now on, forgetting tokens got with the old ones."""
        self.auth.use(credentials)

    def send_credentials_first(self) -> None:
        """Send the credentials with every request, before any challenge asks for them
        (AUTH_HEADER, as serverless-registry-proxy sends it); a Bearer challenge in answer
        still switches to the token dance with the same credentials."""
        self.auth.present_first()

    async def token_request(
        self,
        method: str,
        url: str,
        *,
        headers: Mapping[str, str],
        data: Mapping[str, str] | None = None,
    ) -> aiohttp.ClientResponse:
        """Send a token request for the authenticator: counted as TOKEN, never redirected."""
        return await self._exchange(method, url, counted="TOKEN", headers=dict(headers), data=data)

    async def _authorization(
        self, url: str, scopes: frozenset[str], stale: str, tries: _Tries
    ) -> str | None:
        """Return the Authorization header for a request to `url` (None off our origin).

        A token service that refuses credentials from the keychain gets fresh ones once.
        """
        if not self._is_ours(url):
            return None
        secure = self.base.startswith("https://")
        try:
            return await self.auth.header(scopes, secure=secure, stale=stale)
        except TokenRefused as e:
            if tries.renewed:
                raise
            tries.renewed = True
            if not await self.auth.renew(e.refused):
                raise
            log.info("credentials refused, retrying with fresh ones", host=self.host)
            return await self.auth.header(scopes, secure=secure, stale=stale)

    # -- requests ---------------------------------------------------------------------

    async def _send(
        self,
        method: str,
        url: str,
        *,
        scopes: frozenset[str],
        headers: dict[str, str] | None = None,
        data: Any = None,
        replayable: bool = True,
        allow_redirects: bool = True,
    ) -> aiohttp.ClientResponse:
        """Send a request with auth; a GET or HEAD follows redirects (see `_follow`).

        Other methods never follow one: a redirect answer is theirs to refuse.
        """
        resp = await self._send_here(
            method, url, scopes=scopes, headers=headers, data=data, replayable=replayable
        )
        if allow_redirects and method in ("GET", "HEAD"):
            resp = await self._follow(method, resp, scopes=scopes, headers=headers)
        return resp

    def _is_ours(self, url: str) -> bool:
        """Tell whether a URL is on the registry's own scheme, host and port."""
        return origin(url) == origin(self.base)

    def _upgraded(self, url: str) -> str:
        """Take `http://HOST/…` as `https://HOST/…` once the registry is reached over HTTPS.

        Registries behind a TLS-terminating proxy often write their own links in HTTP;
        an upgrade to the registry's origin never sends anything elsewhere.
        """
        if self.base.startswith("https://") and url.startswith(f"http://{self._netloc}/"):
            return "https://" + url.removeprefix("http://")
        return url

    async def _follow(
        self,
        method: str,
        resp: aiohttp.ClientResponse,
        *,
        scopes: frozenset[str],
        headers: dict[str, str] | None,
    ) -> aiohttp.ClientResponse:
        """Follow redirects: with credentials on the registry's origin, without elsewhere.

        Storage backends (S3, CDNs) get no registry credentials; a redirect from HTTPS to
        plain HTTP, to another scheme or past `_MAX_REDIRECTS` hops is refused.
        """
        plain = {k: v for k, v in (headers or {}).items() if k.lower() != "authorization"}
        hops = 0
        while resp.status in _REDIRECTS:
            here, status = str(resp.url), resp.status
            location = resp.headers.get("Location", "")
            resp.release()
            hops += 1
            if hops > _MAX_REDIRECTS:
                raise RegistryError(f"{self.host}: more than {_MAX_REDIRECTS} redirects", url=here)
            if not location:
                raise RegistryError(f"{self.host}: HTTP {status} redirect without a Location")
            target = urljoin(here, location)
            scheme = origin(target)[0]
            if scheme not in ("http", "https") or not origin(target)[1]:
                raise RegistryError(f"{self.host}: refused a redirect to {shown_origin(target)}")
            if scheme == "http" and origin(here)[0] == "https":
                raise RegistryError(
                    f"{self.host}: refused a redirect from HTTPS down to plain HTTP"
                    f" ({shown_origin(target)})"
                )
            if self._is_ours(target):
                resp = await self._send_here(method, target, scopes=scopes, headers=headers)
            else:
                resp = await self._exchange(method, target, headers=plain)
        return resp

    async def _send_here(
        self,
        method: str,
        url: str,
        *,
        scopes: frozenset[str],
        headers: dict[str, str] | None = None,
        data: Any = None,
        replayable: bool = True,
    ) -> aiohttp.ClientResponse:
        """Send one request with auth; on 401 learn the challenge and try once more.

        When credentials from a keychain are refused (a password rotated, a helper's token
        ended) the keychain is asked for fresh ones and, if they differ, the request is sent
        once more: a wrong password still fails after two attempts at most. The
        Authorization header goes only to the registry's own origin (`_is_ours`).
        """
        hdrs = dict(headers or {})
        stale = ""
        tries = _Tries()
        while True:
            auth = await self._authorization(url, scopes, stale, tries)
            used = self.auth.credentials
            if auth:
                hdrs["Authorization"] = auth
            probing = self._probe_scheme or self.base.startswith("https://")
            probing = probing and url.startswith(f"http://{self._netloc}/")
            try:
                resp = await self._exchange(method, url, headers=hdrs, data=data)
            except (aiohttp.ClientResponseError, aiohttp.ServerDisconnectedError):
                if not probing:
                    raise
                tls_only = True
            else:
                # Go (the distribution registry) and nginx answer a GET in plain HTTP on
                # their TLS port with a 400 that says so.
                tls_only = probing and resp.status == 400 and await _says_use_https(resp)
                if tls_only:
                    resp.release()
            if tls_only:
                # Plain HTTP sent to a TLS server on loopback: go over HTTPS from now on.
                self._probe_scheme = False
                self.base = f"https://{self._netloc}"
                url = "https://" + url.removeprefix("http://")
                resp = await self._exchange(method, url, headers=hdrs, data=data)
            self._probe_scheme = False
            self.statuses[resp.status] += 1
            self._note_rate_limit(resp)
            if resp.status != 401 or not replayable or not self._is_ours(url):
                return resp  # another host's challenge is never learnt
            sent = hdrs.get("Authorization", "")
            if not tries.learnt:
                tries.learnt = True
                known = self.auth.scheme
                if await self.auth.learn(resp.headers.get("WWW-Authenticate", ""), sent=sent):
                    if known == "bearer" and self.auth.scheme == "bearer":
                        # A token we held was refused: maybe expired or short of scope.
                        challenge = self.auth.challenge
                        if challenge is not None and challenge.scopes:
                            scopes = scopes | frozenset(challenge.scopes)
                        stale = sent
                    resp.release()
                    continue
            if sent and not tries.renewed:
                tries.renewed = True
                if await self.auth.renew(used):
                    log.info("credentials refused, retrying with fresh ones", host=self.host)
                    stale = ""
                    resp.release()
                    continue
            return resp

    async def request(
        self,
        method: str,
        path_or_url: str,
        *,
        headers: Mapping[str, str] | None = None,
        scopes: frozenset[str] = frozenset(),
        data: Any = None,
        authenticate: bool = True,
        allow_redirects: bool = False,
    ) -> aiohttp.ClientResponse:
        """Send one request to the registry and return its answer unread (release it).

        `path_or_url` is an API path with its query (`/v2/...`) or an absolute URL.
        With `authenticate`, the client's credentials go along for `scopes` (to the
        registry's own origin only) and a 401 is answered as for the API methods; with
        `allow_redirects` too, a GET or HEAD follows redirects as `open_blob` does.
        Without `authenticate` the request goes as it is: no credentials of ours, no
        redirect followed. Either way it is paced and counted, and never retried.
        """
        url = path_or_url if "://" in path_or_url else self.url(path_or_url)
        if authenticate:
            return await self._send(
                method,
                url,
                scopes=scopes,
                headers=dict(headers or {}),
                data=data,
                replayable=data is None or isinstance(data, bytes | str),
                allow_redirects=allow_redirects,
            )
        if allow_redirects:
            raise ValueError("only authenticated requests follow redirects")
        resp = await self._exchange(method, url, headers=dict(headers or {}), data=data)
        self.statuses[resp.status] += 1
        self._note_rate_limit(resp)
        return resp

    async def error_from(self, resp: aiohttp.ClientResponse, what: str) -> RegistryError:
        """Build the error for a failed answer (NotFound for 404), the body read, released.

        `what` names what was asked (`host/repo:tag`); the registry's own message goes in
        the error's text, never in its public form.
        """
        detail = ""
        codes: tuple[str, ...] = ()
        try:
            body = await resp.read()
            doc = json.loads(body) if body else {}
            errs = doc.get("errors") if isinstance(doc, dict) else None
            if isinstance(errs, list) and errs:
                codes = tuple(str(e.get("code", "")) for e in errs if isinstance(e, dict))
                parts = []
                for e in errs:
                    if not isinstance(e, dict):
                        continue
                    msg = f"{e.get('code', '')}: {e.get('message', '')}".strip(": ")
                    d = e.get("detail")
                    if d and not isinstance(d, dict | list):
                        msg += f" ({d})"
                    parts.append(msg)
                detail = "; ".join(parts)
            elif body:
                detail = body[:200].decode(errors="replace").strip()
        except (ValueError, RecursionError, aiohttp.ClientError):
            pass
        finally:
            resp.release()
        status = resp.status
        text = f"{what}: HTTP {status}" + (f" {detail}" if detail else "")
        url = str(resp.url)
        public = registry_public(what, status, codes)
        if status == 404:
            return _NotFoundError(text, status=status, codes=codes, url=url, public=public)
        if status in (401, 403):
            return AuthError(text, status=status, codes=codes, url=url, public=public)
        if status == 429:
            return RateLimited(text, retry_after=_retry_after(resp), url=url, public=public)
        return RegistryError(text, status=status, codes=codes, url=url, public=public)

    async def _retrying(self, fn: Callable[[], Any]) -> Any:
        """Run an idempotent request function with retries on transient failures.

        The first attempt runs outside stamina: its retry context (tenacity underneath)
        costs about a third of the client's CPU for a manifest HEAD on loopback, and nearly
        every request succeeds at once. A failure is raised again as stamina's first
        attempt, so stamina decides, waits and reports exactly as if it had run it.
        """
        first: Exception | None = None
        try:
            try:
                return await fn()
            except Exception as e:
                first = e
            async for attempt in stamina.retry_context(
                on=_retry_hook,
                attempts=self.attempts,
                wait_initial=0.2,
                wait_max=10.0,
                timeout=120,
            ):
                with attempt:
                    if first is not None:
                        failed, first = first, None
                        raise failed
                    return await fn()
        except (
            aiohttp.ClientConnectionError,
            aiohttp.ClientResponseError,  # something answered, not in HTTP
            TimeoutError,
            ConnectionError,
        ) as e:
            # One readable line naming the host, as every other registry failure has; the
            # public form is the same whatever the cause (an open port reads as a closed one).
            raise Unreachable(
                f"{self.host}: cannot reach the registry: {_reason(e)}",
                public=f"registry {self.host} could not be reached",
            ) from e

    # -- manifests --------------------------------------------------------------------

    async def head_manifest(self, repo: str, ref: str) -> Descriptor | None:
        """HEAD a manifest: its descriptor, or None when the registry does not have it."""

        async def once() -> Descriptor | None:
            resp = await self._send(
                "HEAD",
                self.url(f"/v2/{repo}/manifests/{ref}"),
                scopes=self._scopes(repo),
                headers={"Accept": mt.MANIFEST_ACCEPT},
            )
            if resp.status == 404:
                resp.release()
                return None
            if resp.status != 200:
                raise await self.error_from(resp, f"{self.host}/{repo}:{ref}")
            resp.release()
            dg = resp.headers.get("Docker-Content-Digest", "")
            if not dg and ref.startswith("sha256:"):
                dg = ref
            media = resp.headers.get("Content-Type", "").split(";", 1)[0].strip()
            size = int(resp.headers.get("Content-Length", "0") or 0)
            if not dg:
                # Without a digest header HEAD tells us nothing reliable: fall back to GET.
                m = await self.get_manifest(repo, ref)
                return m.descriptor
            return Descriptor(media, dg, size)

        result: Descriptor | None = await self._retrying(once)
        return result

    async def get_manifest(self, repo: str, ref: str) -> Manifest:
        """GET a manifest's exact bytes; verified against `ref` when it is a digest."""
        where = f"{self.host}/{repo}{'@' if ':' in ref else ':'}{ref}"

        async def once() -> Manifest:
            resp = await self._send(
                "GET",
                self.url(f"/v2/{repo}/manifests/{ref}"),
                scopes=self._scopes(repo),
                headers={"Accept": mt.MANIFEST_ACCEPT},
            )
            if resp.status != 200:
                raise await self.error_from(resp, where)
            try:
                length = resp.content_length
                if length is not None and length > MAX_MANIFEST_SIZE:
                    raise ManifestError(
                        f"{where}: manifest is too large: {length} bytes"
                        f" (limit {MAX_MANIFEST_SIZE})"
                    )
                # read(n) returns what has arrived, not n bytes: gather to EOF, bounded.
                # (Keeping only the first piece cut manifests short on a slow network.)
                buf = bytearray()
                while piece := await resp.content.read(MAX_MANIFEST_SIZE + 1 - len(buf)):
                    buf += piece
                    if len(buf) > MAX_MANIFEST_SIZE:
                        raise ManifestError(
                            f"{where}: manifest is too large (over {MAX_MANIFEST_SIZE} bytes)"
                        )
                raw = bytes(buf)
            finally:
                resp.release()
            expected = ref if ":" in ref else None
            header_digest = resp.headers.get("Docker-Content-Digest", "")
            if expected is None and digests.is_valid(header_digest):
                # The registry hashed what it stored: bytes that disagree were damaged on
                # the way (retried, see is_retryable), or the registry is broken.
                actual = digests.of(raw, header_digest.split(":", 1)[0])
                if actual != header_digest:
                    raise DigestMismatch(header_digest, actual, f"manifest {where}")
            try:
                m = parse(raw, resp.headers.get("Content-Type", ""), expected_digest=expected)
            except ManifestError as e:
                raise ManifestError(f"{where}: {e}") from None
            return m

        # Outside the retries: a wait for the rate limit must not spend their time budget.
        await self._await_rate_limit(repo, ref)
        result: Manifest = await self._retrying(once)
        return result

    async def put_manifest(self, repo: str, ref: str, manifest: Manifest) -> None:
        """PUT a manifest's exact bytes under a tag or digest."""
        await self._put_manifest(repo, ref, manifest)

    async def _put_manifest(self, repo: str, ref: str, manifest: Manifest) -> str:
        """PUT a manifest's exact bytes; return the answer's `OCI-Subject` ("" if none)."""
        where = f"{self.host}/{repo}{'@' if ':' in ref else ':'}{ref}"

        async def once() -> str:
            resp = await self._send(
                "PUT",
                self.url(f"/v2/{repo}/manifests/{ref}"),
                scopes=self._scopes(repo, push=True),
                headers={"Content-Type": manifest.media_type},
                data=manifest.raw,
            )
            if resp.status not in (200, 201, 202):
                raise await self.error_from(resp, f"{where}: manifest refused")
            resp.release()
            return resp.headers.get("OCI-Subject", "").strip()

        answered: str = await self._creating(repo, once)
        return answered

    async def delete_manifest(self, repo: str, ref: str) -> bool:
        """DELETE a manifest by tag or digest; False when it was not there."""
        where = f"{self.host}/{repo}{'@' if ':' in ref else ':'}{ref}"

        async def once() -> bool:
            resp = await self._send(
                "DELETE",
                self.url(f"/v2/{repo}/manifests/{ref}"),
                scopes=frozenset({repo_scope(repo, "pull,push,delete")}),
            )
            if resp.status == 404:
                resp.release()
                return False
            if resp.status not in (200, 202, 204):
                error = await self.error_from(resp, f"{where}: delete refused")
                if type(error) is RegistryError and 400 <= error.status < 500:
                    raise DeleteRefused(
                        str(error),
                        status=error.status,
                        codes=error.codes,
                        url=error.url,
                        public=error.public,
                    )
                raise error
            resp.release()
            return True

        result: bool = await self._retrying(once)
        return result

    async def list_tags(self, repo: str) -> list[str]:
        """Return every tag of a repository, following `Link` pagination on this host.

        A next-page link to another scheme, host or port is refused (our credentials would
        follow it); an answer that is not the tags document is a RegistryError.
        """
        what = f"{self.host}/{repo}: tags list"
        tags: list[str] = []
        url: str | None = self.url(f"/v2/{repo}/tags/list?n=1000")
        seen: set[str] = set()
        while url and url not in seen:
            seen.add(url)

            async def once(url: str = url) -> tuple[list[str], str | None]:
                resp = await self._send("GET", url, scopes=self._scopes(repo))
                if resp.status != 200:
                    raise await self.error_from(resp, what)
                try:
                    raw = await resp.read()
                finally:
                    resp.release()
                nxt = next_link(resp.headers.get("Link", ""), str(resp.url))
                return tags_of(raw, what), None if nxt is None else self._upgraded(nxt)

            page, url = await self._retrying(once)
            tags.extend(page)
            if not page:
                break  # an empty page that links to another: nothing more to read
            if url is not None and not self._is_ours(url):
                raise RegistryError(
                    f"{what}: the next-page link points at another host"
                    f" ({shown_origin(url)}); refused, the credentials are for {self.base}"
                )
        return tags

    # -- referrers (OCI 1.1) ----------------------------------------------------------

    async def referrers(
        self, repo: str, digest: str, artifact_type: str | None = None
    ) -> tuple[list[Descriptor], bool] | None:
        """Ask the referrers API for the manifests whose `subject` is `digest`.

        Returns (descriptors, filtered) where `filtered` says the registry applied the
        `artifactType` filter (`OCI-Filters-Applied`), or None when the registry has no
        referrers API (404, 405 or 501: the caller falls back to the tag schema). Pages
        are followed through `Link` on this registry's own origin only.
        """
        what = f"{self.host}/{repo}: referrers of {digest}"
        query = "?" + urlencode({"artifactType": artifact_type}) if artifact_type else ""
        url: str | None = self.url(f"/v2/{repo}/referrers/{digest}{query}")
        found: list[Descriptor] = []
        filtered = bool(artifact_type)
        seen: set[str] = set()
        first = True
        while url and url not in seen:
            seen.add(url)

            async def once(
                url: str = url, first: bool = first
            ) -> tuple[list[Descriptor], bool, str | None] | None:
                resp = await self._send(
                    "GET", url, scopes=self._scopes(repo), headers={"Accept": mt.OCI_INDEX}
                )
                if first and resp.status in (404, 405, 501):
                    resp.release()
                    return None
                if resp.status != 200:
                    raise await self.error_from(resp, what)
                try:
                    raw = await resp.content.read(MAX_MANIFEST_SIZE + 1)
                finally:
                    resp.release()
                if len(raw) > MAX_MANIFEST_SIZE:
                    raise RegistryError(f"{what}: the answer is over {MAX_MANIFEST_SIZE} bytes")
                applied = resp.headers.get("OCI-Filters-Applied", "")
                nxt = next_link(resp.headers.get("Link", ""), str(resp.url))
                return (
                    referrers_of(raw, what),
                    "artifacttype" in applied.lower().replace(" ", "").split(","),
                    None if nxt is None else self._upgraded(nxt),
                )

            page = await self._retrying(once)
            if page is None:
                return None
            descs, applied, url = page
            filtered = filtered and applied
            found.extend(descs)
            first = False
            if not descs:
                break
            if url is not None and not self._is_ours(url):
                raise RegistryError(
                    f"{what}: the next-page link points at another host"
                    f" ({shown_origin(url)}); refused, the credentials are for {self.base}"
                )
        return found, filtered

    async def put_referrer(self, repo: str, manifest: Manifest) -> bool:
        """PUT a manifest that has a `subject`, by digest; tell whether the registry
        indexed it (it answered `OCI-Subject` naming the subject), so that no fallback
        tag is needed."""
        subject = manifest.subject
        answered = await self._put_manifest(repo, manifest.digest, manifest)
        return subject is not None and answered == subject.digest

    # -- blobs ------------------------------------------------------------------------

    async def blob_size(self, repo: str, digest: str) -> int | None:
        """HEAD a blob: its size, or None when absent."""

        async def once() -> int | None:
            resp = await self._send(
                "HEAD", self.url(f"/v2/{repo}/blobs/{digest}"), scopes=self._scopes(repo)
            )
            resp.release()
            if resp.status == 404:
                return None
            if resp.status != 200:
                raise await self.error_from(resp, f"{self.host}/{repo}@{digest}")
            return int(resp.headers.get("Content-Length", "0") or 0)

        result: int | None = await self._retrying(once)
        return result

    @asynccontextmanager
    async def open_blob(self, repo: str, digest: str) -> AsyncIterator[AsyncIterator[bytes]]:
        """GET a blob as a stream, following redirects without leaking credentials."""
        where = f"{self.host}/{repo}@{digest}"
        # Redirects to storage backends (S3, CDNs) are followed without credentials.
        resp = await self._send(
            "GET", self.url(f"/v2/{repo}/blobs/{digest}"), scopes=self._scopes(repo)
        )
        if resp.status != 200:
            raise await self.error_from(resp, where)

        async def chunks() -> AsyncIterator[bytes]:
            async for chunk in resp.content.iter_chunked(READ_SIZE):
                yield chunk

        try:
            yield chunks()
        finally:
            resp.release()

    def _upload_url(self, repo: str, location: str, base: str) -> str:
        """Resolve an upload `Location`; one on another host is refused.

        The spec lets a registry send uploads elsewhere, but our PUTs, PATCHes and DELETEs
        would carry the destination's credentials there: refused.
        """
        url = self._upgraded(urljoin(base, location))
        if not self._is_ours(url):
            raise RegistryError(
                f"{self.host}/{repo}: the registry sent the upload to another host"
                f" ({shown_origin(url)}); refused, the credentials are for {self.base}"
            )
        return url

    def _scopes(self, repo: str, *, push: bool = False) -> frozenset[str]:
        return frozenset({repo_scope(repo, "pull,push" if push else "pull")})


class _NotFoundError(NotFound, RegistryError):
    """A 404 from a registry: both NotFound and a RegistryError with status and codes."""

    def __init__(
        self,
        message: str,
        *,
        status: int = 404,
        codes: tuple[str, ...] = (),
        url: str = "",
        public: str = "",
    ) -> None:
        RegistryError.__init__(self, message, status=status, codes=codes, url=url, public=public)


async def _says_use_https(resp: aiohttp.ClientResponse) -> bool:
    """Tell whether a 400 is a TLS server's answer to a request sent in plain HTTP."""
    try:
        body = (await resp.read())[:1024].lower()
    except aiohttp.ClientError:
        return False
    return b"http request" in body and b"https" in body


def _retry_after(resp: aiohttp.ClientResponse) -> float | None:
    value = resp.headers.get("Retry-After")
    if not value:
        return None
    try:
        return float(value)
    except ValueError:
        from email.utils import parsedate_to_datetime

        try:
            return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
        except (TypeError, ValueError):
            return None


#: Callers name hosts' options and endpoints through the client, as before they had
#: modules of their own.
__all__ = [
    "ENDPOINTS_ENV",
    "READ_SIZE",
    "USER_AGENT",
    "HostOptions",
    "RegistryClient",
    "base_url",
    "endpoint_base",
    "endpoint_for",
    "environment_endpoints",
    "origin",
    "parse_endpoints",
    "repo_scope",
    "shown_origin",
]
