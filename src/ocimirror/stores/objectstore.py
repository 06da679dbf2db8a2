"""BucketStore: a registry laid out in object storage, so a static host can serve it.

The layout is docker-sync's (its users' buckets and CDN rules keep working), at the
bucket's root or under the bucket's configured key prefix:

    v2                              `{}`, so `GET /v2/` can be answered with 200
    v2/<repo>/blobs/<digest>        every blob
    v2/<repo>/manifests/<tag>       a manifest's exact bytes, and the same bytes again
    v2/<repo>/manifests/<digest>    under its digest, both with Content-Type = its media type
    v2/<repo>/tags/list             `{"name": repo, "tags": [...]}`, rewritten at each tag put

Every manifest object also carries the manifest's digest in its metadata
(`docker-content-digest`), so `head_manifest` is one HEAD; `Cache-Control` says digests
are immutable and tags short-lived; with `public_read` each object is written public-read
(S3's ACL, stores/publicread.py). A directory (`file://`) cannot keep metadata, nor
hold a file `v2` beside the directory `v2/` (the web server answers `/v2/` itself), so
there each manifest is also written as `<ref>.<kind>` (`.oci-index`, `.oci-manifest`,
`.docker-list`, `.docker-manifest`), which lets nginx give it its media type by
extension (docs/static-registry.md).

Writes: a blob is streamed in 5 MiB parts (multipart upload beyond one part; at most
UPLOADS large blobs at once, so memory stays bounded whatever the copier's concurrency)
while its digest is computed; a mismatch raises before the last part is handed to obstore,
which then aborts the upload, so no object appears under the final key. A tag's
`tags/list` is read, changed and written back: two writers adding tags to the same
repository at the same moment can lose one of the two names from the list (last writer
wins; the tag objects themselves are both there, and each object is replaced whole,
never torn).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
from collections.abc import AsyncIterable, AsyncIterator, Iterator, Mapping
from contextlib import asynccontextmanager, contextmanager
from datetime import timedelta
from typing import TYPE_CHECKING

import structlog

from .. import digest as digests
from .. import mediatypes as mt
from ..errors import (
    AuthError,
    CorruptUpload,
    DigestMismatch,
    ManifestError,
    NotFound,
    OcimirrorError,
    ReferenceError,
    StoreError,
)
from ..manifest import MAX_MANIFEST_SIZE, Descriptor, Manifest, parse
from . import publicread
from .obstores import brief

if TYPE_CHECKING:
    from obstore.store import ObjectStore

log = structlog.get_logger(__name__)

_STATUS = re.compile(r"status code: (\d{3})")
#: S3's error codes for a body that does not match the checksum or MD5 sent with it.
_CORRUPT_CODES = ("BadDigest", "InvalidDigest", "XAmzContentSHA256Mismatch")

#: The metadata key holding a manifest object's digest (S3: x-amz-meta-docker-content-digest,
#: GCS: x-goog-meta-docker-content-digest).
DIGEST_ATTRIBUTE = "docker-content-digest"
#: The same on Azure, whose metadata names are C# identifiers (a `-` is refused with
#: 400 InvalidMetadata): x-ms-meta-docker_content_digest.
AZURE_DIGEST_ATTRIBUTE = "docker_content_digest"

#: Cache-Control of objects named by digest, and of tag objects and `tags/list`.
IMMUTABLE = "public, max-age=31536000, immutable"
SHORT_LIVED = "public, max-age=60"

#: The size of each part of a blob upload (S3's smallest); a blob up to one part is put
#: in one request.
PART_SIZE = 5 * 1024 * 1024

#: Parts in flight per blob (memory per blob: about PART_SIZE * (PUT_CONCURRENCY + 2)).
PUT_CONCURRENCY = 2

#: Blobs above SMALL_BLOB uploaded at once per store, whatever the copier's concurrency:
#: with the two above, the uploads hold at most about 60 MiB.
UPLOADS = 3
SMALL_BLOB = 1024 * 1024

#: The bytes read per step of a blob download.
READ_CHUNK = 1024 * 1024


#: The extension of a manifest's typed twin in a directory, by media type.
TYPED_EXTENSIONS = {
    mt.OCI_INDEX: "oci-index",
    mt.OCI_MANIFEST: "oci-manifest",
    mt.DOCKER_MANIFEST_LIST: "docker-list",
    mt.DOCKER_MANIFEST: "docker-manifest",
}


def _is_digest(ref: str) -> bool:
    return ":" in ref


def _digest_of(attrs: Mapping[str, str]) -> str:
    """Return the digest a manifest object's metadata holds (either spelling), or ''."""
    return str(attrs.get(DIGEST_ATTRIBUTE) or attrs.get(AZURE_DIGEST_ATTRIBUTE) or "")


class BucketStore:
    """A bucket (or a directory) holding the registry layout, as a Store."""

    def __init__(
        self, store: ObjectStore, *, name: str, prefix: str = "", local: bool = False
    ) -> None:
        """Use `store`; `local` for a directory (no metadata, typed twins, no request costs)."""
        self.store = store
        #: The store that writes (`store` itself, or one that writes objects public-read).
        self.writer = store
        #: Makes a multipart-uploaded blob public-read, when objects are written so.
        self.public: publicread.PublicRead | None = None
        self.name = name
        self.root = f"{prefix.strip('/')}/" if prefix.strip("/") else ""
        #: Every put is checked against the digest before the upload completes.
        self.verifies_blobs = True
        #: Each call is a request the bucket's owner pays for (a directory's are free).
        self.remote = not local
        self.local = local
        from obstore.store import AzureStore

        #: The metadata key a manifest object's digest is written under.
        self.digest_attribute = (
            AZURE_DIGEST_ATTRIBUTE if isinstance(store, AzureStore) else DIGEST_ATTRIBUTE
        )
        self._tag_locks: dict[str, asyncio.Lock] = {}
        self._root_written = False
        self._root_lock = asyncio.Lock()
        self._uploads = asyncio.Semaphore(UPLOADS)

    # -- keys and errors ----------------------------------------------------------------

    def key(self, repo: str, kind: str, name: str) -> str:
        """Return the key of a blob, manifest or tags list (`kind`: blobs, manifests, tags)."""
        if not repo or ".." in repo.split("/") or repo.startswith("/"):
            raise ReferenceError(f"{self.name}: invalid repository {repo!r}")
        if kind == "blobs" and not digests.is_valid(name):
            raise ReferenceError(f"{self.name}: invalid digest {name!r}")
        if kind == "manifests" and (not name or "/" in name or name.startswith(".")):
            raise ReferenceError(f"{self.name}: invalid tag or digest {name!r}")
        return f"{self.root}v2/{repo}/{kind}/{name}"

    @contextmanager
    def _errors(self, action: str, key: str) -> Iterator[None]:
        """Turn obstore's failures into one line naming the bucket, key and cause; a missing
        object stays a FileNotFoundError (unless the bucket itself is missing)."""
        try:
            yield
        except (OcimirrorError, GeneratorExit, asyncio.CancelledError):
            raise
        except Exception as e:
            from obstore.exceptions import PermissionDeniedError, UnauthenticatedError

            text = str(e)
            where = f"{self.name}: {action} {key}"
            if "NoSuchBucket" in text or "bucket does not exist" in text.lower():
                raise NotFound(f"{where}: the bucket does not exist") from None
            if "ContainerNotFound" in text:
                raise NotFound(f"{where}: the container does not exist") from None
            if publicread.NO_ACLS in text:
                raise StoreError(f"{where}: {publicread.NO_ACLS_MESSAGE}") from None
            if isinstance(e, PermissionDeniedError | UnauthenticatedError) or (
                "AccessDenied" in text or "InvalidAccessKeyId" in text
            ):
                message = f"{where}: access denied"
                raise AuthError(message, status=403, public=message) from None
            if any(
                w in text
                for w in ("PermanentRedirect", "AuthorizationHeaderMalformed", "IllegalLocation")
            ):
                raise StoreError(
                    f"{where}: wrong region (the bucket is in another region; set its region)"
                ) from None
            if isinstance(e, FileNotFoundError):
                raise
            if any(w in text for w in _CORRUPT_CODES):
                raise CorruptUpload(
                    f"{where}: the store refused the bytes as damaged (checksum mismatch)"
                ) from None
            # Our words only: what the store wrote goes to the debug log, not the message.
            log.debug("object store request failed", store=self.name, key=key, error=brief(e))
            if self.local:  # a directory: the cause is the filesystem's, and ours to show
                raise StoreError(f"{where}: {brief(e)}") from None
            status = _STATUS.search(text)
            if status:
                raise StoreError(f"{where}: the store answered HTTP {status.group(1)}") from None
            raise StoreError(
                f"{where}: {type(e).__name__} (no answer, or not one we know)"
            ) from None

    async def _put(self, key: str, data: bytes, content_type: str, cache: str, **meta: str) -> None:
        import obstore

        attributes: dict[str, str] = {"Content-Type": content_type, "Cache-Control": cache, **meta}
        with self._errors("write", key):
            await obstore.put_async(
                self.writer, key, data, attributes=None if self.local else attributes
            )

    async def _get(self, key: str) -> tuple[bytes, dict[str, str]] | None:
        import obstore

        try:
            with self._errors("read", key):
                got = await obstore.get_async(self.store, key)
                if got.meta["size"] > MAX_MANIFEST_SIZE:
                    raise ManifestError(
                        f"{self.name}: {key}: {got.meta['size']} bytes is too large for a"
                        f" manifest (limit {MAX_MANIFEST_SIZE})"
                    )
                return bytes(await got.bytes_async()), dict(got.attributes)
        except FileNotFoundError:
            return None

    async def _ensure_root(self) -> None:
        """Write the `v2` object (`{}`) before the first write of this store (not in a
        directory, where `v2` is the directory: the web server answers `/v2/` itself)."""
        if self._root_written or self.local:
            return
        async with self._root_lock:
            if not self._root_written:
                await self._put(f"{self.root}v2", b"{}", "application/json", SHORT_LIVED)
                self._root_written = True

    # -- manifests ----------------------------------------------------------------------

    async def head_manifest(self, repo: str, ref: str) -> Descriptor | None:
        """Return a manifest's descriptor from one HEAD (its metadata), or None if absent."""
        import obstore

        key = self.key(repo, "manifests", ref)
        try:
            with self._errors("look up", key):
                got = await obstore.get_async(self.store, key, options={"head": True})
        except FileNotFoundError:
            return None
        attrs = got.attributes
        ctype = str(attrs.get("Content-Type", "")).split(";", 1)[0].strip()
        dg = ref if _is_digest(ref) else _digest_of(attrs)
        if mt.is_manifest(ctype) and digests.is_valid(dg):
            return Descriptor(ctype, dg, int(got.meta["size"]))
        # No metadata (a directory, or a bucket written by another tool): read it.
        try:
            m = await self.get_manifest(repo, ref)
        except NotFound:
            return None
        return Descriptor(m.media_type, m.digest, m.size)

    async def get_manifest(self, repo: str, ref: str) -> Manifest:
        """Return a manifest by tag or digest, its bytes checked against the digest."""
        key = self.key(repo, "manifests", ref)
        got = await self._get(key)
        if got is None:
            raise NotFound(f"{self.name}: {key}: manifest unknown")
        raw, attrs = got
        ctype = str(attrs.get("Content-Type", ""))
        meta_digest = _digest_of(attrs)
        expected = (
            ref if _is_digest(ref) else (meta_digest if digests.is_valid(meta_digest) else None)
        )
        try:
            return parse(raw, ctype if mt.is_manifest(ctype.split(";")[0]) else "", expected)
        except DigestMismatch as e:
            raise DigestMismatch(e.expected, e.actual, f"{self.name} {key}") from None
        except ManifestError as e:
            raise ManifestError(f"{self.name}: {key}: not a manifest: {e}") from None

    async def put_manifest(self, repo: str, ref: str, manifest: Manifest) -> None:
        """Write a manifest under its digest and, for a tag, under the tag, then list the tag."""
        digests.verify(manifest.raw, manifest.digest, "manifest")
        if _is_digest(ref) and ref != manifest.digest:
            raise DigestMismatch(ref, manifest.digest, "manifest")
        await self._ensure_root()
        await self._put_manifest_object(repo, manifest.digest, manifest, IMMUTABLE)
        if _is_digest(ref):
            return
        await self._put_manifest_object(repo, ref, manifest, SHORT_LIVED)
        await self._add_tag(repo, ref)

    async def _put_manifest_object(self, repo: str, ref: str, m: Manifest, cache: str) -> None:
        key = self.key(repo, "manifests", ref)
        await self._put(key, m.raw, m.media_type, cache, **{self.digest_attribute: m.digest})
        ext = TYPED_EXTENSIONS.get(m.media_type)
        if self.local and ext is not None:
            await self._put(f"{key}.{ext}", m.raw, m.media_type, cache)

    async def _add_tag(self, repo: str, tag: str) -> None:
        lock = self._tag_locks.setdefault(repo, asyncio.Lock())
        async with lock:
            key = self.key(repo, "tags", "list")
            tags = await self._read_tags(key) or []
            if tag in tags:
                return
            doc = {"name": repo, "tags": sorted({*tags, tag})}
            data = json.dumps(doc, separators=(",", ":")).encode()
            await self._put(key, data, "application/json", SHORT_LIVED)

    async def _read_tags(self, key: str) -> list[str] | None:
        got = await self._get(key)
        if got is None:
            return None
        try:
            tags = json.loads(got[0])["tags"]
            if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
                raise TypeError
        except (ValueError, KeyError, TypeError, RecursionError):
            raise StoreError(f"{self.name}: {key}: not a tags list") from None
        return tags

    async def list_tags(self, repo: str) -> list[str]:
        """Return the tags of `tags/list`; without one, the tag objects found by a listing."""
        import obstore

        tags = await self._read_tags(self.key(repo, "tags", "list"))
        if tags is not None:
            return sorted(tags)
        prefix = self.key(repo, "manifests", "x")[:-1]
        found: set[str] = set()
        with self._errors("list", prefix):
            async for batch in obstore.list(self.store, prefix, chunk_size=1000):
                for meta in batch:
                    name = meta["path"].removeprefix(prefix)
                    twin = name.rpartition(".")[2] in TYPED_EXTENSIONS.values()
                    if "/" not in name and not _is_digest(name) and not twin:
                        found.add(name)
        if not found:
            raise NotFound(f"{self.name}: repository {repo} unknown")
        return sorted(found)

    # -- blobs --------------------------------------------------------------------------

    async def blob_size(self, repo: str, digest: str) -> int | None:
        """Return a blob's size from one HEAD, or None if absent."""
        import obstore

        key = self.key(repo, "blobs", digest)
        try:
            with self._errors("look up", key):
                meta = await obstore.head_async(self.store, key)
        except FileNotFoundError:
            return None
        return int(meta["size"])

    @asynccontextmanager
    async def open_blob(self, repo: str, desc: Descriptor) -> AsyncIterator[AsyncIterator[bytes]]:
        """Stream a blob from the bucket."""
        import obstore

        key = self.key(repo, "blobs", desc.digest)
        try:
            with self._errors("read", key):
                got = await obstore.get_async(self.store, key)
        except FileNotFoundError:
            raise NotFound(f"{self.name}: {key}: blob unknown") from None

        async def chunks() -> AsyncIterator[bytes]:
            with self._errors("read", key):
                async for chunk in got.stream(min_chunk_size=READ_CHUNK):
                    yield bytes(chunk)

        yield chunks()

    @asynccontextmanager
    async def read_blob(
        self, repo: str, digest: str, span: tuple[int, int] | None = None
    ) -> AsyncIterator[tuple[int, AsyncIterator[bytes]]]:
        """Open a blob, or bytes `first`..`last` (inclusive) of it, with one GET: yield the
        blob's whole size and its chunks; NotFound when absent. A stream that ends short
        raises StoreError (a served answer must not pass for whole)."""
        import obstore

        key = self.key(repo, "blobs", digest)
        options = {} if span is None else {"range": (span[0], span[1] + 1)}
        try:
            with self._errors("read", key):
                got = await obstore.get_async(self.store, key, options=options)  # type: ignore[arg-type]
        except FileNotFoundError:
            raise NotFound(f"{self.name}: {key}: blob unknown") from None
        size = int(got.meta["size"])
        want = size if span is None else span[1] + 1 - span[0]

        async def chunks() -> AsyncIterator[bytes]:
            seen = 0
            with self._errors("read", key):
                async for chunk in got.stream(min_chunk_size=READ_CHUNK):
                    seen += len(chunk)
                    yield bytes(chunk)
            if seen != want:
                raise StoreError(f"{self.name}: read {key}: {seen} of {want} bytes")

        yield size, chunks()

    async def sign_blob(self, repo: str, digest: str, lifetime: timedelta) -> str | None:
        """Return a presigned URL that lets anyone GET a blob for `lifetime`; None when the
        store cannot sign (a directory)."""
        import obstore
        from obstore.store import AzureStore, GCSStore, S3Store

        store = self.store
        if not isinstance(store, S3Store | GCSStore | AzureStore):
            return None
        key = self.key(repo, "blobs", digest)
        with self._errors("sign", key):
            url: str = await obstore.sign_async(store, "GET", key, lifetime)
        return url

    async def put_blob(self, repo: str, desc: Descriptor, chunks: AsyncIterable[bytes]) -> None:
        """Upload a blob in parts while hashing it; a mismatch aborts the upload."""
        import obstore

        key = self.key(repo, "blobs", desc.digest)
        await self._ensure_root()
        # obstore regroups the stream into PART_SIZE parts itself; `verified` withholds the
        # last chunk until the digest is known, so a mismatch aborts the upload.
        parts = digests.verified(chunks, desc.digest, desc.size, f"blob {desc.digest}")
        attributes = {"Content-Type": "application/octet-stream", "Cache-Control": IMMUTABLE}
        multipart = desc.size > PART_SIZE
        async with contextlib.AsyncExitStack() as stack:
            if desc.size > SMALL_BLOB:
                await stack.enter_async_context(self._uploads)
            with self._errors("write", key):
                await obstore.put_async(
                    # S3 refuses an ACL header on a multipart upload's parts: see below.
                    self.store if multipart else self.writer,
                    key,
                    parts,
                    attributes=None if self.local else attributes,
                    use_multipart=multipart,
                    chunk_size=PART_SIZE,
                    max_concurrency=PUT_CONCURRENCY,
                )
        if multipart and self.public is not None:
            await self.public.grant(key)

    async def referrers(
        self, repo: str, digest: str, artifact_type: str | None = None
    ) -> list[Descriptor] | None:
        """Say the bucket has no referrers API: its referrers are the fallback index
        `sha256-<hex>`, a tag object a static host serves like any other."""
        return None

    async def put_referrer(self, repo: str, manifest: Manifest) -> bool:
        """Store a referrer by digest; the copier keeps its subject's fallback index."""
        await self.put_manifest(repo, manifest.digest, manifest)
        return False

    async def mount_blob(self, repo: str, desc: Descriptor, from_repo: str) -> bool:
        """Copy a blob from another repository of the bucket, server-side (no bytes move)."""
        import obstore

        src = self.key(from_repo, "blobs", desc.digest)
        dst = self.key(repo, "blobs", desc.digest)
        await self._ensure_root()
        try:
            with self._errors("copy", f"{src} to {dst}"):
                await obstore.copy_async(self.writer, src, dst)
        except FileNotFoundError:
            return False
        return True

    async def close(self) -> None:
        """Nothing to release: obstore's connections close with the store object."""


__all__ = [
    "AZURE_DIGEST_ATTRIBUTE",
    "DIGEST_ATTRIBUTE",
    "BucketStore",
]
