"""The one seam: the `Store` protocol that every place holding images implements.

A registry, an OCI layout directory, an in-memory store and (later) object storage all
answer the same small async protocol, so a copy is always "read from one Store, write to
another", in every direction. Repositories are named within a store (`library/alpine`);
a store that holds a single repository (an OCI layout directory) ignores the name.
Callers ask a store what it can do through its attributes (`verifies_blobs`, `remote`),
never by its type or its reference's scheme; stores/schemes.py opens the right one.
"""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator
from contextlib import AbstractAsyncContextManager
from typing import Protocol, runtime_checkable

from .manifest import Descriptor, Manifest


@runtime_checkable
class Store(Protocol):
    """Anything that holds manifests and blobs by repository."""

    #: A short human name for messages (`registry.example.com`, `oci:./bundle`).
    name: str

    #: True when `put_blob` itself refuses content that does not match the descriptor's
    #: digest and size, storing nothing: the copier then streams bytes without hashing
    #: them a second time. A registry does (`?digest=` is checked, DIGEST_INVALID
    #: otherwise), and so do the layout and memory stores.
    verifies_blobs: bool

    #: True when every call is a request to a server that rations them (a registry):
    #: one tag listing of a destination then saves a HEAD per tag copied there. False
    #: for local stores (a layout directory, memory), where a lookup costs nothing.
    remote: bool

    async def head_manifest(self, repo: str, ref: str) -> Descriptor | None:
        """Return the descriptor of a manifest by tag or digest, or None if absent."""
        ...

    async def get_manifest(self, repo: str, ref: str) -> Manifest:
        """Return a manifest by tag or digest (verified when `ref` is a digest)."""
        ...

    async def put_manifest(self, repo: str, ref: str, manifest: Manifest) -> None:
        """Store a manifest's exact bytes under a tag, or by digest when `ref` is one."""
        ...

    async def list_tags(self, repo: str) -> list[str]:
        """Return every tag in a repository."""
        ...

    async def blob_size(self, repo: str, digest: str) -> int | None:
        """Return the size of a blob if the store has it, else None."""
        ...

    def open_blob(
        self, repo: str, desc: Descriptor
    ) -> AbstractAsyncContextManager[AsyncIterator[bytes]]:
        """Open a blob for streaming: `async with store.open_blob(r, d) as chunks: ...`."""
        ...

    async def put_blob(self, repo: str, desc: Descriptor, chunks: AsyncIterable[bytes]) -> None:
        """Store a blob from a stream of chunks; the caller has checked nothing yet."""
        ...

    async def mount_blob(self, repo: str, desc: Descriptor, from_repo: str) -> bool:
        """Make a blob stored in `from_repo` available in `repo` without moving bytes.

        Returns False when the store cannot (the caller then copies the bytes).
        """
        ...

    async def referrers(
        self, repo: str, digest: str, artifact_type: str | None = None
    ) -> list[Descriptor] | None:
        """Return the descriptors of the manifests whose `subject` is `digest`.

        None means the store has no such index (a registry without the OCI 1.1 API): the
        caller then reads the fallback tag `sha256-<hex>` with `get_manifest`. A store may
        apply the `artifact_type` filter or not; callers filter again.
        """
        ...

    async def put_referrer(self, repo: str, manifest: Manifest) -> bool:
        """Store a manifest that has a `subject`, by digest (blobs already in place).

        Return True when the store now lists it among its subject's referrers itself (a
        registry answering `OCI-Subject`, a layout's index.json, a per-subject index
        object); False when the caller must maintain the fallback index tag
        `sha256-<hex>` (read, merged and written with the manifest methods).
        """
        ...

    async def close(self) -> None:
        """Release connections and files."""
        ...


@runtime_checkable
class TagDeleter(Protocol):
    """A store that can delete a tag (`purge`); stores without it cannot purge."""

    async def delete_tag(self, repo: str, tag: str) -> None:
        """Delete one tag, never another: refuse when that cannot be done alone."""
        ...
