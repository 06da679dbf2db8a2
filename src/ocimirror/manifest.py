"""Parsed, read-only views over manifest bytes: Descriptor, Platform, ImageManifest, Index.

The raw bytes are always kept (`Manifest.raw`) and are what gets stored and pushed; the
parsed fields only tell the engine what to copy.
"""

from __future__ import annotations

import fnmatch
import json
from dataclasses import dataclass, field
from typing import Any

from . import digest as digests
from . import mediatypes as mt
from .errors import ManifestError

#: The largest manifest we accept, as the distribution spec suggests (4 MiB).
MAX_MANIFEST_SIZE = 4 * 1024 * 1024


@dataclass(frozen=True)
class Platform:
    """An OS/architecture/variant triple, as in an index entry."""

    os: str
    architecture: str
    variant: str = ""
    os_version: str = ""

    @classmethod
    def parse(cls, text: str) -> Platform:
        """Parse `os/arch[/variant]` (e.g. `linux/arm64/v8`)."""
        parts = text.strip().split("/")
        if len(parts) not in (2, 3) or not all(parts):
            raise ValueError(f"invalid platform {text!r}: expected os/arch[/variant]")
        return cls(parts[0], parts[1], parts[2] if len(parts) == 3 else "")

    def __str__(self) -> str:
        base = f"{self.os}/{self.architecture}"
        return f"{base}/{self.variant}" if self.variant else base

    def matches(self, pattern: str) -> bool:
        """Match against `os/arch[/variant]`, where each part may be a glob (`linux/*`)."""
        parts = pattern.strip().split("/")
        if len(parts) < 2:
            return False
        if not fnmatch.fnmatchcase(self.os, parts[0]):
            return False
        if not fnmatch.fnmatchcase(self.architecture, parts[1]):
            return False
        if len(parts) >= 3:
            return fnmatch.fnmatchcase(self.variant, parts[2])
        return True


@dataclass(frozen=True)
class Descriptor:
    """A content descriptor: media type, digest, size and the optional extras."""

    media_type: str
    digest: str
    size: int
    urls: tuple[str, ...] = ()
    platform: Platform | None = None
    artifact_type: str = ""
    annotations: tuple[tuple[str, str], ...] = ()

    @property
    def is_foreign(self) -> bool:
        """Tell whether this is a non-distributable layer that lives at external URLs."""
        return bool(self.urls) or self.media_type in (
            mt.DOCKER_FOREIGN_LAYER,
            mt.OCI_LAYER_NONDIST,
            "application/vnd.oci.image.layer.nondistributable.v1.tar",
            "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd",
        )

    @classmethod
    def from_json(cls, obj: Any, where: str) -> Descriptor:
        """Build a descriptor from its JSON object, naming `where` in errors."""
        if not isinstance(obj, dict):
            raise ManifestError(f"{where}: descriptor is not an object")
        try:
            media_type = str(obj.get("mediaType", ""))
            dg = obj["digest"]
            size = obj["size"]
        except KeyError as e:
            raise ManifestError(f"{where}: descriptor lacks {e.args[0]!r}") from None
        if not isinstance(dg, str) or not digests.is_valid(dg):
            raise ManifestError(f"{where}: invalid digest {dg!r}")
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise ManifestError(f"{where}: invalid size {size!r}")
        plat = None
        p = obj.get("platform")
        if isinstance(p, dict):
            plat = Platform(
                os=str(p.get("os", "")),
                architecture=str(p.get("architecture", "")),
                variant=str(p.get("variant", "")),
                os_version=str(p.get("os.version", "")),
            )
        urls = obj.get("urls") or ()
        if not isinstance(urls, list | tuple):
            raise ManifestError(f"{where}: invalid urls {urls!r} (not a list)")
        ann = obj.get("annotations") or {}
        if not isinstance(ann, dict):
            raise ManifestError(f"{where}: invalid annotations {ann!r} (not an object)")
        return cls(
            media_type=media_type,
            digest=dg,
            size=size,
            urls=tuple(str(u) for u in urls),
            platform=plat,
            artifact_type=str(obj.get("artifactType", "")),
            annotations=tuple(sorted((str(k), str(v)) for k, v in ann.items())),
        )


@dataclass(frozen=True)
class Manifest:
    """A manifest or index: its exact bytes, media type and digest, plus parsed JSON."""

    raw: bytes
    media_type: str
    digest: str
    data: dict[str, Any] = field(repr=False, compare=False)

    @property
    def is_index(self) -> bool:
        """Tell whether this is an index / manifest list."""
        return mt.is_index(self.media_type)

    @property
    def size(self) -> int:
        """Return the length of the raw bytes."""
        return len(self.raw)

    @property
    def descriptor(self) -> Descriptor:
        """Return a descriptor that points at this manifest."""
        return Descriptor(self.media_type, self.digest, len(self.raw))

    @property
    def manifests(self) -> list[Descriptor]:
        """Return the children of an index (empty for an image)."""
        return [
            Descriptor.from_json(m, f"{self.digest} manifests[{i}]")
            for i, m in enumerate(self.data.get("manifests") or [])
        ]

    @property
    def config(self) -> Descriptor | None:
        """Return the config descriptor of an image (None for an index)."""
        c = self.data.get("config")
        return Descriptor.from_json(c, f"{self.digest} config") if c is not None else None

    @property
    def layers(self) -> list[Descriptor]:
        """Return the layer descriptors of an image (empty for an index)."""
        return [
            Descriptor.from_json(m, f"{self.digest} layers[{i}]")
            for i, m in enumerate(self.data.get("layers") or [])
        ]

    @property
    def blobs(self) -> list[Descriptor]:
        """Return every blob an image refers to: config first, then layers."""
        cfg = self.config
        return ([cfg] if cfg is not None else []) + self.layers

    @property
    def subject(self) -> Descriptor | None:
        """Return the subject of an OCI artifact or referrer, if any."""
        s = self.data.get("subject")
        return Descriptor.from_json(s, f"{self.digest} subject") if s is not None else None

    @property
    def referrer_descriptor(self) -> Descriptor:
        """Return the descriptor listing this manifest among its subject's referrers.

        As the referrers API lists it: `artifactType` (else the config's media type) and
        the manifest's annotations.
        """
        artifact_type = self.data.get("artifactType")
        if not isinstance(artifact_type, str) or not artifact_type:
            config = self.config
            artifact_type = config.media_type if config is not None else ""
        ann = self.data.get("annotations")
        annotations = (
            tuple(sorted((str(k), str(v)) for k, v in ann.items())) if isinstance(ann, dict) else ()
        )
        return Descriptor(
            self.media_type,
            self.digest,
            len(self.raw),
            artifact_type=artifact_type,
            annotations=annotations,
        )


def parse(raw: bytes, media_type: str = "", expected_digest: str | None = None) -> Manifest:
    """Parse manifest bytes, checking size, digest, JSON shape and media type.

    `media_type` is the Content-Type the bytes came with; the `mediaType` field inside
    wins when the header is missing or generic. Schema 1 is refused.
    """
    if len(raw) > MAX_MANIFEST_SIZE:
        raise ManifestError(f"manifest is too large: {len(raw)} bytes (limit {MAX_MANIFEST_SIZE})")
    if expected_digest is not None:
        digests.verify(raw, expected_digest, "manifest")
        dg = expected_digest
    else:
        dg = digests.of(raw)
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as e:
        raise ManifestError(f"manifest {dg} is not valid JSON: {e}") from None
    except RecursionError:
        raise ManifestError(f"manifest {dg} is JSON nested too deeply to parse") from None
    if not isinstance(data, dict):
        raise ManifestError(f"manifest {dg} is not a JSON object")
    inner = data.get("mediaType")
    ctype = media_type.split(";", 1)[0].strip()
    if data.get("schemaVersion") == 1 or ctype in mt.SCHEMA1_TYPES:
        raise ManifestError(
            f"manifest {dg} is Docker schema 1, which is deprecated and not supported"
        )
    if not mt.is_manifest(ctype):
        if isinstance(inner, str) and mt.is_manifest(inner):
            ctype = inner
        elif "manifests" in data:
            ctype = mt.OCI_INDEX
        elif "config" in data and "layers" in data:
            ctype = mt.OCI_MANIFEST
        else:
            raise ManifestError(f"manifest {dg} has an unknown media type {media_type or inner!r}")
    if mt.is_index(ctype):
        if not isinstance(data.get("manifests"), list):
            raise ManifestError(f"index {dg} has no 'manifests' list")
    elif not isinstance(data.get("config"), dict) or not isinstance(data.get("layers", []), list):
        raise ManifestError(f"image manifest {dg} lacks 'config' or 'layers'")
    m = Manifest(raw=raw, media_type=ctype, digest=dg, data=data)
    # Validate every descriptor now, so errors surface before any copying starts.
    _ = m.manifests, m.blobs, m.subject
    return m


def filter_index(index: Manifest, platforms: list[str]) -> Manifest:
    """Return a new index holding only the children whose platform matches a pattern.

    This is the one place new manifest bytes are made; children without a platform
    (attestations, artifacts) are dropped with the rest. When every child matches, the
    index itself is returned: its bytes and digest are kept.
    """
    kept = []
    for entry, desc in zip(index.data["manifests"], index.manifests, strict=True):
        if desc.platform is not None and any(desc.platform.matches(p) for p in platforms):
            kept.append(entry)
    if len(kept) == len(index.manifests):
        return index  # nothing dropped: the index as it is, its digest kept
    if not kept:
        wanted = ", ".join(platforms)
        have = ", ".join(str(d.platform) for d in index.manifests if d.platform) or "none"
        raise ManifestError(f"no platform matches {wanted} (available: {have})")
    data = dict(index.data)
    data["manifests"] = kept
    raw = json.dumps(data, indent=3).encode()
    return Manifest(raw=raw, media_type=index.media_type, digest=digests.of(raw), data=data)
