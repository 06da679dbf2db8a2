"""Parse `WWW-Authenticate` challenges (RFC 7235) as registries send them."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

_PARAM_RE = re.compile(r'\s*([A-Za-z0-9_.-]+)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^,\s]*))\s*,?')


@dataclass(frozen=True)
class Challenge:
    """One authentication challenge: the scheme (`bearer`, `basic`) and its parameters."""

    scheme: str
    params: dict[str, str] = field(default_factory=dict)

    @property
    def realm(self) -> str:
        """Return the realm (the token endpoint URL for bearer)."""
        return self.params.get("realm", "")

    @property
    def service(self) -> str:
        """Return the service parameter (the token audience for bearer)."""
        return self.params.get("service", "")

    @property
    def scopes(self) -> list[str]:
        """Return the scopes the challenge asks for (space-separated in the header)."""
        return self.params.get("scope", "").split()


def parse_challenges(header: str) -> list[Challenge]:
    """Parse a WWW-Authenticate header value into its challenges, schemes lowercased."""
    out: list[Challenge] = []
    pos = 0
    text = header.strip()
    while pos < len(text):
        m = re.match(r"\s*([A-Za-z][A-Za-z0-9_-]*)", text[pos:])
        if not m:
            break
        scheme = m.group(1).lower()
        pos += m.end()
        params: dict[str, str] = {}
        while pos < len(text):
            pm = _PARAM_RE.match(text, pos)
            if not pm:
                break
            # A token followed by a space and no '=' starts the next challenge.
            params[pm.group(1).lower()] = (
                pm.group(2).replace('\\"', '"') if pm.group(2) is not None else pm.group(3)
            )
            pos = pm.end()
        out.append(Challenge(scheme, params))
        while pos < len(text) and text[pos] in ", ":
            pos += 1
    return out
