"""Credentials given as values: a config's user/password or token, command-line flags."""

from __future__ import annotations

from collections.abc import Mapping

from .source import Credentials, Resolved, normalize_host


class StaticSource:
    """Answers with the credentials given for a host (anonymous ones too); else None."""

    def __init__(self, credentials: Mapping[str, Credentials]) -> None:
        """Take credentials per host (a name or URL, normalised like every host here)."""
        self._credentials = {normalize_host(h): c for h, c in credentials.items()}

    async def credentials_for(self, host: str) -> Resolved | None:
        """Return the credentials given for `host`, which never expire; else None."""
        creds = self._credentials.get(host)
        return None if creds is None else Resolved(creds, source="static")
