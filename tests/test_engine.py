"""The engine's one path (plan → execute → copy_one) and the one place options are checked.

The engine is pure logic over stores, so these tests open in-memory stores through a
`test` scheme registered for them; the registry contract of the same path is in
test_copy_registry.py, test_jobs.py and test_sync.py.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from ocimirror.reference import Reference
from ocimirror.store import Store
from ocimirror.stores.memory import MemoryStore
from ocimirror.stores.pool import StorePool
from ocimirror.stores.schemes import Opening, Scheme, register, unregister
from ocimirror.testkit import images
from ocimirror.transfer.copy import Copier, ImageResult
from ocimirror.transfer.engine import Stores, copy_one, execute, plan
from ocimirror.transfer.options import (
    Selection,
    tag_filter,
)
from ocimirror.transfer.plan import CopyTask


@pytest.fixture
async def places() -> AsyncIterator[dict[str, MemoryStore]]:
    """Register a `test` scheme of memory stores, one per path; yield them by path."""
    made: dict[str, MemoryStore] = {}

    def open_test(ref: Reference, opening: Opening) -> Store:
        return made.setdefault(ref.path, MemoryStore(f"test:{ref.path}"))

    register(Scheme("test", open_test, place=lambda r: r.path))
    try:
        yield made
    finally:
        unregister("test")


@pytest.fixture
async def stores(places: dict[str, MemoryStore]) -> AsyncIterator[Stores]:
    """Stores over a fresh pool, closed after the test."""
    pool = StorePool()
    yield Stores(pool)
    await pool.close()


def _ref(path: str, tag: str | None = "v1") -> Reference:
    return Reference("test", "", "", tag=tag, path=path)


async def _seed(stores: Stores, path: str, *tags: str, seed: int = 1) -> images.SampleImage:
    img = images.make_image(seed=seed)
    store = await stores.open(_ref(path), destination=True)
    for tag in tags:
        await images.push(store, "", img, tag)
    return img


async def test_copy_one_reads_the_digest_its_planner_saw_even_if_the_tag_moved(
    stores: Stores,
) -> None:
    first = await _seed(stores, "src", "v1", seed=1)
    await _seed(stores, "src", "v1", seed=2)  # the tag moved after planning
    task = CopyTask(_ref("src"), _ref("dst"), source_digest=first.manifest.digest)
    result = await copy_one(task, stores=stores, copier=Copier())
    assert result.status == "copied", result.error
    assert result.source == "test:src:v1"  # shown as the tag it was planned from
    assert result.destination_digest == first.manifest.digest
    dst = await stores.open(_ref("dst"), destination=True)
    assert (await dst.get_manifest("", "v1")).digest == first.manifest.digest


async def test_copy_one_returns_a_store_that_cannot_open_as_a_failed_result(
    stores: Stores,
) -> None:
    task = CopyTask(Reference("nope", "", "", tag="v1", path="x"), _ref("dst"))
    result = await copy_one(task, stores=stores, copier=Copier())
    assert result.status == "failed"
    assert "unknown store scheme 'nope'" in result.error
    assert result.public_error  # what an API may show is filled in too


async def test_plan_makes_a_pair_it_cannot_plan_a_failure_and_plans_the_others(
    stores: Stores,
) -> None:
    await _seed(stores, "src", "1.0", "2.0", "edge")
    pairs = [
        (_ref("src", None), _ref("dst", None)),
        (_ref("src", "1.0"), _ref("dst", None)),  # a tagged source is refused with all_tags
    ]
    selection = Selection(all_tags=True, tags=tag_filter(all_tags=True, semver=">=1"))
    planned = await plan(pairs, stores=stores, selection=selection)
    assert {str(t.destination) for t in planned.tasks} == {"test:dst:1.0", "test:dst:2.0"}
    assert len(planned.failed) == 1
    assert planned.failed[0].source == "test:src:1.0"
    assert "--all-tags takes a repository" in planned.failed[0].error


class _Watch:
    def __init__(self) -> None:
        self.events: list[tuple[str, str, str | None]] = []

    def started(self, task: CopyTask) -> None:
        self.events.append(("started", str(task.destination), None))

    def finished(self, task: CopyTask, result: ImageResult | None) -> None:
        self.events.append(
            ("finished", str(task.destination), None if result is None else result.status)
        )


async def test_execute_copies_every_task_and_tells_a_watcher_of_each(stores: Stores) -> None:
    await _seed(stores, "src", "a", "b")
    tasks = [CopyTask(_ref("src", t), _ref("dst", t)) for t in ("a", "b")]
    watch = _Watch()
    results = await execute(tasks, stores=stores, copier=Copier(), watcher=watch)
    assert [r.status for r in results] == ["copied", "copied"]
    for dst in ("test:dst:a", "test:dst:b"):
        assert watch.events.index(("started", dst, None)) < watch.events.index(
            ("finished", dst, "copied")
        )
    again = await execute(tasks, stores=stores, copier=Copier())
    assert [r.status for r in again] == ["unchanged", "unchanged"]
