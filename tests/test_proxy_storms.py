"""`ocimirror proxy --cache` while its upstream answers HTTP error storms, and while the
disk of its cache directory is full (issue 18).

- Storms: a `Front` before the upstream registry answers seeded storms of 500, 502, 503
  and 429 (`Retry-After`). Clients get right bytes or an error that says when to come
  back: 429 and 503 carry `Retry-After` (an upstream 5xx on a blob fetch is our 503,
  not a 502 "unreachable"); a manifest's 5xx passes through with our own body. Nothing
  short or wrong is cached, and once the storms stop every item comes back right.
- A full disk: `RLIMIT_FSIZE` (100 KiB) set on the running proxy (`prlimit`), so a blob or
  the cache index's WAL cannot grow past it and the kernel fails the write with EFBIG, as
  it fails one with ENOSPC on a full disk. The proxy logs one line naming the cache, keeps
  answering (a blob whose download failed reaches its client cut; retried, it is streamed
  from the upstream uncached), never keeps a partial file, and caches again once the limit
  is lifted (space freed).
"""

from __future__ import annotations

import asyncio
import resource
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from ocimirror import digest as digests
from ocimirror.proxy.cachefull import PAUSE
from ocimirror.testkit.faults import http_faults
from ocimirror.testkit.front import Front
from ocimirror.testkit.invariants import check_blob_dir
from ocimirror.testkit.proxy import ProxyProcess
from ocimirror.testkit.registry import LocalRegistry
from ocimirror.testkit.seeding import seed
from test_proxy_faults import (
    ACCEPT,
    Tally,
    corpus,
    fetch,
    no_writes_upstream,
    pull_until_right,
    wanted,
)

pytestmark = pytest.mark.faults

KiB = 1024


async def answers(port: int, items: list[tuple[str, str]], tally: Tally) -> Counter[str]:
    """GET every item once; judge 200s by digest; count the error statuses, checking that
    a 429 or 503 says when to come back."""
    seen: Counter[str] = Counter()
    async with aiohttp.ClientSession() as session:
        for kind, digest in items:
            url = f"http://127.0.0.1:{port}/v2/app/{kind}/{digest}"
            async with session.get(url, headers={"Accept": ACCEPT}) as resp:
                body = await resp.read()
                if resp.status == 200:
                    await fetch(session, port, kind, digest, tally)  # judged by digest
                    continue
                seen[f"{kind} {resp.status}"] += 1
                assert resp.status in (429, 500, 502, 503), (resp.status, body[:200])
                if resp.status in (429, 503):
                    assert resp.headers.get("Retry-After"), (kind, resp.status)
                assert b"the front says" not in body  # the upstream's words are not passed on
    return seen


async def test_proxy_under_upstream_http_storms_answers_and_caches_only_whole_blobs(
    registry: LocalRegistry, start_proxy: Callable[..., ProxyProcess], tmp_path: Path
) -> None:
    images = corpus()
    await seed(registry, "app", images)
    registry.clear_log()
    items = wanted(images)
    cache = tmp_path / "cache"
    counts: Counter[str] = Counter()
    storms = http_faults(seed=2, rate=0.3, storm=3, retry_after="1", counts=counts)
    storming = True

    async def gated(front: Front, request: web.Request, body: bytes) -> web.Response | None:
        return await storms(front, request, body) if storming else None

    async with Front(registry, gated).running() as front:
        proxy = await asyncio.to_thread(
            start_proxy, "--registry-host", front.host, env={"OCIMIRROR_PROXY_CACHE": str(cache)}
        )
        tally = Tally()
        seen = await answers(proxy.port, items, tally)
        assert not tally.wrong, tally.wrong
        assert sum(counts.values()) > 0, counts
        assert seen, seen
        walk = check_blob_dir(cache)
        assert not walk.violations, [str(v) for v in walk.violations]

        storming = False
        await pull_until_right(proxy.port, items)
    print(f"\nstorms: {dict(counts)}; the clients saw {dict(seen)}")
    walk = check_blob_dir(cache)
    assert not walk.violations, [str(v) for v in walk.violations]
    assert walk.blobs >= len(items)
    no_writes_upstream(registry)
    text = proxy.text()
    assert "Traceback" not in text
    if any(k.endswith(" 503") for k in seen):
        assert "upstream answered 5xx" in text


def cached_files(cache: Path) -> set[str]:
    """The digests of the cache's blob files; fails on any other file (a temporary one)."""
    names = [p.name for p in (cache / "blobs" / "sha256").iterdir()]
    others = [n for n in names if not digests.is_valid(f"sha256:{n}")]
    assert not others, others
    return {f"sha256:{n}" for n in names}


async def test_a_full_cache_disk_keeps_the_proxy_answering_and_keeps_nothing_partial(
    registry: LocalRegistry, start_proxy: Callable[..., ProxyProcess], tmp_path: Path
) -> None:
    images = corpus()
    await seed(registry, "app", images)
    items = wanted(images)
    big = {
        d
        for k, d in items
        if k == "blobs"
        and any(b.digest == d and b.size > 100 * KiB for _, i in images for b in i.all_blobs())
    }
    assert big
    cache = tmp_path / "cache"
    proxy = await asyncio.to_thread(
        start_proxy, "--registry-host", registry.host, env={"OCIMIRROR_PROXY_CACHE": str(cache)}
    )
    _, hard = resource.prlimit(proxy.proc.pid, resource.RLIMIT_FSIZE)
    resource.prlimit(proxy.proc.pid, resource.RLIMIT_FSIZE, (100 * KiB, hard))  # the soft one

    # Full: the big blobs' downloads fail (their first clients are cut), retried they come
    # from the upstream; everything reaches its clients right, nothing partial is kept.
    await pull_until_right(proxy.port, items, tries=3)
    walk = check_blob_dir(cache)
    assert not walk.violations, [str(v) for v in walk.violations]
    assert not big & cached_files(cache)
    assert cached_files(cache)  # the small ones are kept
    text = proxy.text()
    assert text.count("proxy cache is full") == 1, text
    assert str(cache) in text
    assert "Traceback" not in text

    # Space freed: once the pause is over the big blobs are cached as usual.
    resource.prlimit(proxy.proc.pid, resource.RLIMIT_FSIZE, (hard, hard))

    deadline = time.monotonic() + PAUSE + 30
    while not big <= cached_files(cache):  # polled: the pause ends on the proxy's clock
        assert time.monotonic() < deadline, (big, cached_files(cache))
        await pull_until_right(proxy.port, [("blobs", d) for d in big])
        await asyncio.sleep(0.2)
    walk = check_blob_dir(cache)
    assert not walk.violations, [str(v) for v in walk.violations]
    assert "Traceback" not in proxy.text()
