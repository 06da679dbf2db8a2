"""Answers from a bucket upstream (`bucketupstream`): the bucket served as a pull-only
registry through the `BucketStore` API, with no HTTP request of the client's passed on.

- Manifests (GET, HEAD; by tag or digest): the stored bytes with their media type,
  `Docker-Content-Digest` and `Etag`, the digest checked on every GET. The Accept header
  is honoured as distribution honours it for a single stored manifest: an OCI manifest or
  index the client does not accept is 404 `MANIFEST_UNKNOWN`; a Docker manifest list by
  tag that the client does not accept is answered with its linux/amd64 manifest; a
  Docker image manifest is served whatever the Accept.
- Blobs (GET, HEAD): streamed whole, or one `Range: bytes=` span (206 with
  `Content-Range`; 416 beyond the end), or with the upstream's `redirect`, a GET is sent
  to a presigned URL of the object (s3, r2, gs, az).
- `tags/list` from the bucket's `tags/list` object, paged with `n` and `last` (a `Link`
  to the next page, in the client's names).
- Referrers: the referrers API answered from the fallback index `sha256-<hex>` the
  object-store target keeps per subject (an empty index when there is none; never the
  subject itself), the `artifactType` filter applied here.

Error answers are the proxy's own words: a bucket's name, keys and error text go to the
log only (`BucketStore` errors reach the middleware as an unreachable upstream).
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any
from urllib.parse import urlencode

import structlog
from aiohttp import web

from .. import digest as digests
from .. import mediatypes as mt
from ..errors import NotFound
from ..manifest import Manifest
from .bucketupstream import BucketUpstream
from .cachedblobs import Unsatisfiable, blob_headers, byte_range, pour
from .paths import ApiPath
from .referrerindex import fallback_entries, fallback_tag, referrers_answer
from .replies import API_VERSION, oci_error
from .routing import PROXY, Route

log = structlog.get_logger("ocimirror.proxy")

#: How long a presigned blob URL is good for.
REDIRECT_LIFETIME = timedelta(minutes=20)
#: The platform distribution picks from a Docker manifest list a client does not accept.
DEFAULT_PLATFORM = ("linux", "amd64")


def manifest_unknown(message: str = "manifest unknown") -> web.Response:
    """The 404 of a manifest the bucket does not hold (or the client does not accept)."""
    return oci_error(404, "MANIFEST_UNKNOWN", message)


def blob_unknown() -> web.Response:
    """The 404 of a blob the bucket does not hold."""
    return oci_error(404, "BLOB_UNKNOWN", "blob unknown to registry")


async def bucket_answer(
    request: web.Request,
    route: Route,
    upstream: BucketUpstream,
    api: ApiPath,
    query: list[tuple[str, str]],
) -> web.StreamResponse:
    """Answer a validated `/v2/NAME/KIND/REFERENCE` request from the bucket (`query`: its
    parameters as `paths.api_query` checked them)."""
    repo = route.upstream_repo
    if api.kind == "manifests":
        return await bucket_manifest(request, upstream, repo, api.reference)
    if api.kind == "blobs":
        return await bucket_blob(request, route, upstream, repo, api.reference)
    if api.kind == "tags":
        return await bucket_tags(route, upstream, repo, dict(query))
    return await bucket_referrers(upstream, repo, api.reference, dict(query).get("artifactType"))


async def bucket_referrers(
    upstream: BucketUpstream, repo: str, subject: str, artifact_type: str | None
) -> web.Response:
    """Answer the referrers API from the bucket's fallback index of `subject`."""
    try:
        index = await upstream.bucket.get_manifest(repo, fallback_tag(subject))
    except NotFound:
        entries: list[dict[str, Any]] = []
    else:
        entries = fallback_entries(index.raw, index.media_type, subject)
    return referrers_answer(entries, subject, artifact_type)


def accepted_types(request: web.Request) -> frozenset[str]:
    """Return the media types the Accept headers name (parameters and q-values ignored)."""
    out: set[str] = set()
    for header in request.headers.getall("Accept", []):
        for part in header.split(","):
            media_type = part.split(";", 1)[0].strip().lower()
            if media_type:
                out.add(media_type)
    return frozenset(out)


def refusal(media_type: str, accepted: frozenset[str]) -> web.Response | None:
    """Distribution's answer to an OCI manifest or index the client does not accept."""
    if media_type == mt.OCI_MANIFEST and mt.OCI_MANIFEST not in accepted:
        return manifest_unknown(
            "OCI manifest found, but accept header does not support OCI manifests"
        )
    if media_type == mt.OCI_INDEX and mt.OCI_INDEX not in accepted:
        return manifest_unknown("OCI index found, but accept header does not support OCI indexes")
    return None


async def bucket_manifest(
    request: web.Request, upstream: BucketUpstream, repo: str, reference: str
) -> web.StreamResponse:
    """Answer a manifest GET or HEAD from the bucket."""
    bucket = upstream.bucket
    accepted = accepted_types(request)
    is_tag = not digests.is_valid(reference)
    manifest: Manifest | None = None
    try:
        if request.method == "HEAD":
            desc = await bucket.head_manifest(repo, reference)
            if desc is None:
                return manifest_unknown()
            media_type, digest, size = desc.media_type, desc.digest, desc.size
        else:
            manifest = await bucket.get_manifest(repo, reference)
            media_type, digest, size = manifest.media_type, manifest.digest, manifest.size
        answer = refusal(media_type, accepted)
        if answer is not None:
            return answer
        if is_tag and media_type == mt.DOCKER_MANIFEST_LIST and media_type not in accepted:
            if manifest is None:
                manifest = await bucket.get_manifest(repo, reference)
            child = _default_platform(manifest)
            if child is None:
                return manifest_unknown()
            manifest = await bucket.get_manifest(repo, child)
            media_type, digest, size = manifest.media_type, manifest.digest, manifest.size
    except NotFound as e:
        log.info("bucket has no such manifest", error=str(e))
        return manifest_unknown()
    headers = {
        **API_VERSION,
        "Content-Type": media_type,
        "Docker-Content-Digest": digest,
        "Etag": f'"{digest}"',
    }
    if request.method == "HEAD":
        out = web.StreamResponse(status=200, headers=headers)
        out.content_length = size
        await out.prepare(request)
        await out.write_eof()
        return out
    assert manifest is not None
    return web.Response(body=manifest.raw, headers=headers)


def _default_platform(index: Manifest) -> str | None:
    """Return the digest of a manifest list's linux/amd64 entry, as distribution picks it."""
    for d in index.manifests:
        p = d.platform
        if p is not None and (p.os, p.architecture) == DEFAULT_PLATFORM:
            return d.digest
    return None


async def bucket_blob(
    request: web.Request, route: Route, upstream: BucketUpstream, repo: str, digest: str
) -> web.StreamResponse:
    """Answer a blob GET or HEAD from the bucket: whole, a range, or a presigned URL."""
    if not digests.is_valid(digest):
        return oci_error(400, "DIGEST_INVALID", "invalid digest")
    bucket = upstream.bucket
    ranged = request.method == "GET" and "Range" in request.headers
    span: tuple[int, int] | None = None
    if request.method == "HEAD" or ranged or upstream.redirect:
        size = await bucket.blob_size(repo, digest)
        if size is None:
            return blob_unknown()
        if request.method == "HEAD":
            out = web.StreamResponse(status=200, headers=blob_headers(digest))
            out.content_length = size
            await out.prepare(request)
            await out.write_eof()
            return out
        if ranged:
            try:
                span = byte_range(request.headers["Range"], size)
            except Unsatisfiable:
                headers = {**blob_headers(digest), "Content-Range": f"bytes */{size}"}
                return web.Response(status=416, headers=headers)
            if request.headers.get("If-Range") not in (None, f'"{digest}"'):
                span = None
        elif upstream.redirect:
            url = await bucket.sign_blob(repo, digest, REDIRECT_LIFETIME)
            if url is not None:
                headers = {**blob_headers(digest), "Location": url}
                del headers["Content-Type"]
                return web.Response(status=307, headers=headers)
    try:
        async with bucket.read_blob(repo, digest, span) as (size, chunks):
            out = web.StreamResponse(status=200 if span is None else 206)
            out.headers.update(blob_headers(digest))
            if span is None:
                out.content_length = size
            else:
                out.headers["Content-Range"] = f"bytes {span[0]}-{span[1]}/{size}"
                out.content_length = span[1] - span[0] + 1
            await out.prepare(request)

            def failed(e: Exception) -> None:
                log.warning("bucket blob read failed midway", digest=digest, error=str(e))

            counter = request.app[PROXY].metrics.bytes.labels(upstream.label, "upstream")
            return await pour(request, out, chunks, counter.inc, failed)
    except NotFound as e:
        log.info("bucket has no such blob", error=str(e))
        return blob_unknown()


async def bucket_tags(
    route: Route, upstream: BucketUpstream, repo: str, query: dict[str, str]
) -> web.StreamResponse:
    """Answer `tags/list` from the bucket, paged with `n` and `last` as distribution does."""
    try:
        tags = await upstream.bucket.list_tags(repo)
    except NotFound as e:
        log.info("bucket has no such repository", error=str(e))
        return oci_error(404, "NAME_UNKNOWN", "repository name not known to registry")
    last = query.get("last")
    if last is not None:
        tags = [t for t in tags if t > last]
    headers = dict(API_VERSION)
    n_text = query.get("n")
    if n_text is not None:
        n = int(n_text)  # paths.api_query checked it is a number
        if len(tags) > n and n > 0:
            page = urlencode({"n": n, "last": tags[n - 1]})
            headers["Link"] = f'</v2/{route.name}/tags/list?{page}>; rel="next"'
        tags = tags[:n]
    return web.json_response({"name": route.name, "tags": tags}, headers=headers)


__all__ = ["bucket_answer"]
