"""Invariants a mirror target must hold after any fault: checked by walking it.

`check_store(store, repo)` walks every tag of a repository in any `Store` (a registry, an
OCI layout, a bucket): the tag's manifest, the child manifests of an index (fetched by
digest, so their bytes are verified), and every blob they name, read to the end and
hashed. What is missing or does not match is returned as `Violation`s; an empty list
means no tag names content that is not there.

`assert_sound(store, repo)` asserts that `check_store` finds nothing wrong (and, given
`tags`, that it walked that many tags); `complete_blobs(store, repo, digests)` says which
of some blobs are whole there now (a rerun must not upload those again).

`check_blob_dir(root)` checks a content-addressed directory (the proxy cache's
`blobs/<alg>/<hex>`, an OCI layout's `blobs/`): every complete file hashes to its name, so
nothing short or corrupt was kept; temporary files of writes in progress are skipped.

`check_blob_objects(store)` checks the same layout in an object store (the proxy's
`--cache s3://...`): every object under `blobs/` is named `blobs/<alg>/<hex>` and hashes to
it (a put is atomic, so there is no temporary object to skip: any other name is a
violation), and every manifest media type under `manifests/` has its blob beside it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from .. import digest as digests
from ..atomicfile import TEMP_PREFIX
from ..errors import DigestMismatch, NotFound, OcimirrorError
from ..manifest import Descriptor, Manifest
from ..store import Store

if TYPE_CHECKING:
    from obstore.store import ObjectStore

__all__ = [
    "Violation",
    "Walk",
    "assert_sound",
    "check_blob_dir",
    "check_blob_objects",
    "check_store",
    "complete_blobs",
]


@dataclass(frozen=True)
class Violation:
    """Something a tag names that is missing or wrong at the target."""

    tag: str
    what: str
    problem: str

    def __str__(self) -> str:
        return f"{self.tag}: {self.what}: {self.problem}"


@dataclass
class Walk:
    """What a check looked at, and what it found wrong."""

    tags: int = 0
    manifests: int = 0
    blobs: int = 0
    violations: list[Violation] = field(default_factory=list)


async def check_store(store: Store, repo: str, *, tags: list[str] | None = None) -> Walk:
    """Walk `tags` (default: every tag) of `repo` and verify everything they reach."""
    walk = Walk()
    try:
        names = tags if tags is not None else await store.list_tags(repo)
    except NotFound:
        return walk
    checked_blobs: set[str] = set()
    for tag in sorted(names):
        walk.tags += 1
        try:
            top = await store.get_manifest(repo, tag)
        except OcimirrorError as e:
            walk.violations.append(Violation(tag, "manifest", str(e)))
            continue
        await _walk_manifest(store, repo, tag, top, walk, checked_blobs)
    return walk


async def assert_sound(store: Store, repo: str, tags: int | None = None) -> Walk:
    """Assert that no tag of `repo` names content that is missing or wrong (and, given
    `tags`, that there are that many tags); return the walk."""
    walk = await check_store(store, repo)
    assert not walk.violations, [str(v) for v in walk.violations]
    if tags is not None:
        assert walk.tags == tags, f"{walk.tags} tags, not {tags}"
    return walk


async def complete_blobs(store: Store, repo: str, digests: Iterable[str]) -> set[str]:
    """Return those of `digests` whose blob is whole in `repo` now."""
    return {d for d in digests if await store.blob_size(repo, d) is not None}


async def _walk_manifest(
    store: Store, repo: str, tag: str, manifest: Manifest, walk: Walk, checked: set[str]
) -> None:
    walk.manifests += 1
    if manifest.is_index:
        for child in manifest.manifests:
            try:
                sub = await store.get_manifest(repo, child.digest)  # verified by digest
            except OcimirrorError as e:
                walk.violations.append(Violation(tag, f"manifest {child.digest}", str(e)))
                continue
            await _walk_manifest(store, repo, tag, sub, walk, checked)
        return
    for blob in manifest.blobs:
        if blob.is_foreign or blob.digest in checked:
            continue
        problem = await _check_blob(store, repo, blob)
        if problem:
            walk.violations.append(Violation(tag, f"blob {blob.digest}", problem))
        else:
            checked.add(blob.digest)
            walk.blobs += 1


async def _check_blob(store: Store, repo: str, desc: Descriptor) -> str:
    """Read a blob whole and hash it; return what is wrong, or '' when it is right."""
    try:
        size = 0
        async with store.open_blob(repo, desc) as chunks:
            async for chunk in digests.verified(chunks, desc.digest, desc.size, "blob"):
                size += len(chunk)
    except NotFound:
        return "missing"
    except DigestMismatch as e:
        return str(e)
    except OcimirrorError as e:
        return f"unreadable: {e}"
    if size != desc.size:
        return f"size {size}, descriptor says {desc.size}"
    return ""


def check_blob_dir(root: Path) -> Walk:
    """Hash every blob file under `root/blobs/<alg>/<hex>`; a file whose bytes do not
    hash to its name is a violation (`tag` is the file's path)."""
    walk = Walk()
    for path in sorted((root / "blobs").glob("*/*")):
        if not path.is_file() or path.name.startswith(TEMP_PREFIX):
            continue
        alg = path.parent.name
        try:
            h = hashlib.new(alg)
        except ValueError:
            walk.violations.append(Violation(str(path), "blob", f"unknown algorithm {alg}"))
            continue
        with path.open("rb") as f:
            while chunk := f.read(1024 * 1024):
                h.update(chunk)
        walk.blobs += 1
        if h.hexdigest() != path.name:
            problem = f"holds sha {h.hexdigest()[:12]}…, {path.stat().st_size} bytes"
            walk.violations.append(Violation(str(path), "blob", problem))
    return walk


def check_blob_objects(store: ObjectStore) -> Walk:
    """Hash every object under `blobs/` of a bucket laid out as the proxy cache; a key that
    is not `blobs/<alg>/<hex>`, or an object whose bytes do not hash to its key, or a
    `manifests/<alg>/<hex>` media type without its blob, is a violation (`tag` is the key)."""
    import obstore

    walk = Walk()
    blobs: set[str] = set()
    for batch in obstore.list(store, "blobs/", chunk_size=1000):
        for meta in batch:
            key = meta["path"]
            alg, _, hexpart = key.removeprefix("blobs/").partition("/")
            try:
                h = hashlib.new(alg)
            except ValueError:
                walk.violations.append(Violation(key, "blob", f"unknown algorithm {alg!r}"))
                continue
            if len(hexpart) != h.digest_size * 2 or hexpart.strip("0123456789abcdef"):
                walk.violations.append(Violation(key, "blob", "not named by a digest"))
                continue
            size = 0
            for chunk in obstore.get(store, key).stream():
                h.update(chunk)
                size += len(chunk)
            walk.blobs += 1
            blobs.add(f"{alg}/{hexpart}")
            if h.hexdigest() != hexpart:
                problem = f"holds sha {h.hexdigest()[:12]}…, {size} bytes"
                walk.violations.append(Violation(key, "blob", problem))
    for batch in obstore.list(store, "manifests/", chunk_size=1000):
        for meta in batch:
            key = meta["path"]
            walk.manifests += 1
            if key.removeprefix("manifests/") not in blobs:
                walk.violations.append(Violation(key, "manifest", "media type without its blob"))
    return walk
