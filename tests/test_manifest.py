"""Pure-logic tests for digests, manifest parsing, platform matching and challenges."""

from __future__ import annotations

import json

import pytest

from ocimirror import digest as digests
from ocimirror import mediatypes as mt
from ocimirror.auth.challenge import parse_challenges
from ocimirror.errors import DigestMismatch, ManifestError
from ocimirror.manifest import MAX_MANIFEST_SIZE, Platform, filter_index, parse

EMPTY = "sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a"


def _image(**extra: object) -> bytes:
    doc = {
        "schemaVersion": 2,
        "mediaType": mt.OCI_MANIFEST,
        "config": {"mediaType": mt.OCI_CONFIG, "digest": EMPTY, "size": 2},
        "layers": [{"mediaType": mt.OCI_LAYER, "digest": EMPTY, "size": 2}],
        **extra,
    }
    return json.dumps(doc).encode()


def _index(platforms: list[dict[str, str] | None]) -> bytes:
    entries = []
    for i, p in enumerate(platforms):
        e: dict[str, object] = {
            "mediaType": mt.OCI_MANIFEST,
            "digest": digests.of(str(i).encode()),
            "size": 1,
        }
        if p is not None:
            e["platform"] = p
        entries.append(e)
    return json.dumps(
        {"schemaVersion": 2, "mediaType": mt.OCI_INDEX, "manifests": entries}
    ).encode()


def test_parse_keeps_bytes_and_digest() -> None:
    raw = _image()
    m = parse(raw, mt.OCI_MANIFEST)
    assert m.raw is raw
    assert m.digest == digests.of(raw)
    assert [b.digest for b in m.blobs] == [EMPTY, EMPTY]
    assert not m.is_index


def test_parse_verifies_expected_digest() -> None:
    raw = _image()
    with pytest.raises(DigestMismatch, match=r"expected sha256:0+"):
        parse(raw, mt.OCI_MANIFEST, expected_digest="sha256:" + "0" * 64)


def test_media_type_from_body_when_header_is_generic() -> None:
    m = parse(_image(), "application/json")
    assert m.media_type == mt.OCI_MANIFEST
    idx = parse(_index([{"os": "linux", "architecture": "amd64"}]), "text/plain")
    assert idx.is_index


@pytest.mark.parametrize(
    ("raw", "ctype", "message"),
    [
        (b'{"schemaVersion": 1, "name": "x"}', "", "schema 1"),
        (b"{}", mt.DOCKER_SCHEMA1_SIGNED, "schema 1"),
        (b"not json", mt.OCI_MANIFEST, "not valid JSON"),
        (b"[1, 2]", mt.OCI_MANIFEST, "not a JSON object"),
        (b'{"schemaVersion": 2, "foo": 1}', "application/x-unknown", "unknown media type"),
        (b'{"schemaVersion": 2, "mediaType": "%s"}' % mt.OCI_INDEX.encode(), "", "no 'manifests'"),
        (
            b'{"schemaVersion":2,"config":{"digest":"sha256:zz","size":1},"layers":[]}',
            mt.OCI_MANIFEST,
            "invalid digest",
        ),
        (
            b'{"schemaVersion":2,"config":{"digest":"%s","size":-1},"layers":[]}' % EMPTY.encode(),
            mt.OCI_MANIFEST,
            "invalid size",
        ),
    ],
)
def test_parse_refuses_bad_manifests(raw: bytes, ctype: str, message: str) -> None:
    with pytest.raises(ManifestError, match=message):
        parse(raw, ctype)


def test_parse_refuses_oversized_manifest() -> None:
    raw = b" " * (MAX_MANIFEST_SIZE + 1)
    with pytest.raises(ManifestError, match="too large"):
        parse(raw, mt.OCI_MANIFEST)


def test_artifact_subject_and_foreign_layers() -> None:
    subject = {"mediaType": mt.OCI_MANIFEST, "digest": EMPTY, "size": 2}
    raw = _image(artifactType="application/x.sbom", subject=subject)
    m = parse(raw, mt.OCI_MANIFEST)
    assert m.subject is not None
    assert m.subject.digest == EMPTY
    foreign = json.loads(_image())
    foreign["layers"].append(
        {
            "mediaType": mt.DOCKER_FOREIGN_LAYER,
            "digest": EMPTY,
            "size": 2,
            "urls": ["https://example.invalid/l"],
        }
    )
    layers = parse(json.dumps(foreign).encode(), mt.OCI_MANIFEST).layers
    assert [layer.is_foreign for layer in layers] == [False, True]


@pytest.mark.parametrize(
    ("platform", "pattern", "expected"),
    [
        ("linux/amd64", "linux/amd64", True),
        ("linux/arm64/v8", "linux/arm64", True),
        ("linux/arm64/v8", "linux/arm64/v8", True),
        ("linux/arm/v7", "linux/arm/v6", False),
        ("linux/arm/v7", "linux/*", True),
        ("windows/amd64", "linux/*", False),
        ("windows/amd64", "*/amd64", True),
    ],
)
def test_platform_matching(platform: str, pattern: str, expected: bool) -> None:
    assert Platform.parse(platform).matches(pattern) is expected


def test_platform_parse_rejects_garbage() -> None:
    for bad in ("linux", "linux/", "/amd64", "a/b/c/d"):
        with pytest.raises(ValueError, match="invalid platform"):
            Platform.parse(bad)


def test_filter_index_makes_new_bytes_and_keeps_order() -> None:
    idx = parse(
        _index(
            [
                {"os": "linux", "architecture": "amd64"},
                {"os": "linux", "architecture": "arm64", "variant": "v8"},
                {"os": "windows", "architecture": "amd64"},
                None,
            ]
        ),
        mt.OCI_INDEX,
    )
    f = filter_index(idx, ["linux/*"])
    assert [str(d.platform) for d in f.manifests] == ["linux/amd64", "linux/arm64/v8"]
    assert f.digest == digests.of(f.raw) != idx.digest
    assert parse(f.raw, f.media_type).digest == f.digest
    with pytest.raises(ManifestError, match="no platform matches s390x"):
        filter_index(idx, ["s390x"])


async def test_verified_stream_raises_before_last_chunk() -> None:
    data = [b"a" * 10, b"b" * 10]

    async def chunks():  # type: ignore[no-untyped-def]
        for c in data:
            yield c

    good = digests.of(b"".join(data))
    assert [c async for c in digests.verified(chunks(), good, 20)] == data
    got: list[bytes] = []

    async def consume() -> None:
        async for c in digests.verified(chunks(), digests.of(b"other"), 20):
            got.append(c)

    with pytest.raises(DigestMismatch):
        await consume()
    assert got == data[:1]  # the last chunk is withheld from a consumer of bad content
    with pytest.raises(DigestMismatch, match="more than 5 bytes"):
        _ = [c async for c in digests.verified(chunks(), good, 5)]


def test_challenges() -> None:
    (bearer,) = parse_challenges(
        'Bearer realm="https://auth.example/token",service="reg",scope="repository:a:pull"'
    )
    assert (bearer.scheme, bearer.realm, bearer.service, bearer.scopes) == (
        "bearer",
        "https://auth.example/token",
        "reg",
        ["repository:a:pull"],
    )
    two = parse_challenges('Basic realm="r", Bearer realm="x",scope="a b"')
    assert [c.scheme for c in two] == ["basic", "bearer"]
    assert two[1].scopes == ["a", "b"]
