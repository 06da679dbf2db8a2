"""RegistryStore: the Store protocol over a RegistryClient (one registry host)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterable, AsyncIterator
from contextlib import asynccontextmanager

from ..client import RegistryClient
from ..errors import RegistryError, UploadRefused
from ..manifest import Descriptor, Manifest


class RegistryStore:
    """A registry host seen as a Store; repositories are the registry's own."""

    def __init__(self, client: RegistryClient) -> None:
        self.client = client
        self.name = client.host
        #: The registry checks the digest of every upload (DIGEST_INVALID otherwise).
        self.verifies_blobs = True
        #: Every call is an HTTP request the registry may count.
        self.remote = True
        #: `mount_blob(repo, desc, repo)` asks whether `repo` holds the blob (the copier's
        #: look into a repository without tags), in the POST an upload starts with anyway.
        self.mounts_from_itself = True
        # Upload sessions opened by a failed mount, reused by the put that follows.
        self._pending: dict[tuple[str, str], str] = {}

    async def head_manifest(self, repo: str, ref: str) -> Descriptor | None:
        """Return a manifest's descriptor by HEAD, or None when absent."""
        return await self.client.head_manifest(repo, ref)

    async def get_manifest(self, repo: str, ref: str) -> Manifest:
        """Return a manifest's exact bytes, verified when fetched by digest."""
        return await self.client.get_manifest(repo, ref)

    async def put_manifest(self, repo: str, ref: str, manifest: Manifest) -> None:
        """Push a manifest's exact bytes under a tag or digest."""
        await self.client.put_manifest(repo, ref, manifest)

    async def referrers(
        self, repo: str, digest: str, artifact_type: str | None = None
    ) -> list[Descriptor] | None:
        """Ask the referrers API; None when the registry has none (404/405/501)."""
        answer = await self.client.referrers(repo, digest, artifact_type)
        return None if answer is None else answer[0]

    async def put_referrer(self, repo: str, manifest: Manifest) -> bool:
        """Push a referrer by digest; True when the registry answered `OCI-Subject`."""
        return await self.client.put_referrer(repo, manifest)

    async def list_tags(self, repo: str) -> list[str]:
        """Return every tag of a repository."""
        return await self.client.list_tags(repo)

    async def delete_tag(self, repo: str, tag: str) -> None:
        """Delete a tag: by tag where the registry can, else by digest when no other tag
        shares the manifest (deleting a digest removes every tag that points at it)."""
        try:
            await self.client.delete_manifest(repo, tag)
            return
        except RegistryError as e:
            if e.status not in (400, 405) and "UNSUPPORTED" not in e.codes:
                raise
        desc = await self.client.head_manifest(repo, tag)
        if desc is None:
            return
        for other in await self.client.list_tags(repo):
            if other == tag:
                continue
            shared = await self.client.head_manifest(repo, other)
            if shared is not None and shared.digest == desc.digest:
                raise RegistryError(
                    f"{self.name}/{repo}:{tag}: not deleted: the registry deletes by digest"
                    f" only and tag {other} shares the manifest"
                )
        await self.client.delete_manifest(repo, desc.digest)

    async def blob_size(self, repo: str, digest: str) -> int | None:
        """Return a blob's size by HEAD, or None when absent."""
        return await self.client.blob_size(repo, digest)

    @asynccontextmanager
    async def open_blob(self, repo: str, desc: Descriptor) -> AsyncIterator[AsyncIterator[bytes]]:
        """Stream a blob from the registry."""
        async with self.client.open_blob(repo, desc.digest) as chunks:
            yield chunks

    async def put_blob(self, repo: str, desc: Descriptor, chunks: AsyncIterable[bytes]) -> None:
        """Upload a blob: reuse a session left by a failed mount, else start one."""
        location = self._pending.pop((repo, desc.digest), None)
        if location is None:
            location = await self.client.start_upload(repo)
            assert location is not None
        try:
            await self.client.finish_upload(repo, location, desc, chunks)
        except UploadRefused:
            self.client.chunked_uploads = True
            await self.client.cancel_upload(location)
            raise
        except BaseException:
            await self.client.cancel_upload(location)
            raise

    async def mount_blob(self, repo: str, desc: Descriptor, from_repo: str) -> bool:
        """Mount a blob from another repository of this registry (one POST)."""
        location = await self.client.start_upload(repo, mount=desc.digest, from_repo=from_repo)
        if location is None:
            return True
        old = self._pending.pop((repo, desc.digest), None)
        if old is not None:
            await self.client.cancel_upload(old)
        self._pending[(repo, desc.digest)] = location
        return False

    async def close(self) -> None:
        """Abandon unused upload sessions and close the client."""
        pending, self._pending = list(self._pending.values()), {}
        # At once: each may wait its bounded time on a registry that does not answer.
        await asyncio.gather(*(self.client.cancel_upload(loc) for loc in pending))
        await self.client.close()
