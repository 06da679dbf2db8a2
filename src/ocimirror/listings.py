"""Listings: the documents a registry answers lists with, and the links between pages.

A tags list page (`{"name": ..., "tags": [...]}`), a referrers page (an image index),
and the `Link: <url>; rel="next"` header that chains pages. Each reader refuses what is
not that document with a RegistryError naming what was asked.
"""

from __future__ import annotations

import json
import re
from urllib.parse import urljoin

from .errors import ManifestError, RegistryError
from .manifest import Descriptor

#: One `<url>; params` entry of a Link header.
_LINK_RE = re.compile(r"<([^>]*)>([^,<]*)")


def tags_of(raw: bytes, what: str) -> list[str]:
    """Read the tags of one tags-list page; RegistryError when it is not that document."""
    try:
        doc = json.loads(raw)
    except (ValueError, RecursionError):
        raise RegistryError(f"{what}: the answer is not JSON") from None
    if not isinstance(doc, dict):
        raise RegistryError(f"{what}: the answer is not a JSON object")
    tags = doc.get("tags")
    if tags is None:
        return []
    if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
        raise RegistryError(f"{what}: 'tags' is not a list of strings")
    return tags


def referrers_of(raw: bytes, what: str) -> list[Descriptor]:
    """Read the descriptors of one referrers page (an image index); RegistryError if not."""
    try:
        doc = json.loads(raw)
    except (ValueError, RecursionError):
        raise RegistryError(f"{what}: the answer is not JSON") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("manifests", []), list):
        raise RegistryError(f"{what}: the answer is not an image index")
    try:
        return [
            Descriptor.from_json(m, f"{what} manifests[{i}]")
            for i, m in enumerate(doc.get("manifests") or [])
        ]
    except ManifestError as e:
        raise RegistryError(str(e)) from None


def next_link(header: str, base: str) -> str | None:
    """Return the absolute URL of the `rel="next"` entry of a Link header, if any."""
    for target, params in _LINK_RE.findall(header):
        rels = re.findall(r'rel\s*=\s*"?([^";]*)"?', params, re.IGNORECASE)
        if any("next" in r.lower().split() for r in rels):
            return str(urljoin(base, target.strip()))
    return None
