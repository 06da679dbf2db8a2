"""The proxy's pull-through policy, in-process: facts in, decisions out, time by a fake clock.

`PullPolicy` does no I/O, so these tests move its clock (and the cache's) by hand across
the tag TTL, the digest grants' lifetime and the stale-if-error window; no test sleeps.
The last test runs the proxy's application in-process on the same fake clock, in front of
a real registry. The proxy as a process, with the same rules, is in
test_proxy_pullthrough.py.
"""

from __future__ import annotations

from pathlib import Path

import aiohttp
import pytest
from aiohttp.test_utils import TestClient, TestServer

from ocimirror import mediatypes as mt
from ocimirror.errors import AuthError, NotFound, RateLimited, RegistryError
from ocimirror.proxy.app import make_proxy_app
from ocimirror.proxy.cache import ProxyCache
from ocimirror.proxy.policy import (
    DIGEST_GRANT_TTL,
    STALE_GRANT_TTL,
    Fetch,
    Grants,
    PullPolicy,
    Reader,
    Refuse,
    Revalidate,
    Serve,
    failure_reason,
    status_failure,
)
from ocimirror.proxy.settings import load_settings
from ocimirror.testkit.images import make_image
from ocimirror.testkit.registry import LocalRegistry
from ocimirror.testkit.seeding import seed

TTL = 300.0
DIGEST = "sha256:" + "a" * 64
OTHER = "sha256:" + "b" * 64
ALICE = Reader("up", "lib/app", "alice-hash", passthrough=True)
BOB = Reader("up", "lib/app", "bob-hash", passthrough=True)
ANONYMOUS = Reader("up", "lib/app", "", passthrough=True)
OWN_LOGIN = Reader("up", "lib/app")  # the proxy logs in itself: everyone reads what it reads


class Clock:
    """A clock the test moves by hand."""

    def __init__(self, now: float = 5_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def policy(clock: Clock) -> PullPolicy:
    return PullPolicy(tag_ttl=TTL, clock=clock)


async def test_a_tag_is_served_until_its_ttl_passes_then_revalidated(
    tmp_path: Path, clock: Clock, policy: PullPolicy
) -> None:
    # The cache and the policy on one fake clock: the tag's age is the cache's fact.
    cache = ProxyCache(tmp_path / "cache", tag_ttl=TTL, clock=clock)
    try:
        raw = b'{"schemaVersion":2}'
        await cache.put_manifest("up", "lib/app", "1", raw, mt.OCI_MANIFEST)

        async def decide() -> Serve | Revalidate | Fetch:
            entry = await cache.tag("up", "lib/app", "1")
            assert entry is not None
            return policy.decide_tag(OWN_LOGIN, "1", age=entry.age, accepted=True)

        assert await decide() == Serve()
        clock.advance(TTL - 0.5)
        assert await decide() == Serve()
        clock.advance(0.5)
        assert await decide() == Revalidate()
        # A HEAD that found the same digest: the cache keeps it fresh from now on.
        entry = await cache.tag("up", "lib/app", "1")
        assert entry is not None
        said = entry.digest
        decided = policy.decide_revalidated(OWN_LOGIN, "1", status=200, said=said, cached=said)
        assert decided == Serve()
        assert await cache.touch_tag("up", "lib/app", "1", said)
        assert await decide() == Serve()
    finally:
        await cache.close()


def test_a_tag_not_cached_or_of_another_type_is_fetched(policy: PullPolicy) -> None:
    assert policy.decide_tag(OWN_LOGIN, "1", age=None, accepted=False) == Fetch()
    # The client does not take the cached type: fetched, and the tag keeps what it had.
    assert policy.decide_tag(OWN_LOGIN, "1", age=0.0, accepted=False) == Fetch(keep_tag=False)


def test_a_passthrough_tag_is_served_only_to_a_client_the_upstream_let_read_it(
    clock: Clock, policy: PullPolicy
) -> None:
    # Fresh in the cache, but alice was never let read it: the upstream is asked.
    assert policy.decide_tag(ALICE, "1", age=0.0, accepted=True) == Revalidate()
    decided = policy.decide_revalidated(ALICE, "1", status=200, said=DIGEST, cached=DIGEST)
    assert decided == Serve()
    assert policy.decide_tag(ALICE, "1", age=0.0, accepted=True) == Serve()
    assert policy.decide_digest(ALICE, DIGEST) == Serve()  # the digest the tag named too
    # Bob's credentials are not alice's; another repository is another grant.
    assert policy.decide_tag(BOB, "1", age=0.0, accepted=True) == Revalidate()
    elsewhere = Reader("up", "lib/other", ALICE.who, passthrough=True)
    assert policy.decide_tag(elsewhere, "1", age=0.0, accepted=True) == Revalidate()
    # A tag grant lasts the tag TTL, whatever the cached entry's age.
    clock.advance(TTL)
    assert policy.decide_tag(ALICE, "1", age=0.0, accepted=True) == Revalidate()


def test_an_anonymous_grant_holds_for_every_client(clock: Clock, policy: PullPolicy) -> None:
    policy.grant(ANONYMOUS, "1", DIGEST)
    assert policy.decide_tag(BOB, "1", age=0.0, accepted=True) == Serve()
    assert policy.decide_digest(ALICE, DIGEST) == Serve()
    # ... while a client's own grant is its own.
    policy.grant(ALICE, OTHER)
    assert policy.decide_digest(BOB, OTHER) == Revalidate()


def test_digest_grants_expire(clock: Clock, policy: PullPolicy) -> None:
    assert policy.decide_digest(ALICE, DIGEST) == Revalidate()
    assert policy.decide_access(ALICE, DIGEST, 200) == Serve()  # a yes is remembered
    clock.advance(DIGEST_GRANT_TTL - 1)
    assert policy.decide_digest(ALICE, DIGEST) == Serve()
    clock.advance(1)
    assert policy.decide_digest(ALICE, DIGEST) == Revalidate()
    # The proxy's own login needs no grant.
    assert policy.decide_digest(OWN_LOGIN, DIGEST) == Serve()


def test_a_refusal_is_passed_on_and_grants_nothing(policy: PullPolicy) -> None:
    for status in (401, 403, 404):
        assert policy.decide_access(ALICE, DIGEST, status) == Refuse()
    assert policy.decide_digest(ALICE, DIGEST) == Revalidate()
    assert policy.decide_revalidated(ALICE, "1", status=401, said=None, cached=DIGEST) == Refuse()
    assert policy.decide_tag(ALICE, "1", age=0.0, accepted=True) == Revalidate()


def test_stale_if_error_within_the_window_only(clock: Clock, policy: PullPolicy) -> None:
    # Never let read: no stale copy for alice, whatever the upstream's trouble.
    assert policy.decide_error(ALICE, DIGEST, "unreachable") == Refuse()
    assert policy.decide_access(ALICE, DIGEST, 503) == Refuse()
    policy.grant(ALICE, DIGEST, "1")
    clock.advance(DIGEST_GRANT_TTL)  # the grant is too old to skip asking...
    assert policy.decide_digest(ALICE, DIGEST) == Revalidate()
    # ...but the upstream failing, the stale copy stands in.
    assert policy.decide_error(ALICE, DIGEST, "unreachable") == Serve(stale=True)
    assert policy.decide_access(ALICE, DIGEST, 503) == Serve(stale=True)
    assert policy.decide_access(ALICE, DIGEST, 429) == Serve(stale=True)
    stale = policy.decide_revalidated(ALICE, "1", status=502, said=None, cached=DIGEST)
    assert stale == Serve(stale=True)
    # A failure no stale copy covers (refused credentials, not found) is passed on.
    assert policy.decide_error(ALICE, DIGEST, None) == Refuse()
    assert policy.decide_access(ALICE, DIGEST, 404) == Refuse()
    # Past the window: no stale copy any more.
    clock.advance(STALE_GRANT_TTL - DIGEST_GRANT_TTL)
    assert policy.decide_error(ALICE, DIGEST, "unreachable") == Refuse()
    assert policy.decide_revalidated(ALICE, "1", status=502, said=None, cached=DIGEST) == Refuse()
    # With the proxy's own login, a stale copy always stands in for a failing upstream.
    assert policy.decide_error(OWN_LOGIN, DIGEST, "http_500") == Serve(stale=True)


def test_revalidation_follows_a_moved_tag_and_forgets_a_deleted_one(policy: PullPolicy) -> None:
    moved = policy.decide_revalidated(OWN_LOGIN, "1", status=200, said=OTHER, cached=DIGEST)
    assert moved == Fetch()
    gone = policy.decide_revalidated(OWN_LOGIN, "1", status=404, said=None, cached=DIGEST)
    assert gone == Refuse(forget=True)
    # A pass-through 404 may be this client's alone: the tag stays for the others.
    mine = policy.decide_revalidated(ALICE, "1", status=404, said=None, cached=DIGEST)
    assert mine == Refuse(forget=False)
    assert policy.decide_fetched(OWN_LOGIN, 200, tag="1") is None
    assert policy.decide_fetched(OWN_LOGIN, 404, tag="1") == Refuse(forget=True)
    assert policy.decide_fetched(OWN_LOGIN, 404, tag=None) == Refuse(forget=False)
    assert policy.decide_fetched(ALICE, 404, tag="1") == Refuse(forget=False)


def test_which_upstream_failures_a_stale_copy_covers() -> None:
    assert failure_reason(aiohttp.ClientConnectionError()) == "unreachable"
    assert failure_reason(TimeoutError()) == "unreachable"
    assert failure_reason(RegistryError("x", status=503)) == "http_503"
    assert failure_reason(RateLimited("x")) == "http_429"
    assert failure_reason(RegistryError("x")) == "unavailable"
    assert failure_reason(RegistryError("x", status=400)) is None
    assert failure_reason(AuthError("x", status=401)) is None
    assert failure_reason(NotFound("x")) is None
    assert failure_reason(ValueError("x")) is None
    assert [status_failure(s) for s in (200, 404, 429, 500)] == [None, None, "http_429", "http_500"]


def test_grants_keep_the_latest_only(clock: Clock) -> None:
    grants = Grants(limit=2, clock=clock)
    for obj in ("a", "b", "c"):
        grants.allow(ALICE, obj)
    assert len(grants) == 2
    assert not grants.granted(ALICE, "a", 10.0)
    assert grants.granted(ALICE, "c", 10.0)


async def test_the_app_revalidates_a_tag_once_its_clock_passes_the_ttl(
    registry: LocalRegistry, tmp_path: Path, clock: Clock
) -> None:
    old, new = (make_image(layer_size=300, seed=f"policy-{i}") for i in range(2))
    await seed(registry, "app", [("1", old)])
    cache = ProxyCache(tmp_path / "cache", tag_ttl=TTL, clock=clock)
    policy = PullPolicy(tag_ttl=TTL, clock=clock)
    settings = load_settings(registry_host=registry.host, env={})
    app = make_proxy_app(settings, cache=cache, policy=policy)
    try:
        async with TestClient(TestServer(app, host="127.0.0.1")) as client:

            async def pull() -> bytes:
                accept = {"Accept": old.manifest.media_type}
                resp = await client.get("/v2/app/manifests/1", headers=accept)
                assert resp.status == 200
                return await resp.read()

            assert await pull() == old.manifest.raw
            await seed(registry, "app", [("1", new)])  # the tag moves upstream
            mark = registry.mark()
            clock.advance(TTL - 1)
            assert await pull() == old.manifest.raw  # fresh: the cache answers alone
            assert [r for r in registry.requests(since=mark) if r.kind == "manifest"] == []
            clock.advance(1)
            assert await pull() == new.manifest.raw  # stale: a HEAD, then the new one
            asked = [r.method for r in registry.requests(since=mark) if r.kind == "manifest"]
            assert asked == ["HEAD", "GET"]
    finally:
        await cache.close()
