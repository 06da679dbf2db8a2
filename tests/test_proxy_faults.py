"""`ocimirror proxy`, with and without `--cache` (a directory, or a bucket in moto's S3),
while its upstream misbehaves.

Clients pull manifests and blobs by digest through the proxy, whose upstream is a
registry behind a seeded `FaultInjector` (half the connections faulty: resets either way,
short bodies, flipped bytes, stalls, slow reads). Whatever a client gets is judged by the
digest it asked for: an error status or a cut connection is allowed, a complete answer
whose bytes are not the digest's never. After the run the cache holds only whole, right
blobs (a directory: `invariants.check_blob_dir`; a bucket: `check_blob_objects`, every
object under `blobs/` named by a digest and hashing to it, nothing partial or temporary),
the upstream saw no write, and with the cache, what was cached is still served once the
upstream is down.

With the injector between the proxy and its cache bucket instead (moto behind
`ChecksumS3`, which checks an upload's `x-amz-checksum-sha256` as S3 does), no client
gets wrong bytes either (a whole blob read from the bucket is hashed on the way) and the
bucket keeps no blob damaged on its way up (each upload carries its SHA-256).

The memory test holds 200 concurrent clients against a proxy with a faulty upstream for
5 s with the cache (60 s, and without the cache too, with `OCIMIRROR_SOAK=1`) and bounds
the proxy's peak RSS.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import obstore
import pytest
from obstore.store import MemoryStore, ObjectStore

from ocimirror.proxy.cachestore import ObjectBlobs, open_store
from ocimirror.testkit.faults import FaultInjector
from ocimirror.testkit.images import SampleImage, make_image, make_index
from ocimirror.testkit.invariants import Walk, check_blob_dir, check_blob_objects
from ocimirror.testkit.proxy import ProxyProcess
from ocimirror.testkit.registry import LocalRegistry
from ocimirror.testkit.s3 import ChecksumS3, LocalS3
from ocimirror.testkit.seeding import seed

pytestmark = pytest.mark.faults

SOAK = os.environ.get("OCIMIRROR_SOAK", "") not in ("", "0")
KiB = 1024
MiB = 1024 * KiB
#: The peak RSS the proxy stays under with 200 clients and a faulty upstream.
RSS_BOUND = 200 * MiB
ACCEPT = ", ".join(
    [
        "application/vnd.oci.image.index.v1+json",
        "application/vnd.oci.image.manifest.v1+json",
        "application/vnd.docker.distribution.manifest.list.v2+json",
        "application/vnd.docker.distribution.manifest.v2+json",
    ]
)


def corpus() -> list[tuple[str, SampleImage]]:
    """Two images sharing a layer, and a two-platform index: bodies past the faults' 32 KiB."""
    shared = make_image(layers=2, layer_size=200 * KiB, seed="proxy-faults-a")
    other = make_image(layers=2, layer_size=120 * KiB, seed="proxy-faults-b")
    index = make_index(("linux/amd64", "linux/arm64/v8"), layer_size=80 * KiB, seed="pf")
    return [("a", shared), ("b", other), ("multi", index)]


def wanted(images: Sequence[tuple[str, SampleImage]]) -> list[tuple[str, str]]:
    """Every (kind, digest) the corpus holds: manifests (children too) and blobs."""
    out: dict[str, str] = {}
    for _, image in images:
        out[image.digest] = "manifests"
        for child in image.children:
            out[child.digest] = "manifests"
        for blob in image.all_blobs():
            out[blob.digest] = "blobs"
    return [(kind, digest) for digest, kind in out.items()]


@dataclass
class Tally:
    """What the clients got, by outcome; `wrong` lists complete answers with other bytes."""

    outcomes: Counter[str] = field(default_factory=Counter)
    wrong: list[str] = field(default_factory=list)


async def fetch(
    session: aiohttp.ClientSession, port: int, kind: str, digest: str, tally: Tally
) -> bool:
    """GET one manifest or blob by digest through the proxy; judge it; True when right."""
    url = f"http://127.0.0.1:{port}/v2/app/{kind}/{digest}"
    try:
        async with session.get(url, headers={"Accept": ACCEPT}) as resp:
            body = await resp.read()
            if resp.status != 200:
                tally.outcomes[f"status {resp.status}"] += 1
                return False
    except (aiohttp.ClientError, ConnectionError, TimeoutError):
        tally.outcomes["cut"] += 1  # an error the client sees: allowed
        return False
    if "sha256:" + hashlib.sha256(body).hexdigest() != digest:
        tally.wrong.append(f"{kind} {digest}: {len(body)} bytes that are not it")
        return False
    tally.outcomes["right"] += 1
    return True


async def pull(port: int, items: list[tuple[str, str]], *, clients: int, rounds: int) -> Tally:
    """`clients` concurrent clients, each fetching every item `rounds` times."""
    tally = Tally()
    timeout = aiohttp.ClientTimeout(total=60)

    async def client(n: int) -> None:
        async with aiohttp.ClientSession(timeout=timeout) as session:
            for r in range(rounds):
                order = items[n % len(items) :] + items[: n % len(items)]
                for kind, digest in order if r % 2 == 0 else reversed(order):
                    await fetch(session, port, kind, digest, tally)

    await asyncio.gather(*(client(n) for n in range(clients)))
    return tally


async def pull_until_right(port: int, items: list[tuple[str, str]], tries: int = 20) -> None:
    """Fetch each item until it comes back right (the cache then holds it)."""
    tally = Tally()
    async with aiohttp.ClientSession() as session:
        for kind, digest in items:
            for _ in range(tries):
                if await fetch(session, port, kind, digest, tally):
                    break
            else:
                raise AssertionError(f"{kind} {digest} never came back right: {tally}")
    assert not tally.wrong, tally.wrong


def no_writes_upstream(registry: LocalRegistry) -> None:
    methods = Counter(r.method for r in registry.requests())
    assert set(methods) <= {"GET", "HEAD"}, methods


def check_cache(cache: Path | ObjectStore) -> Walk:
    """Only whole, right blobs in the cache, a directory or a bucket; return the walk."""
    walk = check_blob_dir(cache) if isinstance(cache, Path) else check_blob_objects(cache)
    assert not walk.violations, [str(v) for v in walk.violations]
    return walk


#: Seeds whose first connections include faults that fire (an upward reset fires only past
#: its byte count, which a small request may never reach).
@pytest.mark.parametrize(
    ("cached", "fault_seed"),
    [("dir", 3), ("s3", 1), ("none", 3)],
    ids=["cache", "s3-cache", "no-cache"],
)
async def test_proxy_under_upstream_faults_never_serves_or_keeps_wrong_bytes(
    registry: LocalRegistry,
    start_proxy: Callable[..., ProxyProcess],
    request: pytest.FixtureRequest,
    tmp_path: Path,
    cached: str,
    fault_seed: int,
) -> None:
    images = corpus()
    await seed(registry, "app", images)
    registry.clear_log()
    items = wanted(images)
    args: list[str] = []
    env: dict[str, str] = {}
    cache: Path | ObjectStore | None = None
    if cached == "dir":
        cache = tmp_path / "cache"
        args = ["--cache", str(cache)]
    elif cached == "s3":
        s3: LocalS3 = request.getfixturevalue("s3")
        url = s3.url(s3.bucket(), "cache")
        args, env = ["--cache", url], s3.environment()
        cache = open_store(url, s3.options)
    async with FaultInjector(registry.port, seed=fault_seed, fault_rate=0.5).running() as faulty:
        proxy = await asyncio.to_thread(start_proxy, "--registry-host", faulty.host, *args, env=env)
        tally = await pull(proxy.port, items, clients=6, rounds=1)
        assert not tally.wrong, tally.wrong
        assert tally.outcomes["right"] > 0, tally.outcomes
        assert sum(faulty.counts.values()) > 0, (faulty.connections, tally.outcomes)
        if cache is not None:
            check_cache(cache)

        # Whatever the faults left out, a client retrying gets it right in the end.
        faulty.enabled = False
        await pull_until_right(proxy.port, items)
    no_writes_upstream(registry)
    if cache is None:
        return
    walk = check_cache(cache)
    assert walk.blobs >= len(items)

    # The upstream is gone (the injector closed, the registry stopped): the cache serves.
    registry.stop()
    tally = await pull(proxy.port, items, clients=4, rounds=1)
    assert not tally.wrong, tally.wrong
    assert tally.outcomes == Counter({"right": 4 * len(items)}), tally.outcomes


#: Seed 1 flips bodies read from the bucket (served whole before: 2 of 180 answers wrong);
#: seed 4 flips uploads (moto kept a damaged blob under its digest before the proxy sent
#: `x-amz-checksum-sha256`; `OCIMIRROR_PROXY_CACHE_CHECKSUM=0` still shows it).
@pytest.mark.parametrize("fault_seed", [1, 4], ids=["flips-down", "flips-up"])
async def test_proxy_with_a_faulty_cache_bucket_never_serves_or_keeps_wrong_bytes(
    registry: LocalRegistry, start_proxy: Callable[..., ProxyProcess], s3: LocalS3, fault_seed: int
) -> None:
    """The injector between the proxy and its cache bucket (through `ChecksumS3`, S3's own
    check of an upload's `x-amz-checksum-sha256`, which moto lacks), the upstream sound:
    no client gets complete wrong bytes, the bucket keeps only whole, right blobs, and once
    the faults stop every item comes back right."""
    images = corpus()
    await seed(registry, "app", images)
    registry.clear_log()
    items = wanted(images)
    url = s3.url(s3.bucket(), "cache")
    async with (
        ChecksumS3(s3).running() as checked,
        FaultInjector(checked.port, seed=fault_seed, fault_rate=0.5).running() as faulty,
    ):
        env = {**s3.environment(), "AWS_ENDPOINT": f"http://{faulty.host}"}
        proxy = await asyncio.to_thread(
            start_proxy, "--registry-host", registry.host, "--cache", url, env=env
        )
        tally = await pull(proxy.port, items, clients=6, rounds=2)
        print(
            f"\nfaulty bucket: {dict(tally.outcomes)}; faults {dict(faulty.counts)};"
            f" uploads refused {checked.refused}"
        )
        assert not tally.wrong, tally.wrong
        assert tally.outcomes["right"] > 0, tally.outcomes
        assert sum(faulty.counts.values()) > 0
        check_cache(open_store(url, s3.options))
        faulty.enabled = False
        await pull_until_right(proxy.port, items)
    walk = check_cache(open_store(url, s3.options))
    assert walk.blobs >= len(items)
    no_writes_upstream(registry)


def test_check_blob_objects_finds_wrong_partial_and_orphan_objects() -> None:
    """The bucket invariant can fail: a right blob passes; a blob whose bytes are another's,
    an object under `blobs/` not named by a digest (a temporary or partial put), and a media
    type without its blob are each named."""
    store = MemoryStore()
    right, other = b"right bytes", b"other bytes"
    good = "sha256:" + hashlib.sha256(right).hexdigest()
    bad = "sha256:" + hashlib.sha256(other).hexdigest()
    obstore.put(store, ObjectBlobs.key(good), right)
    obstore.put(store, ObjectBlobs.key(good, "manifests"), b"application/json")
    assert check_blob_objects(store) == Walk(manifests=1, blobs=1)
    obstore.put(store, ObjectBlobs.key(bad), right[:5])
    obstore.put(store, ObjectBlobs.key(good) + ".part", right)
    obstore.put(store, ObjectBlobs.key(bad, "manifests").replace("sha256", "sha512"), b"x")
    walk = check_blob_objects(store)
    assert sorted(v.tag for v in walk.violations) == sorted(
        [
            ObjectBlobs.key(bad),
            ObjectBlobs.key(good) + ".part",
            ObjectBlobs.key(bad, "manifests").replace("sha256", "sha512"),
        ]
    ), [str(v) for v in walk.violations]


def peak_rss(pid: int) -> int:
    """The process's peak resident set (VmHWM), in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * KiB
    raise AssertionError(f"no VmHWM for process {pid}")


@pytest.mark.parametrize(
    "cached",
    [True, pytest.param(False, marks=pytest.mark.soak)],
    ids=["cache", "no-cache"],
)
async def test_proxy_memory_under_200_clients_and_a_faulty_upstream(
    registry: LocalRegistry,
    start_proxy: Callable[..., ProxyProcess],
    tmp_path: Path,
    cached: bool,
) -> None:
    images = corpus()
    await seed(registry, "app", images)
    registry.clear_log()
    items = wanted(images)
    env = {"OCIMIRROR_PROXY_CACHE": str(tmp_path / "cache")} if cached else {}
    seconds = 60.0 if SOAK else 5.0
    async with FaultInjector(registry.port, seed=5, fault_rate=0.5).running() as faulty:
        proxy = await asyncio.to_thread(start_proxy, "--registry-host", faulty.host, env=env)
        tally = Tally()
        deadline = time.monotonic() + seconds

        async def client(n: int) -> None:
            timeout = aiohttp.ClientTimeout(total=60)
            async with aiohttp.ClientSession(timeout=timeout) as session:
                i = n
                while time.monotonic() < deadline:
                    kind, digest = items[i % len(items)]
                    await fetch(session, proxy.port, kind, digest, tally)
                    i += 1

        await asyncio.gather(*(client(n) for n in range(200)))
        peak = peak_rss(proxy.proc.pid)
    print(
        f"\nproxy ({'cache' if cached else 'no cache'}), 200 clients, {seconds:.0f} s:"
        f" peak RSS {peak / MiB:.0f} MiB; {dict(tally.outcomes)}; faults {dict(faulty.counts)}"
    )
    assert not tally.wrong, tally.wrong[:5]
    assert tally.outcomes["right"] > 0
    assert peak < RSS_BOUND, f"peak RSS {peak / MiB:.0f} MiB"
    no_writes_upstream(registry)


@pytest.mark.parametrize("kind", ["blobs", "manifests"])
async def test_a_body_flipped_upstream_is_cut_never_served_whole(
    registry: LocalRegistry, start_proxy: Callable[..., ProxyProcess], kind: str
) -> None:
    """Without the cache the proxy passed upstream bytes through unchecked: a blob with one
    byte flipped on the way reached the client whole, with its full length (found by the
    memory test's no-cache run). Now a GET by digest is hashed on the way and the last
    chunk held back: every upstream connection here flips a byte of its first body, and
    each such body reaches its client cut."""
    images = corpus()
    await seed(registry, "app", images)
    image = images[0][1]
    digest = image.manifest.blobs[-1].digest if kind == "blobs" else image.digest
    async with FaultInjector(
        registry.port, seed=1, fault_rate=1.0, modes=["flip_down"], max_after=64
    ).running() as faulty:
        proxy = await asyncio.to_thread(start_proxy, "--registry-host", faulty.host)
        tally = await pull(proxy.port, [(kind, digest)], clients=3, rounds=2)
        flipped = faulty.counts["flip_down"]
    assert flipped >= 1
    assert not tally.wrong, tally.wrong
    assert tally.outcomes["cut"] == flipped, tally.outcomes  # each damaged body, cut
    assert "does not match its digest" in proxy.text()
