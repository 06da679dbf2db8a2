"""The parsers hostile input reaches, fuzzed with hypothesis (issue 18): image references
(the command line, config files, API bodies), bucket names and prefixes, manifests and
indexes (any source or upstream), the proxy's paths, queries and token scopes, Host
headers. Whatever the input, each either parses or raises its own clear error type
(ReferenceError, ManifestError, DigestMismatch, Refused, ValueError where documented):
never another exception. What parses holds what the parser promises.

150 examples per property in the default run (no deadlines: conftest's profiles;
`HYPOTHESIS_PROFILE=ci` derandomizes); `OCIMIRROR_SOAK=1` runs 20,000 each.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ocimirror import mediatypes as mt
from ocimirror.errors import DigestMismatch, ManifestError, ReferenceError
from ocimirror.manifest import Descriptor, Manifest, parse
from ocimirror.netpolicy import split_host as split_registry
from ocimirror.proxy.paths import (
    Refused,
    api_query,
    catalog_query,
    is_digest,
    is_repository,
    parse_api_path,
    pull_scope,
)
from ocimirror.reference import Reference, parse_bucket, parse_prefix, split_bucket
from ocimirror.service.access import split_host


def attempt(step: Callable[[], Any], *errors: type[Exception]) -> tuple[Any, Exception | None]:
    """Run `step`: (its result, None), or (None, the error) for one of `errors`; any
    other exception propagates (and fails the test)."""
    try:
        return step(), None
    except errors as e:
        return None, e


#: Examples per property: a few seconds each in CI; `OCIMIRROR_SOAK=1` for a long run.
SOAK = os.environ.get("OCIMIRROR_SOAK", "") not in ("", "0")
FUZZ = settings(
    max_examples=20_000 if SOAK else 150,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)

# -- references ------------------------------------------------------------------------------

_HEX = "0123456789abcdef"
_DIGESTS = st.sampled_from(["sha256", "sha512", "md5", "SHA256", ""]).flatmap(
    lambda alg: st.text(_HEX + "xA/.:", min_size=0, max_size=130).map(lambda h: f"{alg}:{h}")
) | st.text(_HEX, min_size=64, max_size=64).map(lambda h: f"sha256:{h}")
_PIECES = st.sampled_from(
    [
        "docker.io", "registry.example.com:5000", "127.0.0.1:5000", "[::1]:5000", "localhost",
        "ghcr.io", "library", "app", "a", "a.b", "a__b", "a-b", "A", "..", ".", "%2e%2e", "",
        "/", "//", ":", "@", "1", "latest", "v1.0", "-x", "x" * 130, "\x00", "\r\n", " ",
        "oci:", "docker://", "file://", "s3://", "r2://", "gs://", "az://", "s3:us-east-1:",
        "r2:acct:", "/tmp/layout", "./rel", "~", "?", "#", "\\", "é",
    ]
)  # fmt: skip
_REFERENCES = (
    st.lists(_PIECES | _DIGESTS, max_size=10).map("".join)
    | st.text(max_size=80)
    | st.builds(
        "{}/{}{}".format,
        _PIECES,
        st.lists(_PIECES, max_size=4).map("/".join),
        st.sampled_from([":", "@", ""]).flatmap(
            lambda sep: (_DIGESTS if sep == "@" else _PIECES).map(lambda r: sep + r)
        ),
    )
)


@FUZZ
@given(_REFERENCES)
def test_a_reference_parses_or_is_a_reference_error(text: str) -> None:
    """Whatever the text: a Reference whose text parses to itself again, or a
    ReferenceError; nothing it accepts has `..`, a control character or a bad tag."""
    ref, error = attempt(lambda: Reference.parse(text), ReferenceError)
    if error is not None:
        assert str(error)
        return
    again = Reference.parse(str(ref))
    assert again == ref
    assert not any(ord(c) < 0x20 for c in str(ref))
    if ref.repository:
        assert ".." not in ref.repository.split("/")
        assert is_repository(ref.repository) or ref.transport != "docker"
    if ref.digest is not None:
        assert is_digest(ref.digest) or ref.digest.split(":")[0] not in ("sha256", "sha512")


@FUZZ
@given(_REFERENCES)
def test_prefixes_and_buckets_parse_or_are_reference_errors(text: str) -> None:
    for parser in (parse_prefix, parse_bucket, split_bucket):
        _, error = attempt(lambda p=parser: p(text), ReferenceError)  # type: ignore[misc]
        assert error is None or str(error)


# -- manifests -------------------------------------------------------------------------------

_JSON_LEAF = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20)
_ANY_JSON = st.recursive(
    _JSON_LEAF,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=20,
)
_MEDIA_TYPES = st.sampled_from(
    [mt.OCI_MANIFEST, mt.OCI_INDEX, mt.DOCKER_MANIFEST, mt.DOCKER_MANIFEST_LIST, mt.OCI_LAYER,
     mt.OCI_CONFIG, "application/json", "", "text/html", "application/vnd.oci.image.manifest.v1+json; charset=utf-8",
     "application/vnd.docker.distribution.manifest.v1+prettyjws"]
)  # fmt: skip


def _field(good: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """A field's good value most of the time, anything else sometimes."""
    return st.one_of(good, good, good, _ANY_JSON)


_DESCRIPTOR = st.fixed_dictionaries(
    {
        "mediaType": _field(_MEDIA_TYPES),
        "digest": _field(_DIGESTS),
        "size": _field(st.integers(min_value=-1, max_value=2**64)),
    },
    optional={
        "platform": _field(
            st.fixed_dictionaries(
                {"os": _field(st.sampled_from(["linux", "windows", ""])),
                 "architecture": _field(st.sampled_from(["amd64", "arm64", ""]))},
                optional={"variant": _field(st.text(max_size=4))},
            )
        ),
        "annotations": _field(st.dictionaries(st.text(max_size=8), _field(st.text(max_size=8)))),
        "urls": _field(st.lists(st.text(max_size=20), max_size=2)),
        "artifactType": _field(_MEDIA_TYPES),
    },
)  # fmt: skip
_DESCRIPTORS = _field(st.lists(_field(_DESCRIPTOR), max_size=4))
_MANIFEST_DOC = st.fixed_dictionaries(
    {"schemaVersion": _field(st.sampled_from([2, 1]))},
    optional={
        "mediaType": _field(_MEDIA_TYPES),
        "config": _field(_DESCRIPTOR),
        "layers": _DESCRIPTORS,
        "manifests": _DESCRIPTORS,
        "subject": _field(_DESCRIPTOR),
        "artifactType": _field(_MEDIA_TYPES),
        "annotations": _field(st.dictionaries(st.text(max_size=8), st.text(max_size=8))),
    },
)
_RAW = (
    _MANIFEST_DOC.map(lambda d: json.dumps(d).encode())
    | _ANY_JSON.map(lambda d: json.dumps(d).encode())
    | st.binary(max_size=200)
    | st.integers(min_value=1, max_value=100_000).map(lambda n: b"[" * n + b"]" * n)
    | st.integers(min_value=1, max_value=100_000).map(lambda n: b'{"manifests":' * n)
)


@FUZZ
@given(_RAW, _MEDIA_TYPES, st.booleans())
def test_a_manifest_parses_or_is_a_manifest_error(raw: bytes, media_type: str, pin: bool) -> None:
    """Any bytes, any Content-Type, with or without the digest asked for: a Manifest whose
    descriptors all read, or a ManifestError (a DigestMismatch for a wrong digest)."""
    expected = "sha256:" + hashlib.sha256(raw).hexdigest() if pin else None
    m, error = attempt(lambda: parse(raw, media_type, expected), ManifestError)
    if error is not None:
        assert str(error)
        return
    assert_readable(m)
    wrong = "sha256:" + hashlib.sha256(raw + b" ").hexdigest()
    _, mismatch = attempt(lambda: parse(raw, media_type, wrong), DigestMismatch)
    assert mismatch is not None, "a wrong digest was accepted"


def assert_readable(m: Manifest) -> None:
    """Every view of a parsed manifest reads without an exception."""
    assert m.digest.startswith("sha256:")
    assert mt.is_manifest(m.media_type)
    for desc in [*m.manifests, *m.blobs, *([m.subject] if m.subject else [])]:
        assert isinstance(desc, Descriptor)
        assert desc.size >= 0
        assert is_digest(desc.digest) or desc.digest.split(":")[0] not in ("sha256", "sha512")
    assert m.referrer_descriptor.digest == m.digest


# -- the proxy's and the service's small parsers -----------------------------------------------

_PATH_TEXT = st.text(max_size=60) | st.lists(
    st.sampled_from(["a", "..", ".", "%2e", "%2F", "%00", "manifests", "blobs", "tags", "list",
                     "referrers", "uploads", "sha256:" + "a" * 64, "", "%", "%zz", "\x00", "é"]),
    max_size=8,
).map("/".join)  # fmt: skip


@FUZZ
@given(_PATH_TEXT, st.lists(st.tuples(st.text(max_size=10), st.text(max_size=20)), max_size=4))
def test_proxy_paths_and_queries_parse_or_are_refused(
    raw: str, query: list[tuple[str, str]]
) -> None:
    for step in (
        lambda: parse_api_path(raw),
        lambda: api_query("tags", query),
        lambda: api_query("referrers", query),
        lambda: catalog_query(query, "team/"),
    ):
        _, refused = attempt(step, Refused)
        if refused is not None:
            assert isinstance(refused, Refused)
            assert 400 <= refused.status < 500
            assert refused.code
    assert pull_scope(raw) is None or is_repository(pull_scope(raw) or "")


@FUZZ
@given(st.text(max_size=40))
def test_host_headers_and_registry_hosts_parse_or_are_refused(text: str) -> None:
    parts = split_host(text)
    assert parts is None or (parts[1] is None or 0 < parts[1] < 65536)
    _, error = attempt(lambda: split_registry(text), ValueError)
    assert error is None or str(error)
