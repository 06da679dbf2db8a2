"""The store scheme table: StorePool opens every store by its reference's scheme."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from ocimirror.auth.credentials import Credentials
from ocimirror.client import HostOptions
from ocimirror.errors import ReferenceError
from ocimirror.reference import Reference
from ocimirror.store import Store
from ocimirror.stores.layout import LayoutStore
from ocimirror.stores.memory import MemoryStore
from ocimirror.stores.pool import StorePool
from ocimirror.stores.registry import RegistryStore
from ocimirror.stores.schemes import (
    Opening,
    Scheme,
    known_schemes,
    register,
    scheme_for,
    unregister,
)


@pytest.fixture
async def pool() -> AsyncIterator[StorePool]:
    """A pool whose stores are closed after the test."""
    p = StorePool()
    yield p
    await p.close()


@pytest.fixture
def openings() -> Iterator[list[tuple[Reference, Opening]]]:
    """Register a `test` scheme opening memory stores; yield what its factory was given."""
    seen: list[tuple[Reference, Opening]] = []

    def open_test(ref: Reference, opening: Opening) -> Store:
        seen.append((ref, opening))
        return MemoryStore(f"test:{ref.path}")

    register(Scheme("test", open_test, place=lambda r: r.path))
    try:
        yield seen
    finally:
        unregister("test")


def _test_ref(path: str, tag: str = "v1") -> Reference:
    return Reference("test", "", "", tag=tag, path=path)


async def test_an_unknown_scheme_is_an_error_naming_it_and_the_known_ones(
    pool: StorePool,
) -> None:
    ref = Reference("s9", "", "", tag="v1", path="bucket/app")
    with pytest.raises(ReferenceError) as err:
        await pool.store_for(ref)
    message = str(err.value)
    assert "unknown store scheme 's9'" in message
    assert "known: az, docker, file, gs, oci, r2, s3" in message
    assert message.startswith("s9:bucket/app:v1:")


async def test_a_registered_scheme_is_opened_by_the_pool_once_per_place(
    pool: StorePool, openings: list[tuple[Reference, Opening]]
) -> None:
    assert "test" in known_schemes()
    a = await pool.store_for(_test_ref("one"), create=True)
    assert isinstance(a, MemoryStore)
    assert a.name == "test:one"
    # Same place, another tag: the same store; another place: a new one.
    assert await pool.store_for(_test_ref("one", "v2")) is a
    b = await pool.store_for(_test_ref("two"))
    assert b is not a
    assert [(r.path, o.create) for r, o in openings] == [("one", True), ("two", False)]


async def test_host_options_and_credentials_reach_only_registry_host_schemes(
    pool: StorePool, openings: list[tuple[Reference, Opening]]
) -> None:
    creds = Credentials("alice", "secret")
    await pool.store_for(_test_ref("x"), options=HostOptions(), credentials=creds)
    assert openings[0][1] == Opening(options=None, credentials=None, create=False)
    assert not scheme_for(_test_ref("x")).registry_host
    registry = Reference.parse("registry.example.com/app:1")
    assert scheme_for(registry).registry_host
    store = await pool.store_for(registry, credentials=creds)
    assert isinstance(store, RegistryStore)
    assert store.client.host == "registry.example.com"


def test_a_scheme_cannot_be_registered_twice(
    openings: list[tuple[Reference, Opening]],
) -> None:
    with pytest.raises(ValueError, match="'test' is already registered"):
        register(Scheme("test", lambda r, o: MemoryStore(), place=lambda r: r.path))


async def test_the_builtin_schemes_tell_what_their_stores_can_do(
    pool: StorePool, tmp_path: Path
) -> None:
    registry = await pool.store_for(
        Reference.parse("registry.example.com/app:1"), credentials=Credentials()
    )
    layout = await pool.store_for(Reference.parse(f"oci:{tmp_path}/bundle:1"), create=True)
    assert isinstance(registry, RegistryStore)
    assert isinstance(layout, LayoutStore)
    assert registry.remote
    assert not layout.remote
    assert not MemoryStore().remote
