"""LayoutStore: an OCI image layout directory as a Store, with skopeo's `oci:` as judge."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from ocimirror import digest as digests
from ocimirror import mediatypes as mt
from ocimirror.errors import DigestMismatch, ManifestError, NotFound, ReferenceError
from ocimirror.manifest import Descriptor
from ocimirror.store import Store
from ocimirror.stores.layout import REF_NAME, LayoutStore
from ocimirror.stores.memory import MemoryStore
from ocimirror.testkit import images
from ocimirror.testkit.skopeo import Skopeo
from ocimirror.transfer.copy import Copier, Endpoint

IMAGE = images.make_image(layers=2, seed="layout-image")
INDEX = images.make_index(seed="layout-index")


# --- helpers -----------------------------------------------------------------------------


async def _chunks(data: bytes, size: int = 4096) -> AsyncIterator[bytes]:
    for off in range(0, len(data), size):
        yield data[off : off + size]


async def _read_blob(store: Store, desc: Descriptor, repo: str = "any") -> bytes:
    async with store.open_blob(repo, desc) as chunks:
        return b"".join([c async for c in chunks])


async def _assert_holds(
    store: Store, sample: images.SampleImage, tag: str, repo: str = "any"
) -> None:
    """Check the store has `sample` under `tag`: every manifest and blob, byte for byte."""
    top = await store.get_manifest(repo, tag)
    assert top.raw == sample.manifest.raw
    assert top.digest == sample.digest
    assert top.media_type == sample.manifest.media_type
    for m in sample.all_manifests():
        got = await store.get_manifest(repo, m.digest)
        assert got.raw == m.raw
    for blob in sample.all_blobs():
        assert await store.blob_size(repo, blob.digest) == blob.size
        assert await _read_blob(store, blob.descriptor, repo) == blob.data


def _index_json(path: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((path / "index.json").read_bytes())
    return data


def _leftovers(path: Path) -> list[Path]:
    return [p for p in path.rglob("*") if p.name.startswith(".tmp-")]


async def _skopeo(skopeo: Skopeo, *args: str, check: bool = True) -> tuple[int, bytes, str]:
    """Run skopeo (isolated from the host's configuration) and return (status, out, err)."""
    cmd = [skopeo.binary, "--insecure-policy", "--tmpdir", str(skopeo.workdir / "tmp"), *args]
    proc = await asyncio.create_subprocess_exec(
        *cmd,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=skopeo.env(),
    )
    out, err = await asyncio.wait_for(proc.communicate(), timeout=120)
    assert proc.returncode is not None
    if check:
        assert proc.returncode == 0, f"{cmd} exited {proc.returncode}:\n{err.decode()}"
    return proc.returncode, out, err.decode()


# --- round trips -------------------------------------------------------------------------


async def test_push_image_and_index_round_trip(tmp_path: Path) -> None:
    root = tmp_path / "layout"
    store = LayoutStore(root, create=True)
    assert store.name == f"oci:{root}"
    await images.push(store, "repo-a", IMAGE, "img")
    await images.push(store, "repo-b", INDEX, "idx")

    # The repo argument is ignored: any name sees the same content.
    await _assert_holds(store, IMAGE, "img")
    await _assert_holds(store, INDEX, "idx")

    # On disk: the layout marker, a tagged entry per tag, manifests stored as blobs.
    assert json.loads((root / "oci-layout").read_bytes()) == {"imageLayoutVersion": "1.0.0"}
    index = _index_json(root)
    assert index["schemaVersion"] == 2
    assert index["mediaType"] == mt.OCI_INDEX
    assert sorted(
        (e["annotations"][REF_NAME], e["digest"], e["mediaType"], e["size"])
        for e in index["manifests"]
    ) == [
        ("idx", INDEX.digest, mt.OCI_INDEX, INDEX.manifest.size),
        ("img", IMAGE.digest, mt.OCI_MANIFEST, IMAGE.manifest.size),
    ]
    for m in (*IMAGE.all_manifests(), *INDEX.all_manifests()):
        assert (root / "blobs" / "sha256" / digests.encoded(m.digest)).read_bytes() == m.raw
    assert _leftovers(root) == []

    # A second store over the same directory (no create) reads it all back.
    again = LayoutStore(root)
    await _assert_holds(again, IMAGE, "img")
    await _assert_holds(again, INDEX, "idx")
    assert await again.list_tags("whatever") == ["idx", "img"]
    await again.close()
    await store.close()


async def test_copier_memory_to_layout_and_back(tmp_path: Path) -> None:
    src = MemoryStore("src")
    await images.push(src, "app", IMAGE, "v1")
    await images.push(src, "app", INDEX, "v2")
    layout = LayoutStore(tmp_path / "bundle", create=True)
    copier = Copier()
    for tag, sample in (("v1", IMAGE), ("v2", INDEX)):
        r = await copier.copy(Endpoint(src, "app", tag), Endpoint(layout, "app", tag))
        assert r.status == "copied", r.error
        assert r.destination_digest == sample.digest
        await _assert_holds(layout, sample, tag)

    # Only the tags are entries of index.json; the index's children are blobs only.
    index = _index_json(tmp_path / "bundle")
    assert sorted(e["digest"] for e in index["manifests"]) == sorted([IMAGE.digest, INDEX.digest])

    # A copy again finds the same digests: nothing to do.
    r = await Copier().copy(Endpoint(src, "app", "v2"), Endpoint(layout, "app", "v2"))
    assert r.status == "unchanged", r.error

    # And out of the layout into a fresh store.
    back = MemoryStore("back")
    for tag, sample in (("v1", IMAGE), ("v2", INDEX)):
        r = await Copier().copy(Endpoint(layout, "x", tag), Endpoint(back, "app", tag))
        assert r.status == "copied", r.error
        await _assert_holds(back, sample, tag, repo="app")


async def test_head_manifest_by_tag_and_digest(tmp_path: Path) -> None:
    store = LayoutStore(tmp_path, create=True)
    await images.push(store, "r", INDEX, "idx")
    by_tag = await store.head_manifest("r", "idx")
    assert by_tag == Descriptor(mt.OCI_INDEX, INDEX.digest, INDEX.manifest.size)
    child = INDEX.children[0].manifest
    by_digest = await store.head_manifest("r", child.digest)
    assert by_digest == Descriptor(mt.OCI_MANIFEST, child.digest, child.size)
    assert await store.head_manifest("r", "nope") is None
    assert await store.head_manifest("r", IMAGE.digest) is None
    with pytest.raises(NotFound, match="nope"):
        await store.get_manifest("r", "nope")
    with pytest.raises(NotFound, match=IMAGE.digest):
        await store.get_manifest("r", IMAGE.digest)


async def test_docker_media_types_are_kept(tmp_path: Path) -> None:
    docker = images.make_index(["linux/amd64", "linux/arm64/v8"], oci=False, seed="docker")
    store = LayoutStore(tmp_path, create=True)
    await images.push(store, "r", docker, "d")
    desc = await store.head_manifest("r", "d")
    assert desc is not None
    assert desc.media_type == mt.DOCKER_MANIFEST_LIST
    child = docker.children[0].manifest
    head = await store.head_manifest("r", child.digest)
    assert head is not None
    assert head.media_type == mt.DOCKER_MANIFEST
    await _assert_holds(store, docker, "d")


# --- tags ----------------------------------------------------------------------------------


async def test_retag_replaces_and_tags_coexist(tmp_path: Path) -> None:
    other = images.make_image(seed="layout-other")
    store = LayoutStore(tmp_path, create=True)
    await images.push(store, "r", IMAGE, "a")
    await images.push(store, "r", INDEX, "b")
    assert await store.list_tags("r") == ["a", "b"]

    await images.push(store, "r", other, "a")
    assert await store.list_tags("r") == ["a", "b"]
    assert (await store.get_manifest("r", "a")).raw == other.manifest.raw
    assert (await store.get_manifest("r", "b")).raw == INDEX.manifest.raw
    entries = _index_json(tmp_path)["manifests"]
    assert sorted(e["annotations"][REF_NAME] for e in entries) == ["a", "b"]
    # The replaced manifest is still there by digest (nothing is garbage-collected).
    assert (await store.get_manifest("r", IMAGE.digest)).raw == IMAGE.manifest.raw

    # One manifest under two tags.
    await store.put_manifest("r", "c", other.manifest)
    assert await store.list_tags("r") == ["a", "b", "c"]
    assert (await store.head_manifest("r", "c")) == (await store.head_manifest("r", "a"))


async def test_put_manifest_by_digest_adds_no_tag(tmp_path: Path) -> None:
    store = LayoutStore(tmp_path, create=True)
    await images.push(store, "r", IMAGE)  # no tag: the top manifest goes in by digest
    assert await store.list_tags("r") == []
    assert not (tmp_path / "index.json").exists()
    assert (await store.get_manifest("r", IMAGE.digest)).raw == IMAGE.manifest.raw
    with pytest.raises(DigestMismatch):
        await store.put_manifest("r", INDEX.digest, IMAGE.manifest)


async def test_concurrent_tag_writes_lose_nothing(tmp_path: Path) -> None:
    store = LayoutStore(tmp_path, create=True)
    await images.push(store, "r", IMAGE)
    tags = [f"t{i:02d}" for i in range(30)]
    await asyncio.gather(*(store.put_manifest("r", t, IMAGE.manifest) for t in tags))
    assert await store.list_tags("r") == tags
    assert len(_index_json(tmp_path)["manifests"]) == len(tags)
    assert _leftovers(tmp_path) == []


async def test_foreign_entries_of_index_json_are_kept(tmp_path: Path) -> None:
    store = LayoutStore(tmp_path, create=True)
    await images.push(store, "r", IMAGE, "a")
    index = _index_json(tmp_path)
    untagged = {"mediaType": mt.OCI_INDEX, "digest": INDEX.digest, "size": INDEX.manifest.size}
    index["manifests"].append(untagged)
    index["annotations"] = {"org.example": "kept"}
    (tmp_path / "index.json").write_text(json.dumps(index))
    await images.push(store, "r", INDEX, "b")
    after = _index_json(tmp_path)
    assert untagged in after["manifests"]
    assert after["annotations"] == {"org.example": "kept"}
    assert await store.list_tags("r") == ["a", "b"]


# --- blobs ---------------------------------------------------------------------------------


async def test_put_blob_digest_mismatch_leaves_nothing(tmp_path: Path) -> None:
    store = LayoutStore(tmp_path, create=True)
    good = b"the expected bytes" * 1000
    desc = Descriptor(mt.OCI_LAYER, digests.of(good), len(good))
    bad = b"X" + good[1:]
    with pytest.raises(DigestMismatch) as exc:
        await store.put_blob("r", desc, _chunks(bad))
    assert exc.value.expected == desc.digest
    assert exc.value.actual == digests.of(bad)
    assert await store.blob_size("r", desc.digest) is None
    assert [p for p in (tmp_path / "blobs").rglob("*") if p.is_file()] == []

    # Right bytes but a wrong declared size: refused too.
    with pytest.raises(DigestMismatch):
        await store.put_blob(
            "r", Descriptor(mt.OCI_LAYER, desc.digest, len(good) + 1), _chunks(good)
        )
    # More bytes than declared: refused as soon as they overflow.
    with pytest.raises(DigestMismatch, match="more than"):
        await store.put_blob("r", desc, _chunks(good + b"extra"))
    assert [p for p in (tmp_path / "blobs").rglob("*") if p.is_file()] == []

    # A source that fails part-way leaves no temporary file either.
    async def failing() -> AsyncIterator[bytes]:
        yield good[:100]
        raise ConnectionError("source went away")

    with pytest.raises(ConnectionError):
        await store.put_blob("r", desc, failing())
    assert [p for p in (tmp_path / "blobs").rglob("*") if p.is_file()] == []

    # And the right bytes go in.
    await store.put_blob("r", desc, _chunks(good))
    assert (tmp_path / "blobs" / "sha256" / digests.encoded(desc.digest)).read_bytes() == good
    assert _leftovers(tmp_path) == []


async def test_put_blob_present_consumes_nothing(tmp_path: Path) -> None:
    store = LayoutStore(tmp_path, create=True)
    blob = IMAGE.blobs[0]
    await store.put_blob("r", blob.descriptor, _chunks(blob.data))
    pulled = 0

    async def counting() -> AsyncIterator[bytes]:
        nonlocal pulled
        pulled += 1
        yield b"not even the right bytes"

    await store.put_blob("r", blob.descriptor, counting())
    assert pulled == 0
    assert await _read_blob(store, blob.descriptor) == blob.data


async def test_large_blob_streams_in_mebibyte_chunks(tmp_path: Path) -> None:
    store = LayoutStore(tmp_path, create=True)
    data = images.random_layer(3 * 1024 * 1024 + 12345, seed="big")
    desc = Descriptor(mt.OCI_LAYER, digests.of(data), len(data))
    await store.put_blob("r", desc, _chunks(data, 65536))
    assert await store.blob_size("r", desc.digest) == len(data)
    async with store.open_blob("r", desc) as chunks:
        sizes = [len(c) async for c in chunks]
    assert sizes == [1024 * 1024] * 3 + [12345]
    assert await _read_blob(store, desc) == data


async def test_open_missing_blob_and_mount(tmp_path: Path) -> None:
    store = LayoutStore(tmp_path, create=True)
    blob = IMAGE.blobs[0]
    with pytest.raises(NotFound, match=blob.digest):
        async with store.open_blob("r", blob.descriptor):
            pass
    assert await store.mount_blob("r", blob.descriptor, "elsewhere") is False
    await store.put_blob("r", blob.descriptor, _chunks(blob.data))
    assert await store.mount_blob("r", blob.descriptor, "elsewhere") is True


async def test_invalid_digests_never_become_paths(tmp_path: Path) -> None:
    store = LayoutStore(tmp_path, create=True)
    for bad in ("sha256:../../../etc/passwd", "md5:abc", "sha256:" + "A" * 64):
        with pytest.raises(ReferenceError):
            await store.blob_size("r", bad)
        with pytest.raises(ReferenceError):
            await store.head_manifest("r", bad)


async def test_tampered_manifest_blob_is_detected(tmp_path: Path) -> None:
    store = LayoutStore(tmp_path, create=True)
    await images.push(store, "r", IMAGE, "img")
    path = tmp_path / "blobs" / "sha256" / digests.encoded(IMAGE.digest)
    path.write_bytes(IMAGE.manifest.raw.replace(b'"schemaVersion": 2', b'"schemaVersion":  2'))
    with pytest.raises(DigestMismatch):
        await store.get_manifest("r", "img")
    with pytest.raises(DigestMismatch):
        await store.get_manifest("r", IMAGE.digest)


# --- opening -------------------------------------------------------------------------------


async def test_missing_layout_without_create_is_not_found(tmp_path: Path) -> None:
    missing = tmp_path / "missing"
    with pytest.raises(NotFound, match=re.escape(str(missing))):
        LayoutStore(missing)
    (tmp_path / "empty").mkdir()
    with pytest.raises(NotFound, match="oci-layout"):
        LayoutStore(tmp_path / "empty")
    assert not missing.exists()


async def test_create_reads_as_empty_and_writes_lazily(tmp_path: Path) -> None:
    root = tmp_path / "new" / "layout"
    store = LayoutStore(root, create=True)
    assert await store.head_manifest("r", "latest") is None
    assert await store.head_manifest("r", IMAGE.digest) is None
    assert await store.list_tags("r") == []
    assert await store.blob_size("r", IMAGE.blobs[0].digest) is None
    with pytest.raises(NotFound):
        await store.get_manifest("r", "latest")
    await store.close()
    assert not (tmp_path / "new").exists()

    blob = IMAGE.blobs[0]
    await store.put_blob("r", blob.descriptor, _chunks(blob.data))
    assert json.loads((root / "oci-layout").read_bytes()) == {"imageLayoutVersion": "1.0.0"}
    assert await store.list_tags("r") == []
    LayoutStore(root)  # now a layout that opens without create


@pytest.mark.parametrize(
    "content",
    [
        b"{not json",
        b"[]",
        b'{"schemaVersion": 2, "manifests": {}}',
        b'{"schemaVersion": 2, "manifests": [{"digest": "sha256:abc", "size": 1}]}',
        b'{"schemaVersion": 2, "manifests": [{"mediaType": "x", "digest": "%s"}]}',
        b'{"schemaVersion": 2, "manifests": [{"digest": "%s", "size": 1, "annotations": []}]}',
    ],
)
async def test_malformed_index_json_names_the_file(tmp_path: Path, content: bytes) -> None:
    store = LayoutStore(tmp_path, create=True)
    await images.push(store, "r", IMAGE, "img")
    if b"%s" in content:
        content = content % IMAGE.digest.encode()
    (tmp_path / "index.json").write_bytes(content)
    with pytest.raises(ManifestError, match=r"index\.json"):
        await store.list_tags("r")
    with pytest.raises(ManifestError, match=re.escape(str(tmp_path / "index.json"))):
        await store.head_manifest("r", "img")
    with pytest.raises(ManifestError, match=r"index\.json"):
        await store.put_manifest("r", "other", IMAGE.manifest)
    assert (tmp_path / "index.json").read_bytes() == content


# --- skopeo as judge -----------------------------------------------------------------------


async def test_skopeo_reads_and_copies_what_layout_store_wrote(
    tmp_path: Path, skopeo: Skopeo
) -> None:
    src = tmp_path / "written"
    store = LayoutStore(src, create=True)
    await images.push(store, "r", IMAGE, "img")
    await images.push(store, "r", INDEX, "idx")
    for tag, sample in (("img", IMAGE), ("idx", INDEX)):
        _, raw, _ = await _skopeo(skopeo, "inspect", "--raw", f"oci:{src}:{tag}")
        assert raw == sample.manifest.raw
    # skopeo's own digest of what it read from the layout.
    _, inspected, _ = await _skopeo(skopeo, "inspect", f"oci:{src}:img")
    assert json.loads(inspected)["Digest"] == IMAGE.digest

    dst = tmp_path / "copied"
    for tag in ("img", "idx"):
        await _skopeo(skopeo, "copy", "--all", f"oci:{src}:{tag}", f"oci:{dst}:{tag}")
    copied = LayoutStore(dst)
    await _assert_holds(copied, IMAGE, "img")
    await _assert_holds(copied, INDEX, "idx")
    assert await copied.list_tags("r") == ["idx", "img"]


async def test_skopeo_refuses_a_tampered_layer(tmp_path: Path, skopeo: Skopeo) -> None:
    """The judge can fail: a layer that no longer matches its digest stops skopeo's copy."""
    src = tmp_path / "written"
    store = LayoutStore(src, create=True)
    await images.push(store, "r", IMAGE, "img")
    layer = IMAGE.manifest.layers[0]
    path = src / "blobs" / "sha256" / digests.encoded(layer.digest)
    data = bytearray(path.read_bytes())
    data[-20] ^= 0xFF  # inside the stored deflate block: still a valid-looking gzip
    path.write_bytes(bytes(data))
    status, _, err = await _skopeo(
        skopeo, "copy", f"oci:{src}:img", f"oci:{tmp_path / 'copied'}:img", check=False
    )
    assert status != 0
    assert "digest" in err.lower()


async def test_layout_store_reads_what_skopeo_wrote(tmp_path: Path, skopeo: Skopeo) -> None:
    src = tmp_path / "written"
    store = LayoutStore(src, create=True)
    await images.push(store, "r", INDEX, "idx")
    await images.push(store, "r", IMAGE, "img")

    by_skopeo = tmp_path / "by-skopeo"
    await _skopeo(skopeo, "copy", "--all", f"oci:{src}:idx", f"oci:{by_skopeo}:other")
    await _skopeo(skopeo, "copy", f"oci:{src}:img", f"oci:{by_skopeo}:single")
    reader = LayoutStore(by_skopeo)
    assert await reader.list_tags("r") == ["other", "single"]
    await _assert_holds(reader, INDEX, "other")
    await _assert_holds(reader, IMAGE, "single")
    head = await reader.head_manifest("r", "other")
    assert head == Descriptor(mt.OCI_INDEX, INDEX.digest, INDEX.manifest.size)

    # skopeo adding a tag to a layout LayoutStore made keeps what was there, and
    # LayoutStore then writes on top of skopeo's index.json without losing skopeo's tag.
    await _skopeo(skopeo, "copy", f"oci:{by_skopeo}:single", f"oci:{src}:third")
    assert await store.list_tags("r") == ["idx", "img", "third"]
    await store.put_manifest("r", "fourth", IMAGE.manifest)
    _, raw, _ = await _skopeo(skopeo, "inspect", "--raw", f"oci:{src}:third")
    assert raw == IMAGE.manifest.raw
    _, raw, _ = await _skopeo(skopeo, "inspect", "--raw", f"oci:{src}:fourth")
    assert raw == IMAGE.manifest.raw
    assert await store.list_tags("r") == ["fourth", "idx", "img", "third"]
