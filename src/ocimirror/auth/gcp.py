"""Google Artifact Registry and Container Registry: Application Default Credentials.

For `*-docker.pkg.dev`, `gcr.io` and `*.gcr.io`: google-auth's default chain (the
`GOOGLE_APPLICATION_CREDENTIALS` key file, workload identity federation, gcloud's
application-default login, the metadata server of Cloud Run, GKE and GCE, which
`GCE_METADATA_HOST` can point elsewhere) gives an OAuth2 access token, sent as basic auth
`oauth2accesstoken:<token>` and asked for again before it expires (an hour on Google).

google-auth (the `gcp` extra) is synchronous; it runs in a worker thread, once an hour.
docker-sync's `_json_key`, `_json_key_base64` and `oauth2accesstoken` user names are not
handled here: given as a username and password they go to the registry as they are.
"""

from __future__ import annotations

import asyncio
import calendar
import threading
from typing import Any

from .providers import Login, failure
from .source import Credentials

TITLE = "Google Artifact Registry"
SCOPES = ("https://www.googleapis.com/auth/cloud-platform",)
USERNAME = "oauth2accesstoken"
_NO_EXTRA = "the gcp extra is not installed (pip install 'ocimirror[gcp]')"


class GcpProvider:
    """Access tokens from Application Default Credentials (see the module doc)."""

    title = TITLE

    def __init__(self) -> None:
        """Nothing is looked up until the first login."""
        self._credentials: Any = None
        self._lock = threading.Lock()

    def _refreshed(self, host: str) -> Any:
        try:
            import google.auth
            import google.auth.exceptions as gx
            from google.auth.transport.requests import Request
        except ImportError:
            raise failure(host, TITLE, _NO_EXTRA, unavailable=True) from None
        with self._lock:
            try:
                if self._credentials is None:
                    self._credentials, _ = google.auth.default(scopes=list(SCOPES))
                if not self._credentials.valid:  # no token yet, or near its expiry
                    self._credentials.refresh(Request())
            except gx.DefaultCredentialsError:
                raise failure(
                    host,
                    TITLE,
                    "no Application Default Credentials (GOOGLE_APPLICATION_CREDENTIALS,"
                    " gcloud auth application-default login, or a metadata server)",
                    unavailable=True,
                ) from None
            except (gx.GoogleAuthError, OSError, ValueError) as e:
                # RefreshError's text is the token endpoint's error code and description.
                first = e.args[0] if e.args and isinstance(e.args[0], str) else str(e)
                cause = " ".join(first.split())[:300]
                raise failure(host, TITLE, f"{type(e).__name__}: {cause}") from None
            return self._credentials

    async def login(self, host: str) -> Login:
        """Return `oauth2accesstoken:<token>` with the token's expiry."""
        creds = await asyncio.to_thread(self._refreshed, host)
        token = getattr(creds, "token", None)
        if not isinstance(token, str) or not token:
            raise failure(host, TITLE, "the default credentials gave no access token")
        expiry = getattr(creds, "expiry", None)  # naive UTC, as google-auth keeps it
        expires_at = float(calendar.timegm(expiry.timetuple())) if expiry else None
        return Login(Credentials(username=USERNAME, password=token), expires_at)

    async def identity(self, host: str) -> str:
        """Name the service account (or the kind of credentials) the chain found."""
        creds = await asyncio.to_thread(self._refreshed, host)
        email = getattr(creds, "service_account_email", None) or getattr(
            creds, "signer_email", None
        )
        return str(email) if email else type(creds).__name__
