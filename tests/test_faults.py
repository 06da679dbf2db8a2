"""ocimirror copy under injected network faults, with the invariants checked after each run.

Ten images (nine small ones sharing layers, one multi-arch index) are copied with
`ocimirror copy --all-tags` from a registry behind a seeded `FaultInjector` that breaks
half its connections (resets either way, short bodies, flipped bytes, stalls, slow
reads), into (a) a registry behind another such injector and (b) an OCI layout. After
each run: every tag at the target names content that is there and hashes right
(`testkit.invariants`), at least 9 of 10 images were copied on the first run, the exit
code and output name each failed image, and a rerun completes without uploading a blob
that was already complete.

The bounded form (two seeds per target) runs in CI; `OCIMIRROR_SOAK=1` runs twenty.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from ocimirror.client import HostOptions
from ocimirror.reference import Reference
from ocimirror.stores.layout import LayoutStore
from ocimirror.testkit.command import ocimirror_async
from ocimirror.testkit.faults import MODES, FaultInjector, http_faults
from ocimirror.testkit.front import Front
from ocimirror.testkit.images import SampleImage, corpus_faults, make_image
from ocimirror.testkit.invariants import assert_sound, complete_blobs
from ocimirror.testkit.registry import LocalRegistry
from ocimirror.testkit.seeding import seed, store_for
from ocimirror.transfer.engine import Side, run_copies

pytestmark = pytest.mark.faults

SOAK = os.environ.get("OCIMIRROR_SOAK", "") not in ("", "0")
SEEDS = list(range(1, 21)) if SOAK else [1, 2]
#: Half of all connections are faulty, on each side.
FAULT_RATE = 0.5
#: Everything the suite injected, per side and mode, printed at the end of a run.
INJECTED: Counter[str] = Counter()


@pytest.fixture(scope="module", autouse=True)
def report_injected() -> Iterator[None]:
    """Print what the module injected, per side and mode (shown with `pytest -s`)."""
    yield
    print("\nfaults injected:", ", ".join(f"{k} {v}" for k, v in sorted(INJECTED.items())))


def corpus() -> list[tuple[str, SampleImage]]:
    """Nine small images sharing two layers, and one multi-arch index: ten tags."""
    return corpus_faults(seed="faults")


async def copy_all(src: str, dst: str) -> tuple[int, dict[str, Any], str]:
    """Run `ocimirror copy --all-tags --json SRC DST`; return exit code, summary, stderr."""
    code, out, err = await ocimirror_async("copy", "--all-tags", "--json", src, dst)
    return code, json.loads(out) if out.strip() else {}, err


def failed_of(summary: dict[str, Any]) -> list[dict[str, Any]]:
    return [r for r in summary.get("images", []) if r.get("status") == "failed"]


def check_first_run(code: int, summary: dict[str, Any], stderr: str) -> None:
    failed = failed_of(summary)
    assert len(summary["images"]) == 10, summary
    assert len(failed) <= 1, f"more than 1 of 10 images failed under faults: {failed}"
    if failed:
        assert code != 0
        for image in failed:  # each failed image is named, with its error
            assert image["error"]
            assert image["source"].rsplit("/", 1)[-1] in stderr
    else:
        assert code == 0, stderr


@pytest.mark.parametrize("fault_seed", SEEDS)
async def test_copy_into_registry_under_faults(registry_factory: Any, fault_seed: int) -> None:
    src: LocalRegistry = registry_factory("src")
    dst: LocalRegistry = registry_factory("dst")
    await seed(src, "app", corpus())
    async with (
        FaultInjector(src.port, seed=fault_seed, fault_rate=FAULT_RATE).running() as faulty_src,
        FaultInjector(dst.port, seed=-fault_seed, fault_rate=FAULT_RATE).running() as faulty_dst,
    ):
        code, summary, stderr = await copy_all(f"{faulty_src.host}/app", f"{faulty_dst.host}/app")
        check_first_run(code, summary, stderr)
        INJECTED.update({f"src {k}": v for k, v in faulty_src.counts.items()})
        INJECTED.update({f"dst {k}": v for k, v in faulty_dst.counts.items()})
        assert sum(faulty_src.counts.values()) + sum(faulty_dst.counts.values()) > 0

        target = store_for(dst)
        try:
            await assert_sound(target, "app")
            # What was complete before the rerun must not be uploaded again.
            wanted = {b.digest for _, image in corpus() for b in image.all_blobs()}
            complete = await complete_blobs(target, "app", wanted)
            mark = dst.mark()
            code, summary, stderr = await copy_all(
                f"{faulty_src.host}/app", f"{faulty_dst.host}/app"
            )
            assert code == 0, stderr
            assert not failed_of(summary)
            uploaded = {
                r.query.split("digest=", 1)[1].split("&", 1)[0].replace("%3A", ":")
                for r in dst.requests(since=mark)
                if r.method == "PUT" and r.kind == "upload" and "digest=" in r.query
            }
            assert not uploaded & complete, "a complete blob was uploaded again"
            await assert_sound(target, "app", tags=10)
        finally:
            await target.close()


@pytest.mark.parametrize("fault_seed", SEEDS)
async def test_copy_into_layout_under_faults(
    registry_factory: Any, tmp_path: Path, fault_seed: int
) -> None:
    src: LocalRegistry = registry_factory("src")
    await seed(src, "app", corpus())
    layout = tmp_path / "layout"
    async with FaultInjector(src.port, seed=fault_seed, fault_rate=FAULT_RATE).running() as faulty:
        code, summary, stderr = await copy_all(f"{faulty.host}/app", f"oci:{layout}")
        check_first_run(code, summary, stderr)
        INJECTED.update({f"src {k}": v for k, v in faulty.counts.items()})

        store = LayoutStore(layout)
        await assert_sound(store, "")
        blobs = layout / "blobs" / "sha256"
        before = {p.name: p.stat().st_mtime_ns for p in blobs.iterdir() if p.is_file()}
        code, summary, stderr = await copy_all(f"{faulty.host}/app", f"oci:{layout}")
        assert code == 0, stderr
        assert not failed_of(summary)
        after = {p.name: p.stat().st_mtime_ns for p in blobs.iterdir() if p.is_file()}
        rewritten = [n for n, t in before.items() if after.get(n) != t]
        assert not rewritten, "a complete blob was written again"
        await assert_sound(store, "", tags=10)


def test_injector_rejects_unknown_modes() -> None:
    with pytest.raises(ValueError, match="unknown fault modes"):
        FaultInjector(1, modes=["explode"])
    assert "flip_down" in MODES


async def test_source_blob_that_never_matches_fails_clearly(
    registry: LocalRegistry, tmp_path: Path
) -> None:
    """Corruption is retried, but within the budget: a source that always serves other
    bytes for a blob fails after a bounded number of tries, naming the mismatch."""
    image = make_image(layers=2, layer_size=4096, seed="always-wrong")
    await seed(registry, "app", [("1", image)])
    bad = image.manifest.blobs[-1].digest

    async def corrupt(front: Front, request: web.Request, body: bytes) -> web.Response | None:
        if request.method == "GET" and request.path.endswith(bad):
            resp = await front.forward(request, body)
            assert isinstance(resp.body, bytes)
            damaged = bytearray(resp.body)
            damaged[-1] ^= 0x01
            return web.Response(status=resp.status, body=bytes(damaged), headers=resp.headers)
        return None

    async with Front(registry, corrupt).running() as front:
        summary = await run_copies(
            [(Reference.parse(f"{front.host}/app:1"), Reference.parse(f"oci:{tmp_path}:1"))]
        )
        gets = [s for s in front.of("GET", "blob") if s.path.endswith(bad)]
    [result] = summary.results
    assert result.status == "failed"
    assert f"digest mismatch for blob {bad}" in result.error
    assert 1 < len(gets) <= 5  # tried again, and not forever


async def test_copy_through_http_error_storms(registry: LocalRegistry, tmp_path: Path) -> None:
    """500/502/503 storms and 429 with Retry-After: 1 (a storm of two answers begins at a
    tenth of the answers to each request line): every image is copied, and the target holds
    everything its tags name. The storms are per request line, so each request and its
    retries meet the same answers in every run (arrival-order storms met a retried
    manifest GET with five errors in a row once in a CI run: two storms and a 429)."""
    await seed(registry, "app", corpus())
    counts: Counter[str] = Counter()
    storms = http_faults(seed=7, rate=0.1, storm=2, retry_after="1", counts=counts, per_path=True)
    async with Front(registry, storms).running() as front:
        summary = await run_copies(
            [(Reference.parse(f"{front.host}/app"), Reference.parse(f"oci:{tmp_path}"))],
            all_tags=True,
        )
    assert [r.error for r in summary.results if r.status == "failed"] == []
    assert len(summary.results) == 10
    assert sum(counts.values()) > 0
    assert counts.keys() <= {"http_500", "http_502", "http_503", "http_429"}
    INJECTED.update(counts)
    await assert_sound(LayoutStore(tmp_path), "", tags=10)


@pytest.mark.parametrize("adaptive", [True, False], ids=["adaptive", "fixed"])
async def test_copy_through_a_429_retry_after_0_storm(
    registry: LocalRegistry, tmp_path: Path, adaptive: bool
) -> None:
    """A registry answering every request `429 Retry-After: 0` for one second (seeded
    start): retrying at once met the same storm every time, and the blob the nine small
    images share failed all nine of them (docs/reliability.md). Retries now back off
    (stamina's growing waits; the host's limiter holds its starts on a throttle that
    names no wait), so they get past the storm; and the shared blob is one fetch."""
    await seed(registry, "app", corpus())
    counts: Counter[str] = Counter()
    storm = http_faults(
        seed=2,
        rate=0.03,
        statuses=(429,),
        retry_after="0",
        storm_seconds=1.0,
        calm_seconds=600.0,  # one storm per run
        counts=counts,
    )
    async with Front(registry, storm).running() as front:
        summary = await run_copies(
            [(Reference.parse(f"{front.host}/app"), Reference.parse(f"oci:{tmp_path}"))],
            all_tags=True,
            source=Side(options=HostOptions(adaptive=adaptive)),
        )
    assert counts["http_429"] >= 3, counts  # the storm met requests in flight
    INJECTED.update(counts)
    assert [r.error for r in summary.results if r.status == "failed"] == []
    gets = Counter(s.path for s in front.of("GET", "blob"))
    small = [image.manifest for _, image in corpus()[:9]]
    shared = set.intersection(*({b.digest for b in m.blobs} for m in small))
    assert len(shared) == 2
    for digest in shared:  # one transfer (and its retries), not one per image
        [n] = [n for path, n in gets.items() if path.endswith(digest)]
        assert n <= 4
    await assert_sound(LayoutStore(tmp_path), "", tags=10)
