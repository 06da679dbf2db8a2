"""A Store over an OCI image layout directory, the format skopeo's `oci:` transport uses.

The layout holds one repository, so every `repo` argument is ignored:

    oci-layout              {"imageLayoutVersion": "1.0.0"}
    index.json              an OCI index; tagged entries carry org.opencontainers.image.ref.name
    blobs/<alg>/<hex>       every blob, manifests included

Tags live in `index.json`; a manifest put by digest (the child of an index) is only a
blob. Every write goes to a temporary file in the same directory and is renamed into
place (`ocimirror.atomicfile`), so a reader never sees half a file and a failed write
leaves nothing behind.
"""

from __future__ import annotations

import asyncio
import errno
import json
import os
import stat
from collections.abc import AsyncIterable, AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from types import TracebackType
from typing import Any, BinaryIO

from .. import digest as digests
from .. import mediatypes as mt
from ..atomicfile import commit_temp, discard_temp, open_temp, write_atomic
from ..errors import DigestMismatch, ManifestError, NotFound, ReferenceError, StoreError
from ..manifest import MAX_MANIFEST_SIZE, Descriptor, Manifest, parse

#: The annotation that names a tag in `index.json`.
REF_NAME = "org.opencontainers.image.ref.name"

#: The content of the `oci-layout` file.
LAYOUT_VERSION = "1.0.0"

#: How much is read or written per thread hop when streaming a blob.
CHUNK_SIZE = 1024 * 1024


def _is_digest(ref: str) -> bool:
    return ":" in ref


def _stat_file(path: Path) -> os.stat_result | None:
    """Return the stat of a regular file, or None when there is none."""
    try:
        st = path.stat()
    except (FileNotFoundError, NotADirectoryError):
        return None
    return st if stat.S_ISREG(st.st_mode) else None


def _read_small(path: Path) -> bytes | None:
    """Return a file's bytes, or None when it does not exist."""
    try:
        return path.read_bytes()
    except (FileNotFoundError, NotADirectoryError):
        return None


def _write_chunk(f: BinaryIO, h: Any, data: bytes) -> None:
    h.update(data)
    f.write(data)


class _Writing:
    """Turns an OSError raised in its block into a StoreError naming the layout and what
    was being written (a context manager that may be entered again and again)."""

    def __init__(self, name: str, what: str) -> None:
        self.name = name
        self.what = what

    def __enter__(self) -> None:
        return None

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if isinstance(exc, OSError):
            cause = exc.strerror or type(exc).__name__
            if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
                cause += " (free space at the target, then run again)"
            raise StoreError(f"{self.name}: cannot write {self.what}: {cause}") from exc


class LayoutStore:
    """An OCI image layout directory as a Store holding a single repository."""

    def __init__(self, path: str | os.PathLike[str], *, create: bool = False) -> None:
        """Open the layout at `path`; with `create`, it is made on the first write."""
        self.path = Path(path)
        self.name = f"oci:{os.fspath(path)}"
        self.verifies_blobs = True
        self.remote = False
        self.create = create
        self._index_lock = asyncio.Lock()
        self._init_lock = asyncio.Lock()
        self._ready = False
        if not create:
            # Opening only looks: two stats, nothing is read or written.
            if not self.path.is_dir():
                raise NotFound(f"{self.path}: no such OCI layout directory")
            if _stat_file(self.path / "oci-layout") is None:
                raise NotFound(f"{self.path}: not an OCI image layout (no oci-layout file)")
            self._ready = True

    # -- paths and files ----------------------------------------------------------------

    @property
    def index_path(self) -> Path:
        """Return the path of `index.json`."""
        return self.path / "index.json"

    def blob_path(self, digest: str) -> Path:
        """Return the path of a blob, refusing anything that is not a well-formed digest."""
        if not digests.is_valid(digest):
            raise ReferenceError(f"{self.name}: invalid digest {digest!r}")
        return self.path / "blobs" / digests.algorithm(digest) / digests.encoded(digest)

    async def _ensure_layout(self) -> None:
        """Create the directory and `oci-layout` before the first write, if needed."""
        if self._ready:
            return
        async with self._init_lock:
            if not self._ready:
                with self._writing("the layout"):
                    await asyncio.to_thread(self._make_layout)
                self._ready = True

    def _make_layout(self) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        marker = self.path / "oci-layout"
        if _stat_file(marker) is None:
            doc = {"imageLayoutVersion": LAYOUT_VERSION}
            write_atomic(marker, json.dumps(doc, separators=(",", ":")).encode())

    def _load_index(self) -> dict[str, Any]:
        """Read and check `index.json`; an absent one is an empty index."""
        raw = _read_small(self.index_path)
        if raw is None:
            return {"schemaVersion": 2, "mediaType": mt.OCI_INDEX, "manifests": []}
        where = str(self.index_path)
        try:
            data = json.loads(raw)
        except (ValueError, UnicodeDecodeError) as e:
            raise ManifestError(f"{where}: not valid JSON: {e}") from None
        except RecursionError:
            raise ManifestError(f"{where}: JSON nested too deeply to parse") from None
        if not isinstance(data, dict):
            raise ManifestError(f"{where}: not a JSON object")
        entries = data.get("manifests", [])
        if not isinstance(entries, list):
            raise ManifestError(f"{where}: 'manifests' is not a list")
        for i, entry in enumerate(entries):
            ann = entry.get("annotations") if isinstance(entry, dict) else None
            if ann is not None and not isinstance(ann, dict):
                raise ManifestError(f"{where} manifests[{i}]: 'annotations' is not an object")
            Descriptor.from_json(entry, f"{where} manifests[{i}]")
        data["manifests"] = entries
        return data

    async def _index(self) -> dict[str, Any]:
        return await asyncio.to_thread(self._load_index)

    @staticmethod
    def _tag_of(entry: dict[str, Any]) -> str | None:
        tag = (entry.get("annotations") or {}).get(REF_NAME)
        return tag if isinstance(tag, str) else None

    async def _entry(self, tag: str) -> dict[str, Any] | None:
        """Return the index entry of a tag (the last one, should there be several)."""
        found = None
        for entry in (await self._index())["manifests"]:
            if self._tag_of(entry) == tag:
                found = entry
        return found

    def _read_manifest_blob(self, digest: str) -> bytes | None:
        path = self.blob_path(digest)
        st = _stat_file(path)
        if st is None:
            return None
        if st.st_size > MAX_MANIFEST_SIZE:
            raise ManifestError(
                f"{path}: {st.st_size} bytes is too large for a manifest"
                f" (limit {MAX_MANIFEST_SIZE})"
            )
        return _read_small(path)

    # -- manifests ----------------------------------------------------------------------

    async def head_manifest(self, repo: str, ref: str) -> Descriptor | None:
        """Return the descriptor of a manifest by tag or digest, or None if absent."""
        if _is_digest(ref):
            raw = await asyncio.to_thread(self._read_manifest_blob, ref)
            if raw is None:
                return None
            m = parse(raw, expected_digest=ref)
            return Descriptor(m.media_type, ref, len(raw))
        entry = await self._entry(ref)
        if entry is None:
            return None
        dg = str(entry["digest"])
        st = await asyncio.to_thread(_stat_file, self.blob_path(dg))
        if st is None:
            return None  # a dangling tag: treated as absent, so a copy rewrites it
        media_type = str(entry.get("mediaType") or "")
        if not mt.is_manifest(media_type):
            raw = await asyncio.to_thread(self._read_manifest_blob, dg)
            if raw is None:
                return None
            media_type = parse(raw, media_type, expected_digest=dg).media_type
        return Descriptor(media_type, dg, st.st_size)

    async def get_manifest(self, repo: str, ref: str) -> Manifest:
        """Return a manifest by tag or digest, its bytes verified against the digest."""
        media_type = ""
        if _is_digest(ref):
            dg = ref
        else:
            entry = await self._entry(ref)
            if entry is None:
                raise NotFound(f"{self.name}:{ref}: manifest unknown")
            dg = str(entry["digest"])
            media_type = str(entry.get("mediaType") or "")
        raw = await asyncio.to_thread(self._read_manifest_blob, dg)
        if raw is None:
            where = f"{self.name}@{ref}" if _is_digest(ref) else f"{self.name}:{ref} ({dg})"
            raise NotFound(f"{where}: manifest unknown")
        return parse(raw, media_type, expected_digest=dg)

    async def put_manifest(self, repo: str, ref: str, manifest: Manifest) -> None:
        """Write a manifest blob; a tag also gets (or moves) its entry in `index.json`."""
        if not ref:
            raise ReferenceError(f"{self.name}: empty tag")
        digests.verify(manifest.raw, manifest.digest, "manifest")
        if _is_digest(ref) and ref != manifest.digest:
            raise DigestMismatch(ref, manifest.digest, "manifest")
        await self._ensure_layout()
        path = self.blob_path(manifest.digest)
        with self._writing(f"manifest {manifest.digest}"):
            await asyncio.to_thread(self._write_blob_bytes, path, manifest.raw)
        if _is_digest(ref):
            return
        entry = {
            "mediaType": manifest.media_type,
            "digest": manifest.digest,
            "size": manifest.size,
            "annotations": {REF_NAME: ref},
        }
        async with self._index_lock:
            with self._writing(f"tag {ref} (index.json)"):
                await asyncio.to_thread(self._set_tag, ref, entry)

    def _write_blob_bytes(self, path: Path, data: bytes) -> None:
        if _stat_file(path) is not None:
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(path, data)

    def _set_tag(self, tag: str, entry: dict[str, Any]) -> None:
        index = self._load_index()
        kept = [e for e in index["manifests"] if self._tag_of(e) != tag]
        index["manifests"] = [*kept, entry]
        index.setdefault("schemaVersion", 2)
        index.setdefault("mediaType", mt.OCI_INDEX)
        write_atomic(self.index_path, json.dumps(index, separators=(",", ":")).encode())

    # -- referrers ----------------------------------------------------------------------

    async def referrers(
        self, repo: str, digest: str, artifact_type: str | None = None
    ) -> list[Descriptor] | None:
        """Return the manifests listed in `index.json` whose `subject` is `digest`.

        Referrers are kept as untagged entries of `index.json`, as oras lays them out, so
        oras (`oras discover --oci-layout`) and this store both find them.
        """
        out: list[Descriptor] = []
        for entry in (await self._index())["manifests"]:
            if self._tag_of(entry) is not None:
                continue
            dg = str(entry["digest"])
            raw = await asyncio.to_thread(self._read_manifest_blob, dg)
            if raw is None:
                continue
            m = parse(raw, str(entry.get("mediaType") or ""), expected_digest=dg)
            subject = m.subject
            if subject is None or subject.digest != digest:
                continue
            desc = m.referrer_descriptor
            if artifact_type is None or desc.artifact_type == artifact_type:
                out.append(desc)
        return out

    async def put_referrer(self, repo: str, manifest: Manifest) -> bool:
        """Write a referrer's blob and list it, untagged, in `index.json` (once)."""
        await self.put_manifest(repo, manifest.digest, manifest)
        desc = manifest.referrer_descriptor
        entry: dict[str, Any] = {
            "mediaType": desc.media_type,
            "digest": desc.digest,
            "size": desc.size,
        }
        if desc.artifact_type:
            entry["artifactType"] = desc.artifact_type
        async with self._index_lock:
            with self._writing(f"referrer {desc.digest} (index.json)"):
                await asyncio.to_thread(self._add_untagged, entry)
        return True

    def _add_untagged(self, entry: dict[str, Any]) -> None:
        index = self._load_index()
        if any(
            e.get("digest") == entry["digest"] and self._tag_of(e) is None
            for e in index["manifests"]
        ):
            return
        index["manifests"] = [*index["manifests"], entry]
        index.setdefault("schemaVersion", 2)
        index.setdefault("mediaType", mt.OCI_INDEX)
        write_atomic(self.index_path, json.dumps(index, separators=(",", ":")).encode())

    async def list_tags(self, repo: str) -> list[str]:
        """Return the tags named in `index.json`, sorted and without duplicates."""
        index = await self._index()
        return sorted({t for e in index["manifests"] if (t := self._tag_of(e)) is not None})

    # -- blobs --------------------------------------------------------------------------

    async def blob_size(self, repo: str, digest: str) -> int | None:
        """Return the size of a blob file, or None if there is none."""
        st = await asyncio.to_thread(_stat_file, self.blob_path(digest))
        return st.st_size if st is not None else None

    @asynccontextmanager
    async def open_blob(self, repo: str, desc: Descriptor) -> AsyncIterator[AsyncIterator[bytes]]:
        """Open a blob file as a stream of 1 MiB chunks, read in a worker thread."""
        path = self.blob_path(desc.digest)
        try:
            f = await asyncio.to_thread(open, path, "rb")
        except (FileNotFoundError, NotADirectoryError):
            raise NotFound(f"{self.name}@{desc.digest}: blob unknown") from None

        async def chunks() -> AsyncIterator[bytes]:
            while chunk := await asyncio.to_thread(f.read, CHUNK_SIZE):
                yield chunk

        try:
            yield chunks()
        finally:
            f.close()

    async def put_blob(self, repo: str, desc: Descriptor, chunks: AsyncIterable[bytes]) -> None:
        """Stream a blob into a temporary file, check digest and size, then rename it in.

        A blob already present is left alone and `chunks` is not consumed.
        """
        final = self.blob_path(desc.digest)
        if await asyncio.to_thread(_stat_file, final) is not None:
            return
        await self._ensure_layout()
        with self._writing(f"blob {desc.digest}"):
            await asyncio.to_thread(final.parent.mkdir, parents=True, exist_ok=True)
            tmp, f = await asyncio.to_thread(open_temp, final.parent)
        h = digests.hasher(desc.digest)
        total = 0
        pending = bytearray()
        # Only our own file operations: an OSError from `chunks` is the source's.
        writing = self._writing(f"blob {desc.digest}")
        try:
            async for chunk in chunks:
                total += len(chunk)
                if total > desc.size:
                    raise DigestMismatch(
                        desc.digest, f"<more than {desc.size} bytes>", f"blob {desc.digest}"
                    )
                pending += chunk
                if len(pending) >= CHUNK_SIZE:
                    with writing:
                        await asyncio.to_thread(_write_chunk, f, h, bytes(pending))
                    pending.clear()
            if pending:
                with writing:
                    await asyncio.to_thread(_write_chunk, f, h, bytes(pending))
            actual = f"{digests.algorithm(desc.digest)}:{h.hexdigest()}"
            if actual != desc.digest:
                raise DigestMismatch(desc.digest, actual, f"blob {desc.digest}")
            if total != desc.size:
                raise DigestMismatch(
                    desc.digest,
                    f"{actual} ({total} bytes, expected {desc.size})",
                    f"blob {desc.digest}",
                )
            with writing:
                await asyncio.to_thread(commit_temp, f, tmp, final)
        except BaseException:
            # Synchronous on purpose: cleanup must run even when the task is cancelled.
            discard_temp(f, tmp)
            raise

    def _writing(self, what: str) -> _Writing:
        """A `with` turning a failed write (a full disk, a file size limit, no permission)
        into one error naming the layout and what was being written; reusable."""
        return _Writing(self.name, what)

    async def mount_blob(self, repo: str, desc: Descriptor, from_repo: str) -> bool:
        """Tell whether the blob is already here: every repository shares the one layout."""
        return await self.blob_size(repo, desc.digest) is not None

    async def close(self) -> None:
        """Nothing to release: files are closed as soon as they are used."""


__all__ = ["LayoutStore"]
