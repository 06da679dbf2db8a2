"""An in-memory Store, for unit tests and as a reference implementation of the protocol."""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator
from contextlib import asynccontextmanager

from .. import digest as digests
from ..errors import NotFound
from ..manifest import Descriptor, Manifest


class MemoryStore:
    """Holds manifests and blobs in dictionaries, one namespace per repository."""

    def __init__(self, name: str = "memory") -> None:
        self.name = name
        self.verifies_blobs = True
        self.remote = False
        self.manifests: dict[tuple[str, str], Manifest] = {}
        self.tags: dict[tuple[str, str], str] = {}
        self.blobs: dict[str, bytes] = {}
        self.blob_repos: dict[str, set[str]] = {}

    def _resolve(self, repo: str, ref: str) -> Manifest | None:
        dg = ref if ":" in ref else self.tags.get((repo, ref))
        return self.manifests.get((repo, dg)) if dg else None

    async def head_manifest(self, repo: str, ref: str) -> Descriptor | None:
        """Return the descriptor of a manifest by tag or digest, or None if absent."""
        m = self._resolve(repo, ref)
        return m.descriptor if m else None

    async def get_manifest(self, repo: str, ref: str) -> Manifest:
        """Return a manifest by tag or digest."""
        m = self._resolve(repo, ref)
        if m is None:
            raise NotFound(f"{self.name}/{repo}:{ref}: manifest unknown")
        return m

    async def put_manifest(self, repo: str, ref: str, manifest: Manifest) -> None:
        """Store a manifest under a tag or by digest."""
        self.manifests[(repo, manifest.digest)] = manifest
        if ":" not in ref:
            self.tags[(repo, ref)] = manifest.digest

    async def delete_tag(self, repo: str, tag: str) -> None:
        """Remove a tag (its manifest stays, reachable by digest)."""
        self.tags.pop((repo, tag), None)

    async def referrers(
        self, repo: str, digest: str, artifact_type: str | None = None
    ) -> list[Descriptor] | None:
        """Return the manifests of `repo` whose subject is `digest` (an API, like OCI 1.1)."""
        out = []
        for (r, _), m in sorted(self.manifests.items()):
            subject = m.subject
            if r == repo and subject is not None and subject.digest == digest:
                desc = m.referrer_descriptor
                if artifact_type is None or desc.artifact_type == artifact_type:
                    out.append(desc)
        return out

    async def put_referrer(self, repo: str, manifest: Manifest) -> bool:
        """Store a referrer by digest; `referrers` finds it from now on."""
        await self.put_manifest(repo, manifest.digest, manifest)
        return True

    async def list_tags(self, repo: str) -> list[str]:
        """Return the tags of a repository, sorted."""
        return sorted(t for (r, t) in self.tags if r == repo)

    async def blob_size(self, repo: str, digest: str) -> int | None:
        """Return a blob's size if this repository has it."""
        if repo in self.blob_repos.get(digest, set()):
            return len(self.blobs[digest])
        return None

    @asynccontextmanager
    async def open_blob(self, repo: str, desc: Descriptor) -> AsyncIterator[AsyncIterator[bytes]]:
        """Open a blob as a stream of 64 KiB chunks."""
        if await self.blob_size(repo, desc.digest) is None:
            raise NotFound(f"{self.name}/{repo}@{desc.digest}: blob unknown")
        data = self.blobs[desc.digest]

        async def chunks() -> AsyncIterator[bytes]:
            for i in range(0, len(data), 65536):
                yield data[i : i + 65536]

        yield chunks()

    async def put_blob(self, repo: str, desc: Descriptor, chunks: AsyncIterable[bytes]) -> None:
        """Store a blob after checking its digest."""
        data = b"".join([c async for c in chunks])
        digests.verify(data, desc.digest, "blob")
        self.blobs[desc.digest] = data
        self.blob_repos.setdefault(desc.digest, set()).add(repo)

    async def mount_blob(self, repo: str, desc: Descriptor, from_repo: str) -> bool:
        """Link a blob from another repository of this store."""
        if from_repo in self.blob_repos.get(desc.digest, set()):
            self.blob_repos[desc.digest].add(repo)
            return True
        return False

    async def close(self) -> None:
        """Nothing to release."""
