"""The pull-through policy: when the cache may answer, and whom; facts in, decisions out.

`PullPolicy` sends nothing and reads nothing: it is told what the cache holds (a tag's
age, whether the client takes the cached media type), what the upstream answered (a
status, a digest, an error) and who asks (a `Reader`), and returns a decision (`Serve`,
`Revalidate`, `Fetch`, `Refuse`) that `pullthrough` carries out. Its one state is the
memory of what pass-through upstreams let whom read (`Grants`), timed by an injected
clock, so that its tests run in-process and move time on without sleeping.

The rules (see `pullthrough` for how they meet the wire):

- A tag is served from the cache while younger than `tag_ttl`; then it is revalidated
  (a HEAD upstream says where it points now). A cached manifest of a media type the client
  does not take is fetched again, stored by its digest only (the tag keeps its manifest).
- Pass-through upstreams decide per client: the cache answers only after the upstream let
  that client (`Reader.who`; "" for an anonymous one, whose grants hold for everyone) read
  that tag or digest in that repository. A grant lasts `tag_ttl` for a tag and
  `digest_grant_ttl` for a digest; then a HEAD asks again. With the proxy's own login
  (`proxy` mode), whoever may use the proxy may read what it reads.
- Stale-if-error: when the upstream is unreachable, answers 5xx or 429, the cached copy
  stands in, for clients granted that object within `stale_grant_ttl` (pass-through).
- A 404 for a tag from an upstream the proxy logs in to itself forgets the cached tag.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

import aiohttp

from ..errors import AuthError, NotFound, RegistryError

#: Seconds a pass-through upstream's yes to a client for a digest is trusted.
DIGEST_GRANT_TTL = 3600.0
#: Seconds after a yes that the client may still get the stale copy when the upstream fails.
STALE_GRANT_TTL = 86400.0
#: Grants remembered at most (the least recent go first).
GRANT_LIMIT = 100_000

GrantKey = tuple[str, str, str, str]


@dataclass(frozen=True)
class Reader:
    """Who asks for what where: the upstream, its repository, and the client."""

    #: The upstream's label (its name, else its host).
    upstream: str
    #: The repository in the upstream's names.
    repo: str
    #: The client's identity to a pass-through upstream ("" for anonymous).
    who: str = ""
    #: Whether the upstream decides per client (its own credentials go upstream).
    passthrough: bool = False


@dataclass(frozen=True)
class Serve:
    """Answer from the cache (`stale`: the upstream failed, say so with a Warning)."""

    stale: bool = False


@dataclass(frozen=True)
class Revalidate:
    """Ask the upstream with a HEAD (the client's credentials) before the cache answers."""


@dataclass(frozen=True)
class Fetch:
    """Get the manifest from the upstream; `keep_tag`: store it under the tag asked for
    (else by its digest only, the tag keeping the manifest it had)."""

    keep_tag: bool = True


@dataclass(frozen=True)
class Refuse:
    """Pass the upstream's answer (or error) on; `forget`: the cached tag is gone upstream."""

    forget: bool = False


Decision = Serve | Revalidate | Fetch | Refuse


class Grants:
    """What pass-through upstreams let whom read: (upstream, repository, who, tag or digest)."""

    def __init__(
        self, limit: int = GRANT_LIMIT, clock: Callable[[], float] = time.monotonic
    ) -> None:
        """Remember up to `limit` grants, timed by `clock`."""
        self._seen: OrderedDict[GrantKey, float] = OrderedDict()
        self._limit = limit
        self._clock = clock

    def allow(self, reader: Reader, obj: str) -> None:
        """Record that the upstream let the reader read `obj` just now."""
        key = (reader.upstream, reader.repo, reader.who, obj)
        self._seen[key] = self._clock()
        self._seen.move_to_end(key)
        while len(self._seen) > self._limit:
            self._seen.popitem(last=False)

    def granted(self, reader: Reader, obj: str, max_age: float) -> bool:
        """Tell whether the reader, or anyone (an anonymous grant), was let read `obj`
        less than `max_age` seconds ago."""
        now = self._clock()
        for whom in {reader.who, ""}:
            at = self._seen.get((reader.upstream, reader.repo, whom, obj))
            if at is not None and now - at < max_age:
                return True
        return False

    def __len__(self) -> int:
        """Return how many grants are remembered."""
        return len(self._seen)


def failure_reason(error: BaseException) -> str | None:
    """Name an upstream failure a stale copy may stand in for; None for other errors."""
    if isinstance(error, AuthError | NotFound):
        return None
    if isinstance(error, RegistryError):
        if error.status == 429 or error.status >= 500 or error.status == 0:
            return f"http_{error.status}" if error.status else "unavailable"
        return None
    if isinstance(error, aiohttp.ClientError | TimeoutError):
        return "unreachable"
    return None


def status_failure(status: int) -> str | None:
    """Name an upstream status a stale copy may stand in for (429, 5xx); None otherwise."""
    return f"http_{status}" if status == 429 or status >= 500 else None


class PullPolicy:
    """Decide, from facts, whether the cache answers, the upstream is asked, or refuses."""

    def __init__(
        self,
        *,
        tag_ttl: float,
        digest_grant_ttl: float = DIGEST_GRANT_TTL,
        stale_grant_ttl: float = STALE_GRANT_TTL,
        grant_limit: int = GRANT_LIMIT,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """Keep tags `tag_ttl` seconds; time grants by `clock`."""
        self.tag_ttl = tag_ttl
        self.digest_grant_ttl = digest_grant_ttl
        self.stale_grant_ttl = stale_grant_ttl
        self.grants = Grants(grant_limit, clock)

    # -- grants ------------------------------------------------------------------------------

    def grant(self, reader: Reader, *objs: str | None) -> None:
        """Record that a pass-through upstream let the reader read `objs` (others: no-op)."""
        if not reader.passthrough:
            return
        for obj in objs:
            if obj:
                self.grants.allow(reader, obj)

    def may_read(self, reader: Reader, obj: str, max_age: float) -> bool:
        """Tell whether the cache may answer the reader with `obj` without asking upstream."""
        return not reader.passthrough or self.grants.granted(reader, obj, max_age)

    def may_have_stale(self, reader: Reader, obj: str) -> bool:
        """Tell whether the reader may have the stale copy of `obj` while the upstream fails."""
        return self.may_read(reader, obj, self.stale_grant_ttl)

    # -- decisions ----------------------------------------------------------------------------

    def decide_tag(
        self, reader: Reader, tag: str, *, age: float | None, accepted: bool
    ) -> Serve | Revalidate | Fetch:
        """Decide a manifest request by tag: `age` is how long ago the cached tag was
        fetched or revalidated (None: not cached), `accepted` whether the client takes
        the cached manifest's media type."""
        if age is None:
            return Fetch()
        if not accepted:
            return Fetch(keep_tag=False)
        if age < self.tag_ttl and self.may_read(reader, tag, self.tag_ttl):
            return Serve()
        return Revalidate()

    def decide_digest(self, reader: Reader, digest: str) -> Serve | Revalidate:
        """Decide a request for a cached object by digest (a manifest or a blob)."""
        if self.may_read(reader, digest, self.digest_grant_ttl):
            return Serve()
        return Revalidate()

    def decide_error(self, reader: Reader, obj: str, reason: str | None) -> Serve | Refuse:
        """Decide after asking upstream about a cached `obj` failed (`reason`: from
        `failure_reason` or `status_failure`; None for a failure no stale copy covers)."""
        if reason is not None and self.may_have_stale(reader, obj):
            return Serve(stale=True)
        return Refuse()

    def decide_access(self, reader: Reader, obj: str, status: int) -> Serve | Refuse:
        """Decide after a HEAD upstream for a cached `obj` answered `status`: a yes is
        remembered and the cache answers, a failure may have the stale copy, else no."""
        if status < 400:
            self.grant(reader, obj)
            return Serve()
        return self.decide_error(reader, obj, status_failure(status))

    def decide_revalidated(
        self, reader: Reader, tag: str, *, status: int, said: str | None, cached: str
    ) -> Serve | Fetch | Refuse:
        """Decide after a HEAD revalidating a cached tag (digest `cached`) answered `status`
        with `said` as its digest: the same digest is served from the cache, another one
        fetched; an upstream failure may have the stale copy, any other answer goes on."""
        failure = self.decide_error(reader, tag, status_failure(status))
        if isinstance(failure, Serve):
            return failure
        if status != 200:
            return Refuse(forget=status == 404 and not reader.passthrough)
        self.grant(reader, tag)
        if said == cached:
            self.grant(reader, said)
            return Serve()
        return Fetch()

    def decide_fetched(self, reader: Reader, status: int, *, tag: str | None) -> Refuse | None:
        """Decide after a manifest GET upstream answered `status`: None when it brought the
        manifest; else its answer goes on, forgetting the tag on a 404 of the proxy's own."""
        if status == 200:
            return None
        return Refuse(forget=status == 404 and tag is not None and not reader.passthrough)
