"""The job manager of `ocimirror serve` against real registries and a SQLite state file."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from ocimirror.auth.credentials import Credentials
from ocimirror.client import HostOptions
from ocimirror.metrics import MirrorMetrics
from ocimirror.reference import Reference
from ocimirror.service.jobs import JobManager
from ocimirror.service.models import JobView, MirrorEntry, MirrorRequest
from ocimirror.state.db import StateDB
from ocimirror.store import Store
from ocimirror.stores.pool import StorePool
from ocimirror.testkit.images import make_image, make_index, random_layer
from ocimirror.testkit.registry import LocalRegistry
from ocimirror.testkit.seeding import seed, store_for

RegistryPair = tuple[LocalRegistry, LocalRegistry]


def request(*pairs: tuple[str, str], **options: Any) -> MirrorRequest:
    """A mirror request of (src, dst) pairs, with request-wide options."""
    return MirrorRequest(mirrors=[MirrorEntry(src=s, dst=d) for s, d in pairs], **options)


def manifest_puts(registry: LocalRegistry, repo: str, since: int | None = None) -> int:
    """Count manifest PUTs into `repo` (a tag or a child by digest)."""
    return sum(
        1
        for r in registry.requests(since)
        if r.method == "PUT" and r.kind == "manifest" and r.repository == repo
    )


async def digest_at(registry: LocalRegistry, repo: str, ref: str) -> str | None:
    """The digest `repo:ref` has at a registry, or None."""
    store = store_for(registry)
    try:
        desc = await store.head_manifest(repo, ref)
    finally:
        await store.close()
    return None if desc is None else desc.digest


async def until(check: Callable[[], bool]) -> None:
    """Wait until `check()` holds (10 s at most)."""
    async with asyncio.timeout(10):
        while True:
            if check():
                return
            await asyncio.sleep(0.005)


class GatedPool(StorePool):
    """A StorePool that hands out no store until `gate` is set: copies wait at the start."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = asyncio.Event()

    async def store_for(
        self,
        ref: Reference,
        *,
        options: HostOptions | None = None,
        credentials: Credentials | None = None,
        create: bool = False,
    ) -> Store:
        """Wait for the gate, then return the store."""
        await self.gate.wait()
        return await super().store_for(ref, options=options, credentials=credentials, create=create)


@pytest.fixture
async def state(tmp_path: Path) -> AsyncIterator[StateDB]:
    """A fresh state database in a SQLite file."""
    async with StateDB(f"sqlite:///{tmp_path}/state.db") as db:
        yield db


@pytest.fixture
async def manager(state: StateDB) -> AsyncIterator[JobManager]:
    """A started job manager, closed at teardown."""
    jobs = JobManager(state)
    await jobs.start()
    yield jobs
    await jobs.close()


async def test_copies_an_index_whole_with_digests_unchanged(
    registry_pair: RegistryPair, manager: JobManager, state: StateDB
) -> None:
    src, dst = registry_pair
    index = make_index(("linux/amd64", "linux/arm64", "linux/arm/v7"), layer_size=2000)
    image = make_image(layer_size=3000, seed="single")
    await seed(src, "lib/multi", [("1.0", index)])
    await seed(src, "lib/single", [("2.0", image)])
    view, joined = await manager.submit(
        request(
            (f"{src.host}/lib/multi:1.0", f"{dst.host}/mirror/multi:1.0"),
            (f"{src.host}/lib/single:2.0", f"{dst.host}/mirror/single"),  # tag inherited
        )
    )
    assert not joined
    assert view.state in ("queued", "running")
    done = await manager.wait(view.id)
    assert done.state == "succeeded"
    assert done.errors == []
    assert [e.status for e in done.entries] == ["copied", "copied"]
    assert done.entries[0].name == f"({src.host}/lib/multi:1.0 to {dst.host}/mirror/multi:1.0)"
    assert done.entries[0].digests == {f"{dst.host}/mirror/multi:1.0": index.digest}
    assert done.entries[1].digests == {f"{dst.host}/mirror/single:2.0": image.digest}
    # Digests unchanged at the destination, every platform there by digest.
    assert await digest_at(dst, "mirror/multi", "1.0") == index.digest
    assert await digest_at(dst, "mirror/single", "2.0") == image.digest
    for child in index.children:
        assert await digest_at(dst, "mirror/multi", child.digest) == child.digest
    # Persisted: a manager of a new process reads the same outcome.
    info = await state.get_job(view.id)
    assert info is not None
    assert info.state == "done"
    assert info.request["mirrors"][0]["src"] == f"{src.host}/lib/multi:1.0"
    stored = await JobManager(state).get(view.id)
    assert stored is not None
    assert stored.state == "succeeded"
    assert stored.entries == done.entries


async def test_partial_failure_names_the_entry_and_copies_the_rest(
    registry_pair: RegistryPair, manager: JobManager
) -> None:
    src, dst = registry_pair
    await seed(src, "lib/app", [("1", make_image(seed=1)), ("2", make_image(seed=2))])
    req = request(
        (f"{src.host}/lib/app:1", f"{dst.host}/app:1"),
        (f"{src.host}/lib/missing:1", f"{dst.host}/missing:1"),
        (f"{src.host}/lib/app:2", f"{dst.host}/app:2"),
        (f"{src.host}/lib/app:nope", f"{dst.host}/app:nope"),
        parallelism=2,
    )
    response = await manager.run_sync(req)
    assert not response.ok
    assert response.errors is not None
    assert [(e.index, e.name) for e in response.errors] == [
        (1, f"({src.host}/lib/missing:1 to {dst.host}/missing:1)"),
        (3, f"({src.host}/lib/app:nope to {dst.host}/app:nope)"),
    ]
    for e in response.errors:
        assert "\n" not in e.error
        assert e.error
    assert "unknown" in response.errors[0].error.lower()
    assert dst.tags("app") == ["1", "2"]
    assert dst.tags("missing") == []
    assert response.body().startswith(b'{"ok":false,"errors":[{"index":1,')
    (job,) = await manager.list(10)
    assert job.state == "failed"
    assert [e.status for e in job.entries] == ["copied", "failed", "copied", "failed"]
    assert [e.index for e in job.errors] == [1, 3]
    # All good the second time round: {"ok":true}, nothing copied again.
    again = await manager.run_sync(request((f"{src.host}/lib/app:1", f"{dst.host}/app:1")))
    assert again.body() == b'{"ok":true}\n'


async def test_all_tags_with_a_filter(registry_pair: RegistryPair, manager: JobManager) -> None:
    src, dst = registry_pair
    shared = [random_layer(5000, seed="base")]
    tags = ["1.0.0", "1.1.0", "1.2.0", "2.0.0", "latest"]
    await seed(
        src,
        "lib/app",
        [(t, make_image(layer_size=1000, seed=t, shared_layers=shared)) for t in tags],
    )
    req = MirrorRequest(
        mirrors=[
            MirrorEntry(src=f"{src.host}/lib/app", dst=f"{dst.host}/semver/app"),
            MirrorEntry(src=f"{src.host}/lib/app", dst=f"{dst.host}/latest/app", latest=1),
        ],
        all_tags=True,
        semver=">=1.1.0 <2",
    )
    view, _ = await manager.submit(req)
    done = await manager.wait(view.id)
    assert done.state == "succeeded", done.errors
    assert dst.tags("semver/app") == ["1.1.0", "1.2.0"]
    assert dst.tags("latest/app") == ["1.2.0"]  # an entry's own option joins the request's
    first = done.entries[0]
    assert (first.images, first.copied) == (2, 2)
    assert set(first.digests) == {f"{dst.host}/semver/app:1.1.0", f"{dst.host}/semver/app:1.2.0"}
    # A tag filter without all_tags is the entry's error, not a silent full copy.
    bad = await manager.run_sync(
        MirrorRequest(
            mirrors=[MirrorEntry(src=f"{src.host}/lib/app:1.0.0", dst=f"{dst.host}/x/app")],
            include=["1.*"],
        )
    )
    assert bad.errors is not None
    assert "need all_tags" in bad.errors[0].error


async def test_bad_references_are_entry_errors(
    registry_pair: RegistryPair, manager: JobManager
) -> None:
    src, dst = registry_pair
    await seed(src, "lib/app", [("1", make_image())])
    response = await manager.run_sync(
        request(
            ("Not A Reference", f"{dst.host}/app:1"),
            (f"{src.host}/lib/app:1", f"{dst.host}/app:1"),
            (f"{src.host}/lib/app:1", "oci:/tmp/somewhere"),
            (f"{src.host}/lib/app:1", f"{dst.host}/UPPER:1"),
        )
    )
    assert response.errors is not None
    assert [e.index for e in response.errors] == [0, 2, 3]
    assert "Not A Reference" in response.errors[0].error
    assert "registry references" in response.errors[1].error
    assert "lowercase" in response.errors[2].error
    assert dst.tags("app") == ["1"]


async def test_identical_concurrent_requests_join_one_job_and_copy_once(
    registry_pair: RegistryPair, state: StateDB
) -> None:
    src, dst = registry_pair
    index = make_index(("linux/amd64", "linux/arm64"), layer_size=4000)
    await seed(src, "lib/app", [("v1", index)])
    pool = GatedPool()
    jobs = JobManager(state, pool=pool)
    try:
        pair = (f"{src.host}/lib/app:v1", f"{dst.host}/app:v1")
        mark = dst.mark()
        submitted = await asyncio.gather(*(jobs.submit(request(pair)) for _ in range(5)))
        ids = {view.id for view, _ in submitted}
        assert len(ids) == 1
        assert sorted(joined for _, joined in submitted) == [False, True, True, True, True]
        assert len(jobs.running()) == 1
        # The same request through POST / joins it too, and answers with its outcome.
        sync = asyncio.create_task(jobs.run_sync(request(pair)))
        await asyncio.sleep(0.05)
        pool.gate.set()
        assert (await sync).ok
        done = await jobs.wait(ids.pop())
        assert done.state == "succeeded"
        # One PUT per manifest: the two children and the index, once.
        assert manifest_puts(dst, "app", since=mark) == 3
        assert len(await jobs.list(10)) == 1
    finally:
        await jobs.close()
        await pool.close()


async def test_the_same_pair_in_concurrent_jobs_is_copied_once(
    registry_pair: RegistryPair, state: StateDB
) -> None:
    src, dst = registry_pair
    shared = make_image(layers=2, layer_size=20_000, seed="shared")
    await seed(src, "lib/shared", [("1", shared)])
    await seed(src, "lib/own", [(str(i), make_image(seed=i)) for i in range(5)])
    pool = GatedPool()
    jobs = JobManager(state, pool=pool)
    try:
        mark_src, mark_dst = src.mark(), dst.mark()
        pair = (f"{src.host}/lib/shared:1", f"{dst.host}/shared:1")
        # Five different jobs, each with the shared pair (spelt alike or not) and its own.
        views = await asyncio.gather(
            *(
                jobs.submit(
                    request(
                        (f"{src.host}/lib/own:{i}", f"{dst.host}/own:{i}"),
                        pair if i % 2 else (f"docker://{src.host}/lib/shared:1", pair[1]),
                    )
                )
                for i in range(5)
            )
        )
        assert len({v.id for v, _ in views}) == 5
        assert not any(joined for _, joined in views)
        pool.gate.set()
        done = [await jobs.wait(v.id) for v, _ in views]
        assert [j.state for j in done] == ["succeeded"] * 5
        # Every job reports the one copy's outcome: copied, not "unchanged" by a later one.
        shared_results = [j.entries[1] for j in done]
        assert {r.status for r in shared_results} == {"copied"}
        assert {r.digests[f"{dst.host}/shared:1"] for r in shared_results} == {shared.digest}
        assert manifest_puts(dst, "shared", since=mark_dst) == 1
        layer_gets = [
            r
            for r in src.requests(since=mark_src)
            if r.method == "GET" and r.kind == "blob" and r.repository == "lib/shared"
        ]
        assert len(layer_gets) == len(shared.all_blobs())
        assert dst.tags("own") == ["0", "1", "2", "3", "4"]
    finally:
        await jobs.close()
        await pool.close()


async def test_entries_into_one_repository_share_their_blobs(
    registry_pair: RegistryPair, manager: JobManager
) -> None:
    src, dst = registry_pair
    base = [random_layer(200_000, seed="base")]
    tags = [str(i) for i in range(6)]
    await seed(src, "lib/app", [(t, make_image(seed=t, shared_layers=base)) for t in tags])
    response = await manager.run_sync(
        request(*((f"{src.host}/lib/app:{t}", f"{dst.host}/app:{t}") for t in tags), parallelism=6)
    )
    assert response.ok, response.errors
    assert dst.tags("app") == tags


async def test_platforms_filter_an_index(registry_pair: RegistryPair, manager: JobManager) -> None:
    src, dst = registry_pair
    index = make_index(("linux/amd64", "linux/arm64"), layer_size=1000)
    await seed(src, "lib/app", [("1", index)])
    view, _ = await manager.submit(
        request((f"{src.host}/lib/app:1", f"{dst.host}/app:1"), platforms=["linux/arm64"])
    )
    done = await manager.wait(view.id)
    assert done.state == "succeeded"
    (digest,) = done.entries[0].digests.values()
    assert digest != index.digest
    assert await digest_at(dst, "app", "1") == digest
    bad = await manager.run_sync(
        request((f"{src.host}/lib/app:1", f"{dst.host}/app:2"), platforms=["linux"])
    )
    assert bad.errors is not None
    assert "os/arch" in bad.errors[0].error


async def test_cancel_mid_copy_leaves_no_tag(
    registry_pair: RegistryPair, manager: JobManager, state: StateDB
) -> None:
    src, dst = registry_pair
    big = make_image(layers=4, layer_size=32 * 1024 * 1024, seed="big")
    await seed(src, "lib/big", [("1", big)])
    view, _ = await manager.submit(request((f"{src.host}/lib/big:1", f"{dst.host}/big:1")))

    def copying() -> bool:
        live = manager.view(view.id)
        return live is not None and live.progress.bytes > 0

    await until(copying)
    live = manager.view(view.id)
    assert live is not None
    assert live.state == "running"
    assert live.entries[0].status == "running"
    assert await manager.cancel(view.id)
    assert not await manager.cancel(view.id)  # already over
    done = await manager.get(view.id)
    assert done is not None
    assert done.state == "cancelled"
    assert done.entries[0].status == "cancelled"
    assert [e.index for e in done.errors] == [0]
    assert manager.running() == []
    info = await state.get_job(view.id)
    assert info is not None
    assert info.state == "cancelled"
    assert info.finished_at is not None
    await asyncio.sleep(0.2)  # nothing left running writes a tag later
    assert dst.tags("big") == []
    assert await digest_at(dst, "big", big.digest) is None


async def test_a_joined_job_survives_when_the_other_is_cancelled(
    registry_pair: RegistryPair, state: StateDB
) -> None:
    src, dst = registry_pair
    await seed(src, "lib/app", [("1", make_image(seed=1)), ("2", make_image(seed=2))])
    pool = GatedPool()
    jobs = JobManager(state, pool=pool)
    try:
        pair = (f"{src.host}/lib/app:1", f"{dst.host}/app:1")
        first, _ = await jobs.submit(request(pair))
        second, _ = await jobs.submit(request(pair, (f"{src.host}/lib/app:2", f"{dst.host}/app:2")))
        await until(lambda: len(jobs._flights) == 2)
        assert await jobs.cancel(first.id)
        pool.gate.set()
        done = await jobs.wait(second.id)
        assert done.state == "succeeded"
        assert [e.status for e in done.entries] == ["copied", "copied"]
        cancelled = await jobs.get(first.id)
        assert cancelled is not None
        assert cancelled.state == "cancelled"
        assert dst.tags("app") == ["1", "2"]
    finally:
        await jobs.close()
        await pool.close()


async def test_restart_marks_unfinished_jobs_interrupted(
    registry_pair: RegistryPair, state: StateDB
) -> None:
    src, dst = registry_pair
    req = request((f"{src.host}/lib/app:1", f"{dst.host}/app:1"))
    # A previous process left one job running and one queued.
    running = await state.create_job(req.model_dump(mode="json"))
    await state.update_job(running, state="running")
    queued = await state.create_job(req.model_dump(mode="json"))
    finished = await state.create_job(req.model_dump(mode="json"))
    await state.update_job(finished, state="done")
    jobs = JobManager(state)
    try:
        assert await jobs.start() == 2
        for job_id in (running, queued):
            view = await jobs.get(job_id)
            assert view is not None
            assert view.state == "interrupted"
            assert view.finished_at is not None
            assert [e.status for e in view.entries] == ["cancelled"]
            assert view.errors[0].error.startswith("interrupted")
        view = await jobs.get(finished)
        assert view is not None
        assert view.state == "succeeded"
        assert await jobs.start() == 0
        assert not await jobs.cancel(running)
    finally:
        await jobs.close()


async def test_close_interrupts_running_jobs(registry_pair: RegistryPair, state: StateDB) -> None:
    src, dst = registry_pair
    await seed(src, "lib/app", [("1", make_image())])
    pool = GatedPool()
    jobs = JobManager(state, pool=pool)
    view, _ = await jobs.submit(request((f"{src.host}/lib/app:1", f"{dst.host}/app:1")))
    waiter = asyncio.create_task(jobs.wait(view.id))
    await until(lambda: bool(jobs._flights))
    await jobs.close()
    await pool.close()
    assert (await waiter).state == "interrupted"
    info = await state.get_job(view.id)
    assert info is not None
    assert info.state == "interrupted"
    assert dst.tags("app") == []
    with pytest.raises(RuntimeError):
        await jobs.submit(request((f"{src.host}/lib/app:1", f"{dst.host}/app:1")))


async def test_progress_is_live_and_persisted_per_entry(
    registry_pair: RegistryPair,
    manager: JobManager,
    state: StateDB,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    src, dst = registry_pair
    images = {str(i): make_image(layers=2, layer_size=50_000, seed=i) for i in range(3)}
    await seed(src, "lib/app", images.items())
    req = request(
        *((f"{src.host}/lib/app:{t}", f"{dst.host}/app:{t}") for t in images),
        (f"{src.host}/lib/gone:1", f"{dst.host}/gone:1"),
        parallelism=1,
    )
    written: list[int] = []  # progress.done of each write
    update_job = state.update_job

    async def counted(job_id: str, **kwargs: Any) -> None:
        written.append(kwargs["progress"]["done"])
        await update_job(job_id, **kwargs)

    monkeypatch.setattr(state, "update_job", counted)
    view, _ = await manager.submit(req)
    assert view.progress.total == 4
    assert view.progress.done == 0
    seen: list[JobView] = []

    def record() -> bool:
        live = manager.view(view.id)
        if live is not None and (not seen or live.progress.done != seen[-1].progress.done):
            seen.append(live)
        # A finished job is let go (answered from the database): None means it ended.
        return live is None or live.state not in ("queued", "running")

    await until(record)
    done = await manager.wait(view.id)
    assert done.state == "failed"
    assert [v.progress.done for v in seen] == sorted(v.progress.done for v in seen)
    blob_bytes = {t: sum(b.size for b in im.blobs) for t, im in images.items()}
    assert [e.bytes for e in done.entries] == [*blob_bytes.values(), 0]
    assert [e.images for e in done.entries] == [1, 1, 1, 1]  # the missing one was tried
    assert done.progress.model_dump() == {
        "done": 4,
        "total": 4,
        "bytes": sum(blob_bytes.values()),
    }
    info = await state.get_job(view.id)
    assert info is not None
    assert info.progress == done.progress.model_dump()
    assert info.result is not None
    assert [e["status"] for e in info.result["entries"]] == ["copied"] * 3 + ["failed"]
    assert info.error == "1 of 4 entries failed"
    assert info.started_at is not None
    assert info.finished_at is not None
    # Written when started, as entries finish (close ones may share a write), and at the
    # end: never per byte.
    assert written[0] == 0
    assert written == sorted(written)
    assert written[-1] == 4
    assert 3 <= len(written) <= 1 + 4 + 1


async def test_metrics_count_the_images_of_jobs(
    registry_pair: RegistryPair, state: StateDB
) -> None:
    src, dst = registry_pair
    await seed(src, "lib/app", [("1", make_image(layer_size=4000))])
    metrics = MirrorMetrics()
    jobs = JobManager(state, metrics=metrics)
    try:
        response = await jobs.run_sync(
            request(
                (f"{src.host}/lib/app:1", f"{dst.host}/app:1"),
                (f"{src.host}/lib/app:2", f"{dst.host}/app:2"),
            )
        )
        assert not response.ok
    finally:
        await jobs.close()
    text = metrics.render().decode()
    assert 'ocimirror_tasks_total{mirror="(jobs)",result="copied"} 1.0' in text
    assert 'ocimirror_tasks_total{mirror="(jobs)",result="failed"} 1.0' in text
    assert 'ocimirror_blobs_total{how="copied",mirror="(jobs)"} 2.0' in text
