"""Tests for the sample images of ocimirror.testkit.images, pushed into a MemoryStore."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import tarfile
from collections.abc import AsyncIterable, Iterator
from typing import Any

import pytest

from ocimirror import digest as digests
from ocimirror import mediatypes as mt
from ocimirror.manifest import Descriptor, Manifest, parse
from ocimirror.stores.memory import MemoryStore
from ocimirror.testkit.images import (
    DEFAULT_PLATFORMS,
    EMPTY_DIGEST,
    FOREIGN_LAYER_URL,
    WINDOWS_OS_VERSION,
    Blob,
    SampleImage,
    corpus_large_layers,
    corpus_multiarch,
    corpus_small_tags,
    derive_seed,
    make_artifact,
    make_image,
    make_index,
    pack_layer,
    push,
    random_layer,
)


def config_of(image: SampleImage) -> dict[str, Any]:
    """Return the parsed config JSON of an image."""
    cfg = image.manifest.config
    assert cfg is not None
    (blob,) = [b for b in image.blobs if b.digest == cfg.digest]
    data: dict[str, Any] = json.loads(blob.data)
    return data


def tar_members(layer: bytes) -> dict[str, bytes]:
    """Return the regular files of a `.tar.gz` layer by name."""
    with tarfile.open(fileobj=io.BytesIO(gzip.decompress(layer))) as tf:
        out = {}
        for member in tf.getmembers():
            f = tf.extractfile(member)
            if f is not None:
                out[member.name] = f.read()
        return out


async def assert_complete(store: MemoryStore, repo: str, ref: str) -> Manifest:
    """Check a pushed manifest and everything it refers to are present and verify."""
    m = await store.get_manifest(repo, ref)
    assert parse(m.raw, m.media_type).digest == m.digest
    if m.is_index:
        for child in m.manifests:
            got = await store.get_manifest(repo, child.digest)
            digests.verify(got.raw, child.digest)
            assert (got.size, got.media_type) == (child.size, child.media_type)
            await assert_complete(store, repo, child.digest)
    for desc in m.blobs:
        if desc.is_foreign:
            continue
        assert await store.blob_size(repo, desc.digest) == desc.size
        digests.verify(store.blobs[desc.digest], desc.digest)
    return m


class CountingStore(MemoryStore):
    """A MemoryStore that counts blob uploads."""

    def __init__(self) -> None:
        super().__init__()
        self.uploads: list[str] = []

    async def put_blob(self, repo: str, desc: Descriptor, chunks: AsyncIterable[bytes]) -> None:
        """Count, then store."""
        self.uploads.append(desc.digest)
        await super().put_blob(repo, desc, chunks)


# --- bytes -----------------------------------------------------------------------------


def test_random_layer_is_sized_and_deterministic() -> None:
    a = random_layer(100_000, seed=1)
    assert len(a) == 100_000
    assert a == random_layer(100_000, seed=1)
    assert a != random_layer(100_000, seed=2)
    assert random_layer(10, seed=1) == a[:10]
    assert random_layer(0, seed=1) == b""
    assert random_layer(64, seed=b"x") != random_layer(64, seed="x")
    assert random_layer(64) != random_layer(64)  # None: fresh randomness
    assert len(gzip.compress(a)) > len(a)  # incompressible


def test_random_layer_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="negative"):
        random_layer(-1)
    with pytest.raises(TypeError):
        random_layer(1, seed=1.5)  # type: ignore[arg-type]


def test_derive_seed_distinguishes_parts() -> None:
    assert derive_seed(0, "a", 1) == derive_seed(0, "a", 1)
    assert derive_seed(0, "a", 1) != derive_seed(0, "a1")
    assert derive_seed(0, "a") != derive_seed(1, "a")


@pytest.mark.parametrize("size", [0, 1, 511, 512, 65535, 65536, 200_000])
def test_pack_layer_is_a_real_tar_gz(size: int) -> None:
    content = random_layer(size, seed=size)
    gz, diff_id = pack_layer(content)
    assert gz[:2] == b"\x1f\x8b"
    assert diff_id == digests.of(gzip.decompress(gz))
    assert list(tar_members(gz).values()) == [content]
    assert pack_layer(content) == (gz, diff_id)


def test_blob_descriptor() -> None:
    blob = Blob("application/octet-stream", b"hello")
    assert blob.digest == "sha256:" + hashlib.sha256(b"hello").hexdigest()
    assert blob.descriptor == Descriptor("application/octet-stream", blob.digest, 5)
    assert "hello" not in repr(blob)


# --- images ----------------------------------------------------------------------------


def test_oci_image_shape() -> None:
    image = make_image(layers=3, layer_size=2000, seed=7)
    m = image.manifest
    assert m.media_type == mt.OCI_MANIFEST
    assert m.data["schemaVersion"] == 2
    assert m.data["mediaType"] == mt.OCI_MANIFEST
    assert parse(m.raw) == m
    assert image.children == ()
    assert m.config == image.blobs[0].descriptor
    assert m.config.media_type == mt.OCI_CONFIG
    assert m.layers == [b.descriptor for b in image.blobs[1:]]
    assert {d.media_type for d in m.layers} == {mt.OCI_LAYER}
    cfg = config_of(image)
    assert (cfg["os"], cfg["architecture"]) == ("linux", "amd64")
    assert "variant" not in cfg
    assert "os.version" not in cfg
    assert cfg["rootfs"]["type"] == "layers"
    assert cfg["rootfs"]["diff_ids"] == [
        digests.of(gzip.decompress(b.data)) for b in image.blobs[1:]
    ]
    assert len(cfg["history"]) == 3
    for blob in image.blobs[1:]:
        assert [len(v) for v in tar_members(blob.data).values()] == [2000]


def test_docker_image_shape() -> None:
    image = make_image(layers=2, oci=False)
    m = image.manifest
    assert m.media_type == mt.DOCKER_MANIFEST
    assert m.data["mediaType"] == mt.DOCKER_MANIFEST
    assert m.data["schemaVersion"] == 2
    assert m.config is not None
    assert m.config.media_type == mt.DOCKER_CONFIG
    assert {d.media_type for d in m.layers} == {mt.DOCKER_LAYER}
    assert "annotations" not in m.data
    with pytest.raises(ValueError, match="OCI"):
        make_image(oci=False, annotations={"a": "b"})


@pytest.mark.parametrize(
    ("platform", "arch", "variant", "os_version"),
    [
        ("linux/arm64/v8", "arm64", "v8", None),
        ("linux/arm/v7", "arm", "v7", None),
        ("windows/amd64", "amd64", None, WINDOWS_OS_VERSION),
    ],
)
def test_image_platform_in_config(
    platform: str, arch: str, variant: str | None, os_version: str | None
) -> None:
    cfg = config_of(make_image(platform=platform))
    assert cfg["architecture"] == arch
    assert cfg.get("variant") == variant
    assert cfg.get("os.version") == os_version


def test_image_os_version_override_config_extra_and_annotations() -> None:
    image = make_image(
        platform="windows/amd64",
        os_version="10.0.20348.1",
        config_extra={"config": {"Cmd": ["cmd.exe"]}, "author": "me"},
        annotations={"org.opencontainers.image.title": "sample"},
    )
    cfg = config_of(image)
    assert cfg["os.version"] == "10.0.20348.1"
    assert cfg["config"] == {"Cmd": ["cmd.exe"]}
    assert cfg["author"] == "me"
    assert image.manifest.data["annotations"] == {"org.opencontainers.image.title": "sample"}


def test_image_from_given_contents() -> None:
    image = make_image(layers=[b"one", b"two"], shared_layers=[b"base"])
    assert [list(tar_members(b.data).values()) for b in image.blobs[1:]] == [
        [b"base"],
        [b"one"],
        [b"two"],
    ]
    with pytest.raises(TypeError):
        make_image(layers=b"not a list")  # type: ignore[arg-type]


def test_shared_layers_come_first_and_are_shared() -> None:
    base = [random_layer(3000, seed="base0"), random_layer(3000, seed="base1")]
    a = make_image(layers=1, seed=1, shared_layers=base)
    b = make_image(layers=2, seed=2, shared_layers=base)
    assert [d.digest for d in a.manifest.layers[:2]] == [d.digest for d in b.manifest.layers[:2]]
    assert a.manifest.layers[2].digest != b.manifest.layers[2].digest
    assert len(b.manifest.layers) == 4


@pytest.mark.parametrize("oci", [True, False])
async def test_foreign_layer_is_listed_but_not_pushed(oci: bool) -> None:
    image = make_image(layers=1, platform="windows/amd64", foreign_layer=True, oci=oci)
    layers = image.manifest.layers
    assert len(layers) == 2
    foreign = layers[-1]
    assert foreign.is_foreign
    assert foreign.urls == (FOREIGN_LAYER_URL,)
    assert foreign.media_type == (mt.OCI_LAYER_NONDIST if oci else mt.DOCKER_FOREIGN_LAYER)
    assert foreign.digest not in {b.digest for b in image.all_blobs()}
    assert len(config_of(image)["rootfs"]["diff_ids"]) == 2

    store = MemoryStore()
    await push(store, "win", image, "ltsc2019")
    await assert_complete(store, "win", "ltsc2019")
    assert await store.blob_size("win", foreign.digest) is None
    assert foreign.digest not in store.blobs


async def test_push_image_by_tag() -> None:
    image = make_image(layers=3)
    store = MemoryStore()
    await push(store, "library/sample", image, "latest")
    assert await store.list_tags("library/sample") == ["latest"]
    m = await assert_complete(store, "library/sample", "latest")
    assert m.raw == image.manifest.raw
    assert m == await store.get_manifest("library/sample", image.digest)
    assert set(store.blobs) == {b.digest for b in image.blobs}


async def test_push_by_digest_without_tag() -> None:
    image = make_image()
    store = MemoryStore()
    await push(store, "r", image, None)
    assert await store.list_tags("r") == []
    await assert_complete(store, "r", image.digest)


async def test_push_skips_blobs_already_present() -> None:
    base = [random_layer(1000, seed="shared")]
    a = make_image(seed=1, shared_layers=base)
    b = make_image(seed=2, shared_layers=base)
    store = CountingStore()
    await push(store, "r", a, "a")
    assert sorted(store.uploads) == sorted(x.digest for x in a.blobs)
    store.uploads.clear()
    await push(store, "r", a, "a")
    assert store.uploads == []
    await push(store, "r", b, "b")
    assert len(store.uploads) == 2  # config and the unique layer; the shared one is skipped
    await push(store, "other", b, "b")  # another repository has no blobs yet
    assert len(store.uploads) == 2 + 3


async def test_push_large_blob_in_chunks() -> None:
    image = make_image(layers=1, layer_size=3 * 1024 * 1024 + 17)
    store = MemoryStore()
    await push(store, "r", image, "t", concurrency=1)
    await assert_complete(store, "r", "t")


# --- indexes ---------------------------------------------------------------------------


@pytest.mark.parametrize("oci", [True, False])
async def test_index_shape_and_push(oci: bool) -> None:
    index = make_index(oci=oci, seed=3)
    m = index.manifest
    assert m.is_index
    assert m.media_type == (mt.OCI_INDEX if oci else mt.DOCKER_MANIFEST_LIST)
    assert m.data["mediaType"] == m.media_type
    assert m.data["schemaVersion"] == 2
    assert parse(m.raw) == m
    entries = m.manifests
    assert [str(d.platform) for d in entries] == list(DEFAULT_PLATFORMS)
    assert [d.digest for d in entries] == [c.digest for c in index.children]
    for entry, child in zip(entries, index.children, strict=True):
        assert entry.size == child.manifest.size
        assert entry.media_type == child.manifest.media_type
        assert child.manifest.media_type == (mt.OCI_MANIFEST if oci else mt.DOCKER_MANIFEST)
        assert entry.platform is not None
        cfg = config_of(child)
        assert (cfg["os"], cfg["architecture"]) == (entry.platform.os, entry.platform.architecture)
        assert cfg.get("variant", "") == entry.platform.variant
        assert cfg.get("os.version", "") == entry.platform.os_version
    windows = [d for d in entries if d.platform is not None and d.platform.os == "windows"]
    assert [d.platform.os_version for d in windows if d.platform] == [WINDOWS_OS_VERSION]
    assert "os.version" in m.data["manifests"][3]["platform"]
    assert all("os.version" not in e["platform"] for e in m.data["manifests"][:3])
    # each platform has its own layers
    layer_digests = [d.digest for c in index.children for d in c.manifest.layers]
    assert len(set(layer_digests)) == len(layer_digests)

    store = MemoryStore()
    await push(store, "multi", index, "v1")
    assert await store.list_tags("multi") == ["v1"]
    await assert_complete(store, "multi", "v1")
    assert len(store.manifests) == 1 + len(DEFAULT_PLATFORMS)


def test_index_options() -> None:
    index = make_index(
        ["linux/amd64", "windows/amd64"],
        layers=2,
        windows_os_version="10.0.20348.2340",
        annotations={"k": "v"},
    )
    assert [len(c.manifest.layers) for c in index.children] == [2, 2]
    assert index.manifest.manifests[1].platform is not None
    assert index.manifest.manifests[1].platform.os_version == "10.0.20348.2340"
    assert config_of(index.children[1])["os.version"] == "10.0.20348.2340"
    assert index.manifest.data["annotations"] == {"k": "v"}
    with pytest.raises(ValueError, match="duplicate"):
        make_index(["linux/amd64", "linux/amd64"])
    with pytest.raises(ValueError, match="invalid platform"):
        make_index(["linux"])


def test_all_blobs_all_manifests_and_total_size() -> None:
    index = make_index(["linux/amd64", "linux/arm64"], layer_size=500)
    blobs = index.all_blobs()
    assert len(blobs) == len({b.digest for b in blobs}) == 4  # two configs, two layers
    assert [m.digest for m in index.all_manifests()] == [
        *(c.digest for c in index.children),
        index.digest,
    ]
    expected = sum(b.size for b in blobs) + sum(m.size for m in index.all_manifests())
    assert index.total_size() == expected
    # a layer used twice in one image counts once
    twice = make_image(layers=[b"same", b"same"])
    assert len(twice.all_blobs()) == 2
    assert twice.total_size() == sum(b.size for b in twice.all_blobs()) + twice.manifest.size


# --- artifacts -------------------------------------------------------------------------


async def test_artifact_points_at_subject() -> None:
    subject = make_image(seed=5)
    art = make_artifact(subject, payload=b"sbom!", annotations={"x": "y"})
    m = art.manifest
    assert m.media_type == mt.OCI_MANIFEST
    assert m.data["artifactType"] == "application/vnd.example.sbom.v1"
    assert m.data["config"] == {"mediaType": mt.OCI_EMPTY, "digest": EMPTY_DIGEST, "size": 2}
    assert digests.of(b"{}") == EMPTY_DIGEST
    (layer,) = m.layers
    assert layer.digest == digests.of(b"sbom!")
    assert m.subject == subject.descriptor
    assert m.subject is not None
    assert m.subject.digest == subject.manifest.digest
    assert m.data["annotations"] == {"x": "y"}
    assert parse(m.raw) == m

    store = MemoryStore()
    await push(store, "r", subject, "v1")
    await push(store, "r", art, None)
    await assert_complete(store, "r", art.digest)
    assert store.blobs[EMPTY_DIGEST] == b"{}"
    assert await store.list_tags("r") == ["v1"]


def test_artifact_without_subject_and_on_an_index() -> None:
    loose = make_artifact(None, artifact_type="application/vnd.example.sig")
    assert "subject" not in loose.manifest.data
    assert loose.manifest.data["artifactType"] == "application/vnd.example.sig"
    index = make_index(["linux/amd64"])
    on_index = make_artifact(index)
    assert on_index.manifest.subject == index.descriptor
    assert on_index.manifest.subject is not None
    assert on_index.manifest.subject.media_type == mt.OCI_INDEX


# --- determinism -----------------------------------------------------------------------


def test_same_seed_same_digest_different_seed_different_digest() -> None:
    assert make_image(seed=1).digest == make_image(seed=1).digest
    assert make_image(seed=1).digest != make_image(seed=2).digest
    assert make_image(seed=1).digest != make_image(seed=1, oci=False).digest
    assert make_image(seed="a").digest != make_image(seed=b"a").digest
    assert make_index(seed=1).digest == make_index(seed=1).digest
    assert make_index(seed=1).digest != make_index(seed=2).digest
    assert (
        make_image(seed=1, foreign_layer=True).digest
        == make_image(seed=1, foreign_layer=True).digest
    )
    a = make_artifact(make_image(seed=1))
    assert a.digest == make_artifact(make_image(seed=1)).digest
    assert a.digest != make_artifact(make_image(seed=2)).digest
    assert a.digest != make_artifact(make_image(seed=1), payload=b"other").digest


# --- corpora ---------------------------------------------------------------------------


def test_corpus_small_tags_default_count() -> None:
    corpus = corpus_small_tags(layer_size=256)
    assert len(corpus) == 200
    assert len({tag for tag, _ in corpus}) == 200
    assert all(len(img.manifest.layers) == 3 for _, img in corpus)


async def test_corpus_small_tags_shares_layers() -> None:
    corpus = corpus_small_tags(n_tags=12, layers=4, layer_size=2048, shared=2, seed=9)
    assert len(corpus) == 12
    layers = [[d.digest for d in img.manifest.layers] for _, img in corpus]
    assert all(len(ls) == 4 for ls in layers)
    assert len({tuple(ls[:2]) for ls in layers}) == 1  # the shared two, in every tag
    unique = [d for ls in layers for d in ls[2:]]
    assert len(set(unique)) == len(unique) == 12 * 2
    assert len({img.digest for _, img in corpus}) == 12
    assert corpus_small_tags(n_tags=2, layer_size=64, seed=9)[0][1].digest != (
        corpus_small_tags(n_tags=2, layer_size=64, seed=10)[0][1].digest
    )

    store = CountingStore()
    for tag, img in corpus:
        await push(store, "small", img, tag)
    assert len(store.uploads) == 2 + 12 * (2 + 1)  # shared once; per tag 2 layers + config
    assert len(await store.list_tags("small")) == 12
    for tag, _ in corpus:
        await assert_complete(store, "small", tag)


def test_corpus_small_tags_validates_shared() -> None:
    with pytest.raises(ValueError, match="shared"):
        corpus_small_tags(n_tags=1, layers=1, shared=2)
    no_shared = corpus_small_tags(n_tags=3, layers=2, layer_size=64, shared=0)
    digests_ = [d.digest for _, img in no_shared for d in img.manifest.layers]
    assert len(set(digests_)) == 6
    all_shared = corpus_small_tags(n_tags=3, layers=2, layer_size=64, shared=2)
    assert len({d.digest for _, img in all_shared for d in img.manifest.layers}) == 2


def test_corpus_large_layers_is_lazy() -> None:
    gen = corpus_large_layers(n_tags=3, layers=2, layer_size=4096, seed=1)
    assert isinstance(gen, Iterator)
    items = list(gen)
    assert [tag for tag, _ in items] == ["large-0", "large-1", "large-2"]
    sizes = [len(tar_members(b.data).popitem()[1]) for _, img in items for b in img.blobs[1:]]
    assert sizes == [4096] * 6
    layer_digests = [d.digest for _, img in items for d in img.manifest.layers]
    assert len(set(layer_digests)) == 6
    again = [
        img.digest for _, img in corpus_large_layers(n_tags=3, layers=2, layer_size=4096, seed=1)
    ]
    assert again == [img.digest for _, img in items]


async def test_corpus_multiarch() -> None:
    gen = corpus_multiarch(n_indexes=3, platforms=2, layer_size=512)
    assert isinstance(gen, Iterator)
    items = list(gen)
    assert len(items) == 3
    assert len({tag for tag, _ in items}) == 3
    for _, index in items:
        assert index.manifest.is_index
        assert [str(d.platform) for d in index.manifest.manifests] == list(DEFAULT_PLATFORMS[:2])
    assert len({index.digest for _, index in items}) == 3
    six = next(corpus_multiarch(n_indexes=1, platforms=6, layer_size=64))[1]
    assert len(six.children) == 6
    named = next(corpus_multiarch(n_indexes=1, platforms=["linux/s390x"], layer_size=64))[1]
    assert [str(d.platform) for d in named.manifest.manifests] == ["linux/s390x"]
    with pytest.raises(ValueError, match="platforms"):
        corpus_multiarch(platforms=0)

    store = MemoryStore()
    for tag, index in items:
        await push(store, "multi", index, tag)
    for tag, _ in items:
        await assert_complete(store, "multi", tag)
    assert len(store.manifests) == 3 * 3
