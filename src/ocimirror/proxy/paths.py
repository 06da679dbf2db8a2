"""What the proxy accepts from clients, parsed strictly: `/v2/` paths, queries, token scopes.

A client's path is split on its raw slashes before anything is decoded, and each segment
is decoded on its own, so an encoded slash (`%2F`), dot (`%2e`) or question mark (`%3F`)
can never become a separator, a dot-segment or a query. The only routes:

- `/v2/NAME/manifests/REFERENCE`: a tag (`[\\w][\\w.-]{0,127}`) or a digest;
- `/v2/NAME/blobs/DIGEST`, `/v2/NAME/referrers/DIGEST` (a sha256 or sha512 digest in
  lowercase hex);
- `/v2/NAME/tags/list`;

where every component of NAME is a distribution path component (so never `.` or `..`).
Anything else is refused (`Refused`, with the OCI code and status to answer) before an
upstream is asked. The upstream's path is built from the validated parts, each quoted,
under `/v2/UPSTREAM_NAME/`, and its query only from the parameters the route knows (`n`
and `last` for tags, `artifactType` for referrers), each validated.

Token scopes: only `repository:NAME:ACTIONS` (exactly that lowercase type, three parts,
NAME per the grammar) is taken, and it never asks for more than `pull`.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal
from urllib.parse import quote, unquote, urlencode

from .. import digest as digests
from ..reference import (
    DIGEST_RE,
    NAME_TOTAL_LENGTH_MAX,
    PATH_COMPONENT_RE,
    REPOSITORY_RE,
    TAG_RE,
)

Kind = Literal["manifests", "blobs", "tags", "referrers"]
KINDS: frozenset[str] = frozenset({"manifests", "blobs", "tags", "referrers"})
_DIGEST_HEX_LENGTHS = {"sha256": 64, "sha384": 96, "sha512": 128}
#: A media type (RFC 6838 names), for `artifactType`.
_MEDIA_TYPE_RE = re.compile(
    r"[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]{0,126}/[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]{0,126}"
)
_COUNT_RE = re.compile(r"[0-9]{1,6}")


class Refused(Exception):
    """A client's request the proxy will not pass on: the status and OCI error to answer."""

    def __init__(self, status: int, code: str, message: str) -> None:
        """Keep the answer; `message` names what is wrong, never echoing the input."""
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


def unknown_route() -> Refused:
    """The refusal of a path that is no route of the distribution API."""
    return Refused(404, "NAME_UNKNOWN", "repository name not known to registry")


@dataclass(frozen=True)
class ApiPath:
    """A validated `/v2/NAME/KIND/REFERENCE` path, in the client's names."""

    name: str
    kind: Kind
    #: The tag or digest (manifests), the digest (blobs, referrers), `list` (tags).
    reference: str


def is_digest(text: str) -> bool:
    """Tell whether `text` is a digest per the distribution grammar (known lengths checked)."""
    if not DIGEST_RE.fullmatch(text):
        return False
    algorithm, _, hexpart = text.partition(":")
    length = _DIGEST_HEX_LENGTHS.get(algorithm)
    return length is None or len(hexpart) == length


def is_repository(name: str) -> bool:
    """Tell whether `name` is a repository name per the distribution grammar."""
    return len(name) <= NAME_TOTAL_LENGTH_MAX and REPOSITORY_RE.fullmatch(name) is not None


def split_raw(raw_path: str) -> list[str]:
    """Split a raw path (no query) on its literal slashes, then decode each segment."""
    return [unquote(s, errors="replace") for s in raw_path.split("/")]


def parse_api_path(raw_rest: str) -> ApiPath:
    """Parse what follows `/v2/` in a client's raw path (query removed); Refused if it is
    not exactly a route of the API with a valid name and reference."""
    segments = split_raw(raw_rest)
    if ["blobs", "uploads"] in (segments[-2:], segments[-3:-1]):
        raise Refused(405, "UNSUPPORTED", "The operation is unsupported.")
    if len(segments) < 3 or segments[-2] not in KINDS:
        raise unknown_route()
    *parts, kind, reference = segments
    if not all(PATH_COMPONENT_RE.fullmatch(p) for p in parts):
        raise Refused(400, "NAME_INVALID", "invalid repository name")
    name = "/".join(parts)
    if not is_repository(name):
        raise Refused(400, "NAME_INVALID", "invalid repository name")
    if kind == "manifests":
        if not (TAG_RE.fullmatch(reference) or is_digest(reference)):
            if ":" in reference:
                raise Refused(400, "DIGEST_INVALID", "invalid digest")
            raise Refused(400, "MANIFEST_INVALID", "invalid tag or digest")
        return ApiPath(name, "manifests", reference)
    if kind == "tags":
        if reference != "list":
            raise unknown_route()
        return ApiPath(name, "tags", reference)
    if not is_digest(reference):
        raise Refused(400, "DIGEST_INVALID", "invalid digest")
    if kind == "referrers":
        # The subject names the fallback tag `ALG-HEX` and the cache's entry: a digest
        # the proxy can hash (sha256, sha512), lowercase as the OCI spec writes it.
        if not digests.is_valid(reference):
            raise Refused(400, "DIGEST_INVALID", "invalid digest")
        return ApiPath(name, "referrers", reference)
    return ApiPath(name, "blobs", reference)


def api_query(kind: Kind, items: Iterable[tuple[str, str]]) -> list[tuple[str, str]]:
    """The query a route passes upstream, rebuilt from the parameters it knows (others are
    dropped); Refused for a known parameter with a bad value."""
    out: list[tuple[str, str]] = []
    for key, value in items:
        if kind == "tags" and key == "n":
            if not _COUNT_RE.fullmatch(value):
                raise Refused(400, "PAGINATION_NUMBER_INVALID", "invalid number of results")
        elif kind == "tags" and key == "last":
            if not TAG_RE.fullmatch(value):
                raise Refused(400, "UNSUPPORTED", "invalid query parameter last")
        elif kind == "referrers" and key == "artifactType":
            if not _MEDIA_TYPE_RE.fullmatch(value):
                raise Refused(400, "UNSUPPORTED", "invalid query parameter artifactType")
        else:
            continue
        if any(k == key for k, _ in out):
            raise Refused(400, "UNSUPPORTED", f"query parameter {key} given twice")
        out.append((key, value))
    return out


def upstream_path(upstream_repo: str, api: ApiPath, query: list[tuple[str, str]]) -> str:
    """Build the upstream's path (with query) for a validated route: every segment quoted,
    nothing that could climb out of `/v2/UPSTREAM_REPO/`; Refused when the mapped name
    (prefix + name) is no valid repository name (too long)."""
    if not is_repository(upstream_repo):
        raise Refused(400, "NAME_INVALID", "invalid repository name")
    segments = [*upstream_repo.split("/"), api.kind, api.reference]
    path = "/v2/" + "/".join(quote(s, safe=":+") for s in segments)
    if any(s in (".", "..") for s in split_raw(path)):  # cannot happen: a last guard
        raise Refused(400, "NAME_INVALID", "invalid repository name")
    return path + (f"?{urlencode(query)}" if query else "")


def catalog_query(items: Iterable[tuple[str, str]], prefix: str) -> list[tuple[str, str]]:
    """The catalog's upstream query: `n` and `last` (a repository name, given the upstream
    prefix), validated; others dropped."""
    out: list[tuple[str, str]] = []
    last: str | None = None
    for key, value in items:
        if key == "n":
            if not _COUNT_RE.fullmatch(value):
                raise Refused(400, "PAGINATION_NUMBER_INVALID", "invalid number of results")
            out = [(k, v) for k, v in out if k != "n"] + [("n", value)]
        elif key == "last":
            if not is_repository(value):
                raise Refused(400, "UNSUPPORTED", "invalid query parameter last")
            last = value
    if last or prefix:
        out.append(("last", prefix + last if last else prefix))
    return out


def pull_scope(scope: str) -> str | None:
    """The client's repository named by a token scope it may ask for; None when the scope
    is not exactly `repository:NAME:ACTIONS` with a valid NAME and `pull` (or `*`) among
    the actions. Whatever else it asks for, the proxy only ever asks for `pull`."""
    parts = scope.split(":")
    if len(parts) != 3 or parts[0] != "repository" or not is_repository(parts[1]):
        return None
    actions = parts[2].split(",")
    if "pull" not in actions and "*" not in actions:
        return None
    return parts[1]
