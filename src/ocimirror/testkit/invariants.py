"""Invariants a mirror target must hold after any fault: checked by walking it.

`check_store(store, repo)` walks every tag of a repository in any `Store` (a registry, an
OCI layout, a bucket): the tag's manifest, the child manifests of an index (fetched by
digest, so their bytes are verified), and every blob they name, read to the end and
hashed. What is missing or does not match is returned as `Violation`s; an empty list
means no tag names content that is not there.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .. import digest as digests
from ..errors import DigestMismatch, NotFound, OcimirrorError
from ..manifest import Descriptor, Manifest
from ..store import Store

__all__ = ["Violation", "Walk", "check_store"]


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
