"""Pathological manifests from a source or an upstream (issue 18): an index whose child is
served as the index itself (a manifest that references itself), and a manifest of 100,000
layers. Each must end in a clear error, in bounded time and memory: never a loop, a hang
or a blow-up, in `copy` and in the proxy in front of its cache."""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import Callable
from pathlib import Path

from aiohttp import web

from ocimirror import mediatypes as mt
from ocimirror.testkit.command import run_ocimirror
from ocimirror.testkit.front import Front, kind_of
from ocimirror.testkit.images import make_index, make_nested_index
from ocimirror.testkit.proxy import ProxyProcess
from ocimirror.testkit.registry import LocalRegistry
from ocimirror.testkit.seeding import seed
from ocimirror.transfer.copy import MAX_INDEX_DEPTH
from test_proxy_hostile import rss_kib


def huge_manifest(layers: int) -> bytes:
    """An OCI image manifest of `layers` one-byte layers (none of which exists)."""
    config = {"mediaType": mt.OCI_CONFIG, "digest": "sha256:" + "0" * 64, "size": 2}
    doc = {
        "schemaVersion": 2,
        "mediaType": mt.OCI_MANIFEST,
        "config": config,
        "layers": [
            {
                "mediaType": mt.OCI_LAYER,
                "digest": "sha256:" + hashlib.sha256(str(i).encode()).hexdigest(),
                "size": 1,
            }
            for i in range(layers)
        ],
    }
    return json.dumps(doc, separators=(",", ":")).encode()


async def test_an_index_whose_child_is_itself_is_a_digest_mismatch(
    registry: LocalRegistry, tmp_path: Path
) -> None:
    """The source answers every child of an index with the index's own bytes (were they
    believed, the copy would walk the index forever): a digest mismatch names the child,
    and the copy ends; nothing is tagged at the target."""
    index = make_index(seed="self")
    await seed(registry, "app", [("1", index)])

    async def itself(front: Front, request: web.Request, body: bytes) -> web.Response | None:
        if kind_of(request) == "manifest" and request.path.endswith(
            tuple(c.digest for c in index.children)
        ):
            headers = {"Content-Type": index.manifest.media_type}
            return web.Response(body=index.manifest.raw, headers=headers)
        return None

    async with Front(registry, itself).running() as front:
        out = await asyncio.to_thread(
            run_ocimirror, "copy", f"{front.host}/app:1", f"oci:{tmp_path}/out:1", timeout=120
        )
        asked = [s.path for s in front.seen if kind_of_path(s.path) == "manifest"]
    assert out.returncode == 1, out.stderr
    assert "digest mismatch" in out.stderr
    assert "Traceback" not in out.stderr
    assert len(asked) < 100  # each child (and its referrer tags) a few times, not forever
    index_json = tmp_path / "out" / "index.json"
    assert not index_json.exists() or "ref.name" not in index_json.read_text()


def kind_of_path(path: str) -> str:
    """`manifest` for a manifest path, else `other`."""
    return "manifest" if "/manifests/" in path else "other"


async def test_a_manifest_of_100000_layers_is_too_large_for_copy_and_the_proxy(
    registry: LocalRegistry, start_proxy: Callable[..., ProxyProcess], tmp_path: Path
) -> None:
    """14 MB of layer descriptors, over the 4 MiB manifest limit: `copy` names it too
        large; the proxy with a cache caches nothing and its memory
        stays within 64 MiB of where it was, over ten requests (it streams the manifest on,
    as the upstream sent it, and keeps nothing)."""
    raw = huge_manifest(100_000)
    digest = "sha256:" + hashlib.sha256(raw).hexdigest()

    async def huge(front: Front, request: web.Request, body: bytes) -> web.Response | None:
        if kind_of(request) != "manifest":
            return None
        headers = {"Content-Type": mt.OCI_MANIFEST, "Docker-Content-Digest": digest}
        return web.Response(body=b"" if request.method == "HEAD" else raw, headers=headers)

    async with Front(registry, huge).running() as front:
        out = await asyncio.to_thread(
            run_ocimirror, "copy", f"{front.host}/app:1", f"oci:{tmp_path}/out:1", timeout=120
        )
        assert out.returncode == 1, out.stderr
        assert "too large" in out.stderr
        assert "Traceback" not in out.stderr

        cache = tmp_path / "cache"
        proxy = await asyncio.to_thread(
            start_proxy, "--registry-host", front.host, "--cache", str(cache)
        )
        before = rss_kib(proxy.proc.pid)
        for _ in range(10):
            answer = await asyncio.to_thread(proxy.call, "GET", "/v2/app/manifests/1")
            # Passed on as the upstream sent it (streamed: a client refuses it), not kept.
            assert (answer.status, len(answer.body)) == (200, len(raw))
        assert rss_kib(proxy.proc.pid) - before < 64 * 1024
    assert not (cache / "blobs" / "sha256" / digest.split(":")[1]).exists()
    assert "Traceback" not in proxy.text()


#: JSON nested past the parser's depth: Python's json raises RecursionError, not ValueError.
DEEP = b'{"tags":' + b"[" * 5_000 + b"]" * 5_000 + b"}"


async def test_json_nested_too_deeply_is_a_clear_error_never_a_500(
    registry: LocalRegistry, start_proxy: Callable[..., ProxyProcess], tmp_path: Path
) -> None:
    """A source or upstream answering with JSON nested 5,000 deep (a tags list, an error
    body, a manifest): `copy` names the manifest nested too deeply; the proxy passes the
    tags list on as it came and answers the error with its own body, never a 500."""

    async def deep(front: Front, request: web.Request, body: bytes) -> web.Response | None:
        kind = kind_of(request)
        if kind == "tags":
            return web.Response(body=DEEP, headers={"Content-Type": "application/json"})
        if kind == "manifest" and request.path.endswith("/missing"):
            return web.Response(status=404, body=DEEP, headers={"Content-Type": "application/json"})
        if kind == "manifest":
            return web.Response(body=DEEP, headers={"Content-Type": mt.OCI_MANIFEST})
        return None

    async with Front(registry, deep).running() as front:
        out = await asyncio.to_thread(
            run_ocimirror, "copy", f"{front.host}/app:1", f"oci:{tmp_path}/out:1", timeout=120
        )
        assert out.returncode == 1, out.stderr
        assert "nested too deeply" in out.stderr
        assert "Traceback" not in out.stderr
        proxy = await asyncio.to_thread(start_proxy, "--registry-host", front.host)
        tags = await asyncio.to_thread(proxy.call, "GET", "/v2/app/tags/list")
        assert (tags.status, tags.body) == (200, DEEP)
        missing = await asyncio.to_thread(proxy.call, "GET", "/v2/app/manifests/missing")
        assert missing.status == 404
        assert missing.json()["errors"][0]["code"]
    assert "Traceback" not in proxy.text()


async def test_indexes_nested_past_the_limit_are_refused_naming_the_image(
    registry: LocalRegistry, tmp_path: Path
) -> None:
    """A source chaining indexes (each a distinct, digest-valid manifest, so no cycle to
    catch) is walked MAX_INDEX_DEPTH levels deep and no further: the image fails naming
    itself and the limit, nothing is tagged; a chain at the limit copies."""
    deep = make_nested_index(MAX_INDEX_DEPTH + 4, seed="deep")
    fits = make_nested_index(MAX_INDEX_DEPTH, seed="fits")
    await seed(registry, "app", [("deep", deep), ("fits", fits)])
    registry.clear_log()
    out = await asyncio.to_thread(
        run_ocimirror, "copy", "--json", f"{registry.host}/app:deep", f"{registry.host}/dst:deep"
    )
    assert out.returncode != 0, out.stdout
    assert f"{registry.host}/app:deep" in out.stdout
    assert f"indexes nested more than {MAX_INDEX_DEPTH} levels deep" in out.stdout
    assert "Traceback" not in out.stderr
    seen = registry.requests()
    got = [r for r in seen if r.method == "GET" and "/app/manifests/" in r.path]
    assert len(got) <= MAX_INDEX_DEPTH + 1, len(got)  # walked no deeper than the limit
    assert not [r for r in seen if r.method == "PUT" and r.path.endswith("/manifests/deep")]
    out = await asyncio.to_thread(
        run_ocimirror, "copy", f"{registry.host}/app:fits", f"{registry.host}/dst:fits"
    )
    assert out.returncode == 0, out.stderr
