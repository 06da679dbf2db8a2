"""An OCI 1.1 registry front: the referrers API over a registry that lacks it.

Debian's distribution 2.8 has no referrers API. `ReferrersFront` forwards everything to
such a registry and adds what OCI 1.1 registries do: it reads every manifest PUT through
it, remembers those with a `subject`, answers the PUT with `OCI-Subject`, and serves
`GET /v2/<name>/referrers/<digest>` (the `artifactType` filter with `OCI-Filters-Applied`,
pages of `page_size` linked by `Link`). `referrers_status` makes that endpoint answer an
error instead (a 404 to look like an older registry), and `failing` a 500 for some
subjects only.

`resolving_fallback_tag(digest)` is an intercept for a plain `Front`: it answers the
fallback tag of `digest` (`sha256-<hex>`) with the manifest of that digest, as some
registries answer any such tag.
"""

from __future__ import annotations

import json
import re
from typing import Any
from urllib.parse import urlencode

from aiohttp import web

from .. import mediatypes as mt
from .artifacts import fallback_tag_of
from .front import Front, Intercept, registry_error
from .registry import LocalRegistry

_REFERRERS = re.compile(r"^/v2/(?P<name>.+?)/referrers/(?P<digest>[^/]+)$")
_MANIFEST = re.compile(r"^/v2/(?P<name>.+?)/manifests/(?P<ref>[^/]+)$")


def resolving_fallback_tag(digest: str) -> Intercept:
    """An intercept answering the fallback tag of `digest` with the manifest of `digest`."""
    tag = fallback_tag_of(digest)

    async def resolve(front: Front, request: web.Request, body: bytes) -> web.StreamResponse | None:
        if request.path.endswith(f"/manifests/{tag}"):
            return await front.forward(request, body, path_qs=request.path.replace(tag, digest))
        return None

    return resolve


class ReferrersFront(Front):
    """A `Front` that adds the OCI 1.1 referrers API to a `LocalRegistry`."""

    def __init__(
        self,
        upstream: LocalRegistry,
        *,
        page_size: int | None = None,
        oci_subject: bool = True,
        referrers_status: int | None = None,
    ) -> None:
        super().__init__(upstream, _answer)
        self.page_size = page_size
        self.oci_subject = oci_subject
        self.referrers_status = referrers_status
        #: Subjects whose referrers the API answers with a 500, whatever `referrers_status`.
        self.failing: set[str] = set()
        #: (repository, subject digest) → referrer digest → its descriptor.
        self.index: dict[tuple[str, str], dict[str, dict[str, Any]]] = {}

    def referrers_of(self, repo: str, subject: str) -> list[dict[str, Any]]:
        """The descriptors the API lists for a subject, in digest order."""
        found = self.index.get((repo, subject), {})
        return [found[d] for d in sorted(found)]


def _listing(doc: dict[str, Any], digest: str, size: int) -> dict[str, Any]:
    entry: dict[str, Any] = {"mediaType": doc.get("mediaType") or mt.OCI_MANIFEST}
    entry.update(digest=digest, size=size)
    config = doc.get("config") if isinstance(doc.get("config"), dict) else {}
    artifact_type = doc.get("artifactType") or (config or {}).get("mediaType")
    if artifact_type:
        entry["artifactType"] = artifact_type
    if isinstance(doc.get("annotations"), dict):
        entry["annotations"] = doc["annotations"]
    return entry


async def _answer(front: Front, request: web.Request, body: bytes) -> web.StreamResponse | None:
    assert isinstance(front, ReferrersFront)
    match = _REFERRERS.match(request.path)
    if match and request.method == "GET":
        name, subject = match["name"], match["digest"]
        if subject in front.failing:
            return registry_error(500, "UNKNOWN")
        if front.referrers_status is not None:
            return registry_error(front.referrers_status, "UNKNOWN")
        entries = front.referrers_of(name, subject)
        headers: dict[str, str] = {}
        wanted = request.query.get("artifactType")
        if wanted:
            entries = [e for e in entries if e.get("artifactType") == wanted]
            headers["OCI-Filters-Applied"] = "artifactType"
        last = request.query.get("last")
        if last:
            entries = [e for e in entries if e["digest"] > last]
        if front.page_size is not None and len(entries) > front.page_size:
            entries = entries[: front.page_size]
            query = {"last": entries[-1]["digest"], **({"artifactType": wanted} if wanted else {})}
            headers["Link"] = f'</v2/{name}/referrers/{subject}?{urlencode(query)}>; rel="next"'
        doc = {"schemaVersion": 2, "mediaType": mt.OCI_INDEX, "manifests": entries}
        return web.Response(
            body=json.dumps(doc).encode(), content_type=mt.OCI_INDEX, headers=headers
        )
    match = _MANIFEST.match(request.path)
    if match and request.method == "PUT":
        response = await front.forward(request, body)
        if response.status != 201:
            return response
        try:
            doc = json.loads(body)
        except ValueError:
            return response
        subject = doc.get("subject") if isinstance(doc, dict) else None
        if isinstance(subject, dict) and isinstance(subject.get("digest"), str):
            digest = response.headers.get("Docker-Content-Digest", "")
            key = (match["name"], subject["digest"])
            front.index.setdefault(key, {})[digest] = _listing(doc, digest, len(body))
            if front.oci_subject:
                response.headers["OCI-Subject"] = subject["digest"]
        return response
    return None


__all__ = ["ReferrersFront"]
