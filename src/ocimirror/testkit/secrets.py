"""The secrets a test suite uses, and a scan of what ocimirror said for them (issue 18).

Passwords, tokens and keys are `register`ed where the testkit makes them (a registry's
users, the token server's, the S3 stand-in's key pair) and by the suite (its
constants); a Basic login is registered in its base64 form too. Whatever ocimirror says
is `scan`ned as the testkit sees it: a command's stdout and stderr (`--json` included),
a background process's log, an HTTP answer's body (API answers, metrics, dashboard
pages). What is found is kept until `take_found`; tests/secretscan.py fails the test
during which it was found. Values shorter than MIN_LENGTH are not registered: they would
be found in innocent text.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass

#: The shortest value registered (shorter ones match too much innocent text).
MIN_LENGTH = 6
#: How much of one text is scanned.
SCAN_LIMIT = 4 * 1024 * 1024


@dataclass(frozen=True)
class Finding:
    """A secret found in something ocimirror said."""

    where: str
    secret: str

    def __str__(self) -> str:
        """Name the place and the secret, masked."""
        return f"{self.where}: {self.secret[:3]}*** ({len(self.secret)} characters)"


@dataclass
class Stats:
    """How much was scanned, for the summary."""

    texts: int = 0
    characters: int = 0
    found: int = 0


_known: set[str] = set()
_found: list[Finding] = []
stats = Stats()


def register(*values: str) -> None:
    """Add secrets to look for (values shorter than MIN_LENGTH are ignored)."""
    _known.update(v for v in values if isinstance(v, str) and len(v) >= MIN_LENGTH)


def register_login(user: str, password: str) -> None:
    """Add a password, and the Basic credentials `user:password` in base64."""
    register(password, base64.b64encode(f"{user}:{password}".encode()).decode())


def known() -> frozenset[str]:
    """Every secret registered so far."""
    return frozenset(_known)


def scan(text: str | bytes, where: str) -> list[Finding]:
    """Look for every registered secret in `text` (its first SCAN_LIMIT characters or
    bytes: what ocimirror says is smaller; a blob served is content, not its words);
    keep and return what is found."""
    text = text[:SCAN_LIMIT]
    stats.texts += 1
    stats.characters += len(text)
    if isinstance(text, bytes):
        hits = [Finding(where, s) for s in sorted(_known) if s.encode() in text]
    else:
        hits = [Finding(where, s) for s in sorted(_known) if s in text]
    stats.found += len(hits)
    _found.extend(hits)
    return hits


def take_found() -> list[Finding]:
    """Return what was found since the last call, and forget it."""
    found = list(_found)
    _found.clear()
    return found


__all__ = [
    "MIN_LENGTH",
    "SCAN_LIMIT",
    "Finding",
    "known",
    "register",
    "register_login",
    "scan",
    "stats",
    "take_found",
]
