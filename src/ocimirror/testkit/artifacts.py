"""Signatures, attestations and SBOMs shaped as cosign, sigstore and SPDX tools make them.

Nothing is really signed (no key, no Rekor entry): the bytes only have the shape real
tools give them, which is what a mirror must carry unchanged.

* `cosign_signature`: cosign's legacy signature image, pushed under `sha256-<hex>.sig`: a
  simple-signing payload layer (`application/vnd.dev.cosign.simplesigning.v1+json`) whose
  descriptor carries the `dev.cosignproject.cosign/signature` annotation.
* `signature_referrer`: the same payload as an OCI 1.1 referrer (`artifactType`
  `application/vnd.dev.cosign.artifact.sig.v1+json`, `subject`), as cosign makes it with
  `--registry-referrers-mode=oci-1-1`; any subject, including another referrer.
* `intoto_attestation`: an in-toto statement in a DSSE envelope, as a referrer.
* `spdx_sbom`: an SPDX 2.3 document as a referrer (`application/spdx+json`).
* `push_fallback`: push referrers the way oras and cosign do at a registry without the
  referrers API: the manifests by digest, then the fallback index `sha256-<hex>`.
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Mapping, Sequence
from typing import Any

from .. import digest as digests
from .. import mediatypes as mt
from ..manifest import Descriptor, Manifest, parse
from ..store import Store
from .images import EMPTY_JSON, Blob, SampleImage, push

SIMPLE_SIGNING = "application/vnd.dev.cosign.simplesigning.v1+json"
COSIGN_SIG = "application/vnd.dev.cosign.artifact.sig.v1+json"
DSSE = "application/vnd.dsse.envelope.v1+json"
INTOTO = "application/vnd.in-toto+json"
SPDX = "application/spdx+json"
NOTATION = "application/vnd.cncf.notary.signature"
SIGNATURE_ANNOTATION = "dev.cosignproject.cosign/signature"


def _dumps(obj: Mapping[str, Any]) -> bytes:
    return json.dumps(obj, indent=2).encode()


def _desc(blob: Blob, annotations: Mapping[str, str] | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"mediaType": blob.media_type, "digest": blob.digest, "size": blob.size}
    if annotations:
        out["annotations"] = dict(annotations)
    return out


def _fake_signature(payload: bytes, seed: str) -> str:
    """Base64 of 64 bytes derived from the payload: the length of an ECDSA P-256 signature."""
    raw = hashlib.sha512(seed.encode() + payload).digest()
    return base64.b64encode(raw).decode()


def simple_signing_payload(subject: Descriptor, reference: str) -> bytes:
    """The payload cosign signs: the image's reference and digest, as JSON."""
    doc = {
        "critical": {
            "identity": {"docker-reference": reference},
            "image": {"docker-manifest-digest": subject.digest},
            "type": "cosign container image signature",
        },
        "optional": None,
    }
    return json.dumps(doc, separators=(",", ":")).encode()


def _manifest(
    layers: Sequence[dict[str, Any]],
    config: Blob,
    *,
    artifact_type: str | None = None,
    subject: Descriptor | None = None,
    annotations: Mapping[str, str] | None = None,
) -> Manifest:
    doc: dict[str, Any] = {"schemaVersion": 2, "mediaType": mt.OCI_MANIFEST}
    if artifact_type:
        doc["artifactType"] = artifact_type
    doc["config"] = _desc(config)
    doc["layers"] = list(layers)
    if subject is not None:
        doc["subject"] = {
            "mediaType": subject.media_type,
            "digest": subject.digest,
            "size": subject.size,
        }
    if annotations:
        doc["annotations"] = dict(annotations)
    return parse(_dumps(doc), mt.OCI_MANIFEST)


def cosign_signature(subject: Descriptor, reference: str = "example.com/app") -> SampleImage:
    """cosign's legacy signature image (for the tag `sha256-<hex>.sig`)."""
    payload = Blob(SIMPLE_SIGNING, simple_signing_payload(subject, reference))
    config = Blob(
        mt.OCI_CONFIG,
        _dumps(
            {
                "architecture": "",
                "os": "",
                "config": {},
                "rootfs": {"type": "layers", "diff_ids": [payload.digest]},
            }
        ),
    )
    layer = _desc(payload, {SIGNATURE_ANNOTATION: _fake_signature(payload.data, "legacy")})
    return SampleImage(manifest=_manifest([layer], config), blobs=(config, payload))


def signature_referrer(
    subject: Descriptor, reference: str = "example.com/app", *, artifact_type: str = COSIGN_SIG
) -> SampleImage:
    """A cosign signature as an OCI 1.1 referrer of `subject` (an image or a referrer)."""
    payload = Blob(SIMPLE_SIGNING, simple_signing_payload(subject, reference))
    empty = Blob(mt.OCI_EMPTY, EMPTY_JSON)
    layer = _desc(payload, {SIGNATURE_ANNOTATION: _fake_signature(payload.data, artifact_type)})
    manifest = _manifest(
        [layer],
        empty,
        artifact_type=artifact_type,
        subject=subject,
        annotations={"org.opencontainers.image.created": "1970-01-01T00:00:00Z"},
    )
    return SampleImage(manifest=manifest, blobs=(empty, payload))


def intoto_attestation(
    subject: Descriptor, predicate: str = "https://slsa.dev/provenance/v1"
) -> SampleImage:
    """An in-toto statement (SLSA provenance by default) in a DSSE envelope, as a referrer."""
    statement = {
        "_type": "https://in-toto.io/Statement/v1",
        "subject": [{"name": "app", "digest": {"sha256": digests.encoded(subject.digest)}}],
        "predicateType": predicate,
        "predicate": {"buildDefinition": {"buildType": "https://example.com/testkit"}},
    }
    body = json.dumps(statement, separators=(",", ":")).encode()
    envelope = {
        "payloadType": INTOTO,
        "payload": base64.b64encode(body).decode(),
        "signatures": [{"keyid": "", "sig": _fake_signature(body, "dsse")}],
    }
    layer_blob = Blob(DSSE, json.dumps(envelope, separators=(",", ":")).encode())
    empty = Blob(mt.OCI_EMPTY, EMPTY_JSON)
    layer = _desc(layer_blob, {"predicateType": predicate, SIGNATURE_ANNOTATION: ""})
    manifest = _manifest([layer], empty, artifact_type=INTOTO, subject=subject)
    return SampleImage(manifest=manifest, blobs=(empty, layer_blob))


def spdx_sbom(subject: Descriptor, name: str = "app") -> SampleImage:
    """An SPDX 2.3 SBOM of `subject` as an OCI artifact."""
    doc = {
        "spdxVersion": "SPDX-2.3",
        "dataLicense": "CC0-1.0",
        "SPDXID": "SPDXRef-DOCUMENT",
        "name": name,
        "documentNamespace": f"https://example.com/spdx/{digests.encoded(subject.digest)}",
        "creationInfo": {"created": "1970-01-01T00:00:00Z", "creators": ["Tool: testkit"]},
        "packages": [
            {"SPDXID": "SPDXRef-busybox", "name": "busybox", "versionInfo": "1.36.1"},
        ],
    }
    sbom = Blob(SPDX, _dumps(doc))
    empty = Blob(mt.OCI_EMPTY, EMPTY_JSON)
    manifest = _manifest(
        [_desc(sbom, {"org.opencontainers.image.title": "sbom.spdx.json"})],
        empty,
        artifact_type=SPDX,
        subject=subject,
        annotations={"org.opencontainers.image.description": f"SBOM of {name}"},
    )
    return SampleImage(manifest=manifest, blobs=(empty, sbom))


def fallback_tag_of(digest: str) -> str:
    """The fallback tag of a subject: `sha256-<hex>`."""
    return f"{digests.algorithm(digest)}-{digests.encoded(digest)}"


def listing(artifact: SampleImage) -> dict[str, Any]:
    """The index entry of a referrer: as the API and fallback index list it."""
    data = artifact.manifest.data
    entry: dict[str, Any] = {
        "mediaType": artifact.manifest.media_type,
        "digest": artifact.digest,
        "size": artifact.manifest.size,
    }
    artifact_type = data.get("artifactType") or data["config"]["mediaType"]
    entry["artifactType"] = artifact_type
    if data.get("annotations"):
        entry["annotations"] = data["annotations"]
    return entry


async def push_fallback(store: Store, repo: str, subject: str, *artifacts: SampleImage) -> None:
    """Push referrers of `subject` and add them to its fallback index (read, add, write)."""
    for artifact in artifacts:
        await push(store, repo, artifact)
    tag = fallback_tag_of(subject)
    entries: list[Any] = []
    if await store.head_manifest(repo, tag) is not None:
        entries = list((await store.get_manifest(repo, tag)).data["manifests"])
    have = {e["digest"] for e in entries}
    entries += [listing(a) for a in artifacts if a.digest not in have]
    doc = {"schemaVersion": 2, "mediaType": mt.OCI_INDEX, "manifests": entries}
    await store.put_manifest(repo, tag, parse(_dumps(doc), mt.OCI_INDEX))


__all__ = [
    "COSIGN_SIG",
    "DSSE",
    "INTOTO",
    "NOTATION",
    "SIGNATURE_ANNOTATION",
    "SIMPLE_SIGNING",
    "SPDX",
    "cosign_signature",
    "fallback_tag_of",
    "intoto_attestation",
    "listing",
    "push_fallback",
    "signature_referrer",
    "simple_signing_payload",
    "spdx_sbom",
]
