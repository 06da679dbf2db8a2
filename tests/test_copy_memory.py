"""The copy engine's logic over in-memory stores: order, dedup, filtering, failures."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterable

import pytest

from ocimirror.errors import DigestMismatch
from ocimirror.manifest import Descriptor, Manifest
from ocimirror.stores.memory import MemoryStore
from ocimirror.testkit import images
from ocimirror.transfer.copy import Copier, CopyOptions, Endpoint


class RecordingStore(MemoryStore):
    """A MemoryStore that records the order of writes and counts blob puts."""

    def __init__(self, name: str = "dst") -> None:
        super().__init__(name)
        self.events: list[str] = []
        self.blob_puts: dict[str, int] = {}
        self.fail_manifest_put: bool = False

    async def put_blob(self, repo: str, desc: Descriptor, chunks: AsyncIterable[bytes]) -> None:
        await asyncio.sleep(0.01)  # let concurrent copies overlap
        await super().put_blob(repo, desc, chunks)
        self.blob_puts[desc.digest] = self.blob_puts.get(desc.digest, 0) + 1
        self.events.append(f"blob {desc.digest}")

    async def put_manifest(self, repo: str, ref: str, manifest: Manifest) -> None:
        if self.fail_manifest_put and ":" not in ref:
            raise RuntimeError("registry said no")
        await super().put_manifest(repo, ref, manifest)
        self.events.append(f"manifest {ref}")


async def _source(*samples: tuple[str, images.SampleImage]) -> MemoryStore:
    src = MemoryStore("src")
    for tag, img in samples:
        await images.push(src, "app", img, tag)
    return src


async def test_index_copied_whole_with_children_before_tag() -> None:
    idx = images.make_index(seed=1)
    src, dst = await _source(("v1", idx)), RecordingStore()
    r = await Copier().copy(Endpoint(src, "app", "v1"), Endpoint(dst, "mirror", "v1"))
    assert r.status == "copied", r.error
    assert r.destination_digest == r.source_digest == idx.manifest.digest
    assert dst.events[-1] == "manifest v1"
    child_puts = [i for i, e in enumerate(dst.events) if e.startswith("manifest sha256:")]
    assert len(child_puts) == 4
    # every blob a child names is written before that child
    for child in idx.children:
        at = dst.events.index(f"manifest {child.manifest.digest}")
        for blob in child.blobs:
            assert dst.events.index(f"blob {blob.digest}") < at
    assert (await dst.get_manifest("mirror", "v1")).raw == idx.manifest.raw


async def test_unchanged_costs_no_get() -> None:
    img = images.make_image(seed=2)
    src, dst = await _source(("v1", img)), RecordingStore()
    await Copier().copy(Endpoint(src, "app", "v1"), Endpoint(dst, "app", "v1"))
    gets = 0
    orig = src.get_manifest

    async def counting(repo: str, ref: str) -> Manifest:
        nonlocal gets
        gets += 1
        return await orig(repo, ref)

    src.get_manifest = counting  # type: ignore[method-assign]
    r = await Copier().copy(Endpoint(src, "app", "v1"), Endpoint(dst, "app", "v1"))
    assert r.status == "unchanged"
    assert gets == 0


async def test_shared_blob_moves_once_across_concurrent_images() -> None:
    tags = images.corpus_small_tags(n_tags=12, layers=3, layer_size=1024, shared=2, seed=3)
    src, dst = await _source(*tags), RecordingStore()
    copier = Copier(image_concurrency=12)
    results = await asyncio.gather(
        *(copier.copy(Endpoint(src, "app", t), Endpoint(dst, "app", t)) for t, _ in tags)
    )
    assert all(r.status == "copied" for r in results), [r.error for r in results]
    assert set(dst.blob_puts.values()) == {1}
    shared = tags[0][1].manifest.layers[0].digest
    assert dst.blob_puts[shared] == 1


async def test_platform_filter_makes_filtered_index() -> None:
    idx = images.make_index(seed=4)
    src, dst = await _source(("v1", idx)), RecordingStore()
    copier = Copier(options=CopyOptions(platforms=("linux/arm*",)))
    r = await copier.copy(Endpoint(src, "app", "v1"), Endpoint(dst, "app", "v1"))
    assert r.status == "copied", r.error
    assert r.filtered
    assert r.source_digest == idx.manifest.digest
    assert r.platforms == ["linux/arm64/v8", "linux/arm/v7"]
    got = await dst.get_manifest("app", "v1")
    assert got.digest == r.destination_digest
    assert len(got.manifests) == 2
    again = await copier.copy(Endpoint(src, "app", "v1"), Endpoint(dst, "app", "v1"))
    assert again.status == "unchanged"


async def test_failed_tag_write_leaves_no_tag_and_others_continue() -> None:
    a, b = images.make_image(seed=5), images.make_image(seed=6)
    src = await _source(("a", a), ("b", b))
    dst = RecordingStore()
    dst.fail_manifest_put = True
    copier = Copier()
    r = await copier.copy(Endpoint(src, "app", "a"), Endpoint(dst, "app", "a"))
    assert r.status == "failed"
    assert "registry said no" in r.error
    assert await dst.head_manifest("app", "a") is None
    dst.fail_manifest_put = False
    r2 = await copier.copy(Endpoint(src, "app", "b"), Endpoint(dst, "app", "b"))
    assert r2.status == "copied"


async def test_corrupt_source_blob_fails_without_writing() -> None:
    img = images.make_image(seed=7)
    src = await _source(("v1", img))
    layer = img.manifest.layers[0].digest
    src.blobs[layer] = b"tampered" + src.blobs[layer][8:]
    dst = RecordingStore()
    r = await Copier(attempts=1).copy(Endpoint(src, "app", "v1"), Endpoint(dst, "app", "v1"))
    assert r.status == "failed"
    assert "digest mismatch" in r.error
    assert layer not in dst.blobs
    assert await dst.head_manifest("app", "v1") is None


async def test_foreign_layers_skipped_unless_asked() -> None:
    img = images.make_image(seed=8, foreign_layer=True)
    src = await _source(("v1", img))
    dst = RecordingStore()
    r = await Copier().copy(Endpoint(src, "app", "v1"), Endpoint(dst, "app", "v1"))
    assert r.status == "copied", r.error
    foreign = [d for d in img.manifest.layers if d.is_foreign]
    assert foreign
    assert foreign[0].digest not in dst.blobs
    r = await Copier(options=CopyOptions(include_foreign=True, force=True)).copy(
        Endpoint(src, "app", "v1"), Endpoint(dst, "app", "v1")
    )
    assert r.status == "failed"  # the source has no bytes for it: it lives at its urls
    assert "blob unknown" in r.error


def test_digest_mismatch_is_an_error_type() -> None:
    with pytest.raises(DigestMismatch):
        raise DigestMismatch("a", "b")


class TrustingStore(MemoryStore):
    """A sink that stores whatever it is given: the copier must check digests for it."""

    def __init__(self) -> None:
        super().__init__("trusting")
        self.verifies_blobs = False

    async def put_blob(self, repo: str, desc: Descriptor, chunks: AsyncIterable[bytes]) -> None:
        data = b"".join([c async for c in chunks])
        self.blobs[desc.digest] = data
        self.blob_repos.setdefault(desc.digest, set()).add(repo)


async def test_copier_checks_digests_for_a_sink_that_does_not() -> None:
    img = images.make_image(seed=8, layer_size=300_000)
    src = await _source(("v1", img))
    layer = img.manifest.layers[0].digest
    good = src.blobs[layer]
    src.blobs[layer] = good[:-9] + b"tampered!"
    dst = TrustingStore()
    r = await Copier(attempts=1).copy(Endpoint(src, "app", "v1"), Endpoint(dst, "app", "v1"))
    assert r.status == "failed"
    assert "digest mismatch" in r.error
    # The last chunk is withheld until the hash is known: the sink never saw it all.
    assert dst.blobs.get(layer) != src.blobs[layer]
    assert await dst.head_manifest("app", "v1") is None
    src.blobs[layer] = good
    r = await Copier().copy(Endpoint(src, "app", "v1"), Endpoint(dst, "app", "v1"))
    assert r.status == "copied", r.error
    assert dst.blobs[layer] == good
