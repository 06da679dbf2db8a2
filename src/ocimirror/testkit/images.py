"""Sample images made from seeds: images, multi-arch indexes, artifacts and whole corpora.

Everything here is deterministic: the same seed gives the same bytes, hence the same
digests, and different seeds give different ones. Images are real enough for any client:
manifests are valid OCI / Docker schema 2, configs carry the platform and `rootfs.diff_ids`,
and every layer is a genuine gzip-compressed tarball holding one file of random bytes.
The gzip stream uses stored (uncompressed) deflate blocks, which is fast to make and
still detected as compressed, so tools such as skopeo copy the layers unchanged instead
of compressing them (and changing their digests) on the way.

`push` writes a `SampleImage` into any `Store`; the `corpus_*` functions make the sets of
tagged images the end-to-end tests, the demo and the benchmarks mirror.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import struct
import tarfile
import zlib
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, TypeAlias

from .. import digest as digests
from .. import mediatypes as mt
from ..manifest import Descriptor, Manifest, Platform, parse
from ..store import Store

#: What a seed may be; it is hashed, so any value works and nearby values are unrelated.
Seed: TypeAlias = int | str | bytes

#: The platforms of `make_index` by default: the usual three Linux ones plus Windows.
DEFAULT_PLATFORMS: tuple[str, ...] = (
    "linux/amd64",
    "linux/arm64/v8",
    "linux/arm/v7",
    "windows/amd64",
)

#: Further platforms `corpus_multiarch` draws from when asked for more than four.
MORE_PLATFORMS: tuple[str, ...] = (
    "linux/ppc64le",
    "linux/s390x",
    "linux/386",
    "linux/riscv64",
    "linux/arm/v6",
    "linux/mips64le",
)

#: The `os.version` given to Windows images (Windows Server 2019, a real build number).
WINDOWS_OS_VERSION = "10.0.17763.5576"

#: Where a foreign layer claims to live; nothing is ever fetched from it.
FOREIGN_LAYER_URL = "https://example.invalid/layer.tar"

#: The content and digest of the OCI empty descriptor (`application/vnd.oci.empty.v1+json`).
EMPTY_JSON = b"{}"
EMPTY_DIGEST = "sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a"

#: A fixed creation time, so configs do not change from run to run.
CREATED = "1970-01-01T00:00:00Z"

_PUSH_CHUNK = 1024 * 1024
_STORED_BLOCK = 0xFFFF


@dataclass(frozen=True)
class Blob:
    """A blob ready to push: its media type and exact bytes."""

    media_type: str
    data: bytes = field(repr=False)

    @cached_property
    def digest(self) -> str:
        """Return the sha256 digest of the bytes (computed once)."""
        return digests.of(self.data)

    @property
    def size(self) -> int:
        """Return the length of the bytes."""
        return len(self.data)

    @property
    def descriptor(self) -> Descriptor:
        """Return a descriptor that points at this blob."""
        return Descriptor(self.media_type, self.digest, len(self.data))


@dataclass(frozen=True)
class SampleImage:
    """An image (or index) ready to push: its blobs, child manifests and top manifest."""

    manifest: Manifest
    children: tuple[SampleImage, ...] = ()
    blobs: tuple[Blob, ...] = ()

    @property
    def digest(self) -> str:
        """Return the digest of the top manifest."""
        return self.manifest.digest

    @property
    def descriptor(self) -> Descriptor:
        """Return a descriptor that points at the top manifest."""
        return self.manifest.descriptor

    def all_blobs(self) -> tuple[Blob, ...]:
        """Return every distinct blob of this image and its children, children first."""
        seen: dict[str, Blob] = {}
        for child in self.children:
            for blob in child.all_blobs():
                seen.setdefault(blob.digest, blob)
        for blob in self.blobs:
            seen.setdefault(blob.digest, blob)
        return tuple(seen.values())

    def all_manifests(self) -> tuple[Manifest, ...]:
        """Return every manifest in push order: children (depth first), then the top one."""
        seen: dict[str, Manifest] = {}
        for child in self.children:
            for m in child.all_manifests():
                seen.setdefault(m.digest, m)
        seen.setdefault(self.manifest.digest, self.manifest)
        return tuple(seen.values())

    def total_size(self) -> int:
        """Return the bytes a full copy moves: every distinct blob plus every manifest."""
        blobs = sum(b.size for b in self.all_blobs())
        return blobs + sum(m.size for m in self.all_manifests())


# --- bytes -----------------------------------------------------------------------------


def _seed_bytes(seed: Seed) -> bytes:
    if isinstance(seed, bool) or not isinstance(seed, int | str | bytes):
        raise TypeError(f"a seed must be int, str or bytes, not {type(seed).__name__}")
    if isinstance(seed, int):
        return b"i" + str(seed).encode()
    if isinstance(seed, str):
        return b"s" + seed.encode()
    return b"b" + seed


def derive_seed(seed: Seed, *parts: object) -> bytes:
    """Return a new seed for a named part of something made from `seed`."""
    h = hashlib.sha256(b"ocimirror-testkit\0" + _seed_bytes(seed))
    for p in parts:
        text = str(p).encode()
        h.update(struct.pack("<I", len(text)) + text)
    return h.digest()


def random_layer(size: int, *, seed: Seed | None = None) -> bytes:
    """Return `size` incompressible-looking bytes, the same for the same seed (None: random)."""
    if size < 0:
        raise ValueError(f"size must not be negative: {size}")
    key = os.urandom(32) if seed is None else _seed_bytes(seed)
    return hashlib.shake_256(b"ocimirror-layer\0" + key).digest(size)


def _tar_header(name: str, size: int, *, directory: bool = False) -> bytes:
    info = tarfile.TarInfo(name)
    info.size = size
    info.mtime = 0
    info.mode = 0o755 if directory else 0o644
    info.type = tarfile.DIRTYPE if directory else tarfile.REGTYPE
    info.uname = info.gname = "root"
    return info.tobuf(tarfile.USTAR_FORMAT, "utf-8", "strict")


def _tar_one_file(content: bytes) -> list[bytes]:
    """Return the pieces of a tarball holding `data/` and one file with `content`.

    The pieces are not joined, to spare a copy of a large layer; there is no record
    padding after the two end-of-archive blocks, which every tar reader accepts.
    """
    name = f"data/{zlib.crc32(content):08x}-{len(content)}.bin"
    head = _tar_header("data/", 0, directory=True) + _tar_header(name, len(content))
    tail = bytes(-len(content) % tarfile.BLOCKSIZE + 2 * tarfile.BLOCKSIZE)
    return [head, content, tail]


def _gzip_stored(pieces: Sequence[bytes]) -> bytes:
    """Return a gzip stream of the joined pieces in stored deflate blocks (no compression)."""
    # magic, deflate, no flags, mtime 0, no extra flags, OS "unknown"
    parts: list[bytes | memoryview] = [b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff"]
    crc = total = 0
    for piece in pieces:
        crc = zlib.crc32(piece, crc)
        total += len(piece)
        view = memoryview(piece)
        for off in range(0, len(piece), _STORED_BLOCK):
            chunk = view[off : off + _STORED_BLOCK]
            parts.append(struct.pack("<BHH", 0, len(chunk), len(chunk) ^ 0xFFFF))
            parts.append(chunk)
    parts.append(struct.pack("<BHH", 1, 0, 0xFFFF))  # an empty final block ends the stream
    parts.append(struct.pack("<II", crc, total & 0xFFFFFFFF))
    return b"".join(parts)


def pack_layer(content: bytes) -> tuple[bytes, str]:
    """Pack file content into a layer: return the `.tar.gz` bytes and the tar's diff_id."""
    pieces = _tar_one_file(content)
    sha = hashlib.sha256()
    for piece in pieces:
        sha.update(piece)
    return _gzip_stored(pieces), f"sha256:{sha.hexdigest()}"


def _dumps(obj: Mapping[str, Any]) -> bytes:
    return json.dumps(obj, indent=2).encode()


def _desc_json(desc: Descriptor) -> dict[str, Any]:
    return {"mediaType": desc.media_type, "digest": desc.digest, "size": desc.size}


def _platform(text: str, os_version: str | None) -> Platform:
    p = Platform.parse(text)
    if os_version is None:
        os_version = WINDOWS_OS_VERSION if p.os == "windows" else ""
    return Platform(p.os, p.architecture, p.variant, os_version)


def _platform_json(p: Platform) -> dict[str, str]:
    out = {"architecture": p.architecture, "os": p.os}
    if p.os_version:
        out["os.version"] = p.os_version
    if p.variant:
        out["variant"] = p.variant
    return out


# --- images ----------------------------------------------------------------------------


def make_image(
    *,
    layers: Sequence[bytes] | int = 1,
    layer_size: int = 1024,
    seed: Seed = 0,
    platform: str = "linux/amd64",
    os_version: str | None = None,
    oci: bool = True,
    config_extra: Mapping[str, Any] | None = None,
    annotations: Mapping[str, str] | None = None,
    foreign_layer: bool = False,
    shared_layers: Sequence[bytes] = (),
) -> SampleImage:
    """Make a single-platform image (OCI, or Docker schema 2 when `oci` is False).

    `layers` is a count of random layers of `layer_size` bytes each, or the file contents
    of the layers; each becomes a one-file `.tar.gz` (so a blob is slightly larger than
    its content). `shared_layers` are contents put first, so images made with the same
    ones share those blobs. `os_version` defaults to `WINDOWS_OS_VERSION` for Windows.
    `config_extra` keys are set over the top level of the config. `foreign_layer` appends
    a non-distributable layer with `urls`, listed in the manifest but not among the blobs.
    """
    if isinstance(layers, bytes | bytearray):
        raise TypeError("layers must be a count or a sequence of layer contents")
    if annotations and not oci:
        raise ValueError("annotations need an OCI manifest (oci=True)")
    plat = _platform(platform, os_version)
    layer_type = mt.OCI_LAYER if oci else mt.DOCKER_LAYER

    def contents() -> Iterator[bytes]:
        yield from shared_layers
        if isinstance(layers, int):
            for i in range(layers):
                yield random_layer(layer_size, seed=derive_seed(seed, "layer", i))
        else:
            yield from layers

    layer_blobs: list[Blob] = []
    diff_ids: list[str] = []
    for content in contents():
        gz, diff_id = pack_layer(content)
        layer_blobs.append(Blob(layer_type, gz))
        diff_ids.append(diff_id)
    layer_descs = [_desc_json(b.descriptor) for b in layer_blobs]

    if foreign_layer:
        gz, diff_id = pack_layer(random_layer(layer_size, seed=derive_seed(seed, "foreign")))
        foreign_type = mt.OCI_LAYER_NONDIST if oci else mt.DOCKER_FOREIGN_LAYER
        layer_descs.append(
            {
                "mediaType": foreign_type,
                "digest": digests.of(gz),
                "size": len(gz),
                "urls": [FOREIGN_LAYER_URL],
            }
        )
        diff_ids.append(diff_id)

    config: dict[str, Any] = {"created": CREATED, "architecture": plat.architecture, "os": plat.os}
    if plat.os_version:
        config["os.version"] = plat.os_version
    if plat.variant:
        config["variant"] = plat.variant
    config["config"] = {
        "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
        "Cmd": ["/bin/sh"],
    }
    config["rootfs"] = {"type": "layers", "diff_ids": diff_ids}
    config["history"] = [
        {"created": CREATED, "created_by": f"ocimirror testkit layer {i}"}
        for i in range(len(diff_ids))
    ]
    config.update(config_extra or {})
    config_blob = Blob(mt.OCI_CONFIG if oci else mt.DOCKER_CONFIG, _dumps(config))

    media_type = mt.OCI_MANIFEST if oci else mt.DOCKER_MANIFEST
    doc: dict[str, Any] = {
        "schemaVersion": 2,
        "mediaType": media_type,
        "config": _desc_json(config_blob.descriptor),
        "layers": layer_descs,
    }
    if annotations:
        doc["annotations"] = dict(annotations)
    manifest = parse(_dumps(doc), media_type)
    return SampleImage(manifest=manifest, blobs=(config_blob, *layer_blobs))


def make_index(
    platforms: Sequence[str] = DEFAULT_PLATFORMS,
    *,
    oci: bool = True,
    layer_size: int = 1024,
    layers: int = 1,
    seed: Seed = 0,
    windows_os_version: str = WINDOWS_OS_VERSION,
    annotations: Mapping[str, str] | None = None,
) -> SampleImage:
    """Make a multi-arch OCI index (or Docker manifest list) with one child per platform.

    Each child has its own layers; a Windows child carries `os.version` in its config and
    in its index entry.
    """
    if isinstance(platforms, str):
        raise TypeError("platforms must be a sequence of os/arch[/variant] strings")
    if len(set(platforms)) != len(platforms):
        raise ValueError(f"duplicate platforms in {list(platforms)}")
    if annotations and not oci:
        raise ValueError("annotations need an OCI index (oci=True)")
    children: list[SampleImage] = []
    entries: list[dict[str, Any]] = []
    for p in platforms:
        plat = _platform(p, windows_os_version if Platform.parse(p).os == "windows" else "")
        child = make_image(
            layers=layers,
            layer_size=layer_size,
            seed=derive_seed(seed, "platform", p),
            platform=p,
            os_version=plat.os_version,
            oci=oci,
        )
        children.append(child)
        entries.append({**_desc_json(child.descriptor), "platform": _platform_json(plat)})
    media_type = mt.OCI_INDEX if oci else mt.DOCKER_MANIFEST_LIST
    doc: dict[str, Any] = {"schemaVersion": 2, "mediaType": media_type, "manifests": entries}
    if annotations:
        doc["annotations"] = dict(annotations)
    return SampleImage(manifest=parse(_dumps(doc), media_type), children=tuple(children))


def make_nested_index(levels: int, *, seed: Seed = 0, layer_size: int = 256) -> SampleImage:
    """Make `levels` OCI indexes, each naming the next (each distinct, by an annotation),
    the innermost naming one image: what a hostile source can chain without a cycle."""
    if levels < 1:
        raise ValueError(f"levels must be at least 1, not {levels}")
    inner = make_image(layer_size=layer_size, seed=derive_seed(seed, "nested"))
    current = inner
    for level in range(levels, 0, -1):
        doc: dict[str, Any] = {
            "schemaVersion": 2,
            "mediaType": mt.OCI_INDEX,
            "manifests": [_desc_json(current.descriptor)],
            "annotations": {"org.example.level": str(level)},
        }
        current = SampleImage(manifest=parse(_dumps(doc), mt.OCI_INDEX), children=(current,))
    return current


def make_artifact(
    subject: SampleImage | None,
    *,
    artifact_type: str = "application/vnd.example.sbom.v1",
    payload: bytes = b'{"spdxVersion": "SPDX-2.3", "name": "ocimirror-testkit"}\n',
    payload_media_type: str = "application/json",
    annotations: Mapping[str, str] | None = None,
) -> SampleImage:
    """Make an OCI artifact that refers to `subject` (an SBOM-like payload by default).

    It is an OCI image manifest with `artifactType`, the empty descriptor as config, one
    layer holding `payload`, and a `subject` pointing at `subject`'s top manifest (left
    out when `subject` is None). The subject is not part of the result; push it first.
    """
    empty = Blob(mt.OCI_EMPTY, EMPTY_JSON)
    layer = Blob(payload_media_type, payload)
    doc: dict[str, Any] = {
        "schemaVersion": 2,
        "mediaType": mt.OCI_MANIFEST,
        "artifactType": artifact_type,
        "config": _desc_json(empty.descriptor),
        "layers": [_desc_json(layer.descriptor)],
    }
    if subject is not None:
        doc["subject"] = _desc_json(subject.descriptor)
    if annotations:
        doc["annotations"] = dict(annotations)
    return SampleImage(manifest=parse(_dumps(doc), mt.OCI_MANIFEST), blobs=(empty, layer))


# --- pushing ---------------------------------------------------------------------------


async def _chunks(data: bytes) -> AsyncIterator[bytes]:
    for off in range(0, len(data), _PUSH_CHUNK):
        yield data[off : off + _PUSH_CHUNK]


async def push(
    store: Store, repo: str, image: SampleImage, tag: str | None = None, *, concurrency: int = 8
) -> None:
    """Push an image, its children and its blobs into `repo` of a store.

    Blobs go first (up to `concurrency` at once, skipping those the store already has),
    then child manifests by digest, then the top manifest by `tag` (by digest when None).
    """
    sem = asyncio.Semaphore(concurrency)

    async def put(blob: Blob) -> None:
        async with sem:
            if await store.blob_size(repo, blob.digest) is not None:
                return
            await store.put_blob(repo, blob.descriptor, _chunks(blob.data))

    async with asyncio.TaskGroup() as tg:
        for blob in image.all_blobs():
            tg.create_task(put(blob))
    for m in image.all_manifests()[:-1]:
        await store.put_manifest(repo, m.digest, m)
    await store.put_manifest(repo, tag if tag is not None else image.digest, image.manifest)


# --- corpora ---------------------------------------------------------------------------


def corpus_small_tags(
    n_tags: int = 200,
    layers: int = 3,
    layer_size: int = 64 * 1024,
    shared: int = 2,
    seed: Seed = 0,
) -> list[tuple[str, SampleImage]]:
    """Return many small tagged images; the first `shared` layers are common to all tags."""
    if not 0 <= shared <= layers:
        raise ValueError(f"shared must be between 0 and layers ({layers}), not {shared}")
    common = [random_layer(layer_size, seed=derive_seed(seed, "shared", i)) for i in range(shared)]
    return [
        (
            f"tag-{i:04d}",
            make_image(
                layers=layers - shared,
                layer_size=layer_size,
                seed=derive_seed(seed, "small", i),
                shared_layers=common,
            ),
        )
        for i in range(n_tags)
    ]


def corpus_large_layers(
    n_tags: int = 4,
    layers: int = 4,
    layer_size: int = 64 * 1024 * 1024,
    seed: Seed = 0,
) -> Iterator[tuple[str, SampleImage]]:
    """Yield a few tagged images of big unique layers, one at a time to bound memory."""
    for i in range(n_tags):
        image = make_image(layers=layers, layer_size=layer_size, seed=derive_seed(seed, "large", i))
        yield f"large-{i}", image


def corpus_multiarch(
    n_indexes: int = 20,
    platforms: int | Sequence[str] = 4,
    layer_size: int = 1024 * 1024,
    seed: Seed = 0,
) -> Iterator[tuple[str, SampleImage]]:
    """Yield tagged multi-arch indexes of `platforms` children each (a count or a list)."""
    if isinstance(platforms, int):
        available = DEFAULT_PLATFORMS + MORE_PLATFORMS
        if not 1 <= platforms <= len(available):
            raise ValueError(f"platforms must be between 1 and {len(available)}, not {platforms}")
        platforms = available[:platforms]
    chosen = tuple(platforms)

    def indexes() -> Iterator[tuple[str, SampleImage]]:
        for i in range(n_indexes):
            index = make_index(chosen, layer_size=layer_size, seed=derive_seed(seed, "multi", i))
            yield f"multi-{i:03d}", index

    return indexes()


def corpus_faults(seed: Seed = 0) -> list[tuple[str, SampleImage]]:
    """Return the fault tests' corpus: nine small images (48 KiB layers, two of three
    shared) and one multi-arch index (`multi`): ten tags."""
    images = corpus_small_tags(9, layers=3, layer_size=48 * 1024, shared=2, seed=seed)
    index = make_index(("linux/amd64", "linux/arm64/v8"), layer_size=48 * 1024, seed=seed)
    return [*images, ("multi", index)]
