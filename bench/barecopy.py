"""The bare copier of bench/bigblobs.py: the floor for copying big blobs in Python.

`python bench/barecopy.py SRC_HOST DST_HOST REPO` copies every tag of REPO between two
plain-HTTP registries with one aiohttp session: one GET per manifest, then every distinct
blob at once, each a POST and one monolithic PUT whose body is the source's GET response
streamed as it arrives (`Content-Length` and `?digest=` given, so the destination checks
the digest), then the manifests. Nothing else: no hashing, no retries, no auth, no
progress, and it imports only aiohttp (its start-up is part of what is measured).
"""

from __future__ import annotations

import asyncio
import json
import sys
from urllib.parse import urljoin

import aiohttp

#: aiohttp's read buffer, as ocimirror's (`client.READ_SIZE`).
READ_SIZE = 256 * 1024
ACCEPT = ", ".join(
    [
        "application/vnd.oci.image.manifest.v1+json",
        "application/vnd.docker.distribution.manifest.v2+json",
    ]
)


async def copy(src: str, dst: str, repo: str) -> None:
    """Copy every tag of `repo` from `src` to `dst`."""
    async with aiohttp.ClientSession(
        auto_decompress=False,
        read_bufsize=READ_SIZE,
        headers={"Accept-Encoding": "identity"},
        connector=aiohttp.TCPConnector(limit=64),
    ) as s:
        async with s.get(f"http://{src}/v2/{repo}/tags/list") as r:
            tags: list[str] = (await r.json())["tags"]
        manifests: dict[str, tuple[bytes, str]] = {}
        for tag in tags:
            url = f"http://{src}/v2/{repo}/manifests/{tag}"
            async with s.get(url, headers={"Accept": ACCEPT}) as r:
                manifests[tag] = (await r.read(), r.headers["Content-Type"])
        blobs: dict[str, int] = {}
        for raw, _ in manifests.values():
            doc = json.loads(raw)
            for d in [doc["config"], *doc["layers"]]:
                blobs[d["digest"]] = d["size"]

        async def one(digest: str, size: int) -> None:
            async with s.post(f"http://{dst}/v2/{repo}/blobs/uploads/") as r:
                location = urljoin(f"http://{dst}/", r.headers["Location"])
            sep = "&" if "?" in location else "?"
            headers = {"Content-Length": str(size), "Content-Type": "application/octet-stream"}
            async with s.get(f"http://{src}/v2/{repo}/blobs/{digest}") as g:
                put = f"{location}{sep}digest={digest}"
                async with s.put(put, data=g.content, headers=headers) as p:
                    if p.status != 201:
                        raise SystemExit(f"PUT {digest}: HTTP {p.status} {await p.text()}")

        await asyncio.gather(*(one(d, n) for d, n in blobs.items()))
        for tag, (raw, media) in manifests.items():
            url = f"http://{dst}/v2/{repo}/manifests/{tag}"
            async with s.put(url, data=raw, headers={"Content-Type": media}) as r:
                if r.status != 201:
                    raise SystemExit(f"PUT manifest {tag}: HTTP {r.status}")


if __name__ == "__main__":
    if len(sys.argv) != 4:
        raise SystemExit("usage: barecopy.py SRC_HOST DST_HOST REPO")
    asyncio.run(copy(*sys.argv[1:4]))
