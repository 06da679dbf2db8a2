"""Uploads: the push half of the distribution API, as a mixin of `RegistryClient`.

A blob goes up as a POST that starts a session (or mounts the blob from another
repository of the same registry: one POST, 201), then either one PUT streaming the whole
body with `?digest=` (monolithic) or, once a registry has refused that, PATCHes of
`CHUNK_SIZE` bytes and an empty PUT (chunked). The registry checks the digest of what it
received against `?digest=` and refuses the PUT (DIGEST_INVALID) when they differ. A push
to a repository the registry does not know can create it first where the host's options
say how (ECR). Every request goes through the client's `_send` (auth, pace, accounting).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterable, Awaitable, Callable
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import urlencode

import aiohttp

from .errors import OcimirrorError, RegistryError, UploadRefused
from .manifest import Descriptor

#: Bytes per PATCH when a registry refuses monolithic uploads.
CHUNK_SIZE = 8 * 1024 * 1024
#: The longest abandoning an upload session may take (a DELETE, best effort).
CANCEL_UPLOAD_SECONDS = 2.0


class _Options(Protocol):
    """What uploads read of the host's options (`client.HostOptions`)."""

    @property
    def create_repository(self) -> Callable[[str], Awaitable[None]] | None:
        """Creates a repository a push found missing; None: a missing one is an error."""


class Uploads:
    """Start, mount, send (monolithic or chunked) and cancel blob uploads."""

    host: str
    options: _Options
    #: Set once the registry refuses a monolithic upload; later uploads go chunked.
    chunked_uploads: bool
    #: Repository creations started (`HostOptions.create_repository`), by repository.
    _creations: dict[str, asyncio.Future[None]]

    if TYPE_CHECKING:  # RegistryClient's own, which these methods send through

        def url(self, path: str) -> str: ...

        async def _send(
            self,
            method: str,
            url: str,
            *,
            scopes: frozenset[str],
            headers: dict[str, str] | None = None,
            data: Any = None,
            replayable: bool = True,
            allow_redirects: bool = True,
        ) -> aiohttp.ClientResponse: ...

        async def _retrying(self, fn: Callable[[], Any]) -> Any: ...

        async def error_from(self, resp: aiohttp.ClientResponse, what: str) -> RegistryError: ...

        def _upload_url(self, repo: str, location: str, base: str) -> str: ...

        def _scopes(self, repo: str, *, push: bool = False) -> frozenset[str]: ...

    async def start_upload(
        self, repo: str, *, mount: str | None = None, from_repo: str | None = None
    ) -> str | None:
        """Start an upload (POST); return its location, or None if a mount succeeded."""
        query = ""
        scopes = self._scopes(repo, push=True)
        if mount and from_repo:
            query = "?" + urlencode({"mount": mount, "from": from_repo})
            scopes = scopes | self._scopes(from_repo)

        async def once() -> str | None:
            resp = await self._send(
                "POST", self.url(f"/v2/{repo}/blobs/uploads/{query}"), scopes=scopes
            )
            if resp.status == 201 and mount:
                resp.release()
                return None
            if resp.status != 202:
                raise await self.error_from(resp, f"{self.host}/{repo}: starting an upload")
            resp.release()
            location = resp.headers.get("Location")
            if not location:
                raise RegistryError(f"{self.host}/{repo}: upload started without a Location")
            return self._upload_url(repo, location, self.url(f"/v2/{repo}/blobs/uploads/"))

        result: str | None = await self._creating(repo, once)
        return result

    async def _creating(self, repo: str, fn: Callable[[], Any]) -> Any:
        """Run a push request; where the options create repositories (ECR), a repository
        the registry says does not exist (NAME_UNKNOWN) is created and the request sent
        again; concurrent pushes to it share one creation."""
        try:
            return await self._retrying(fn)
        except RegistryError as e:
            create = self.options.create_repository
            if create is None or "NAME_UNKNOWN" not in e.codes:
                raise
        creation = self._creations.get(repo)
        if creation is None:
            creation = self._creations[repo] = asyncio.ensure_future(create(repo))
        await creation
        return await self._retrying(fn)

    async def cancel_upload(self, location: str) -> None:
        """Abandon an upload session (best effort, for `CANCEL_UPLOAD_SECONDS` at most: a
        copy being stopped must not wait on a registry that does not answer; the registry
        expires an abandoned session itself)."""
        try:
            async with asyncio.timeout(CANCEL_UPLOAD_SECONDS):
                resp = await self._send("DELETE", location, scopes=frozenset())
                resp.release()
        except (aiohttp.ClientError, OcimirrorError, TimeoutError):
            pass

    async def finish_upload(
        self,
        repo: str,
        location: str,
        desc: Descriptor,
        chunks: AsyncIterable[bytes],
    ) -> None:
        """Send a blob's bytes to an upload session: one streamed PUT, or PATCHes then PUT."""
        where = f"{self.host}/{repo}@{desc.digest}"
        scopes = self._scopes(repo, push=True)
        if self.chunked_uploads:
            location = await self._patch_chunks(repo, location, chunks, where)
            body: Any = b""
            headers = {"Content-Type": "application/octet-stream", "Content-Length": "0"}
        else:
            body = chunks
            headers = {
                "Content-Type": "application/octet-stream",
                "Content-Length": str(desc.size),
            }
        resp = await self._send(
            "PUT",
            _with_query(location, digest=desc.digest),
            scopes=scopes,
            headers=headers,
            data=body,
            replayable=False,
        )
        if resp.status not in (201, 204):
            err = await self.error_from(resp, f"{where}: upload refused")
            refused = not self.chunked_uploads and resp.status in (400, 405, 411, 413, 501)
            if refused and not {"DIGEST_INVALID", "BLOB_UPLOAD_INVALID"} & set(err.codes):
                raise UploadRefused(str(err), status=resp.status, url=err.url) from err
            raise err
        resp.release()

    async def _patch_chunks(
        self, repo: str, location: str, chunks: AsyncIterable[bytes], where: str
    ) -> str:
        """Upload a stream as PATCH requests of CHUNK_SIZE bytes; return the final location."""
        offset = 0
        buf = bytearray()

        async def flush(data: bytes) -> None:
            nonlocal offset, location
            resp = await self._send(
                "PATCH",
                location,
                scopes=self._scopes(repo, push=True),
                headers={
                    "Content-Type": "application/octet-stream",
                    "Content-Range": f"{offset}-{offset + len(data) - 1}",
                    "Content-Length": str(len(data)),
                },
                data=data,
            )
            if resp.status != 202:
                raise await self.error_from(resp, f"{where}: chunk at {offset} refused")
            resp.release()
            offset += len(data)
            location = self._upload_url(repo, resp.headers.get("Location", location), location)

        async for chunk in chunks:
            buf += chunk
            while len(buf) >= CHUNK_SIZE:
                await flush(bytes(buf[:CHUNK_SIZE]))
                del buf[:CHUNK_SIZE]
        if buf:
            await flush(bytes(buf))
        return location


def _with_query(url: str, **params: str) -> str:
    sep = "&" if "?" in url else "?"
    return url + sep + urlencode(params)
