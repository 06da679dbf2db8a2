"""`ocimirror proxy --cache s3://...`: the pull-through cache in an object store (moto's S3
server on loopback), as a real process in front of a real registry, checked with skopeo:
pulls served from the bucket, a second proxy with an empty index sharing it, and the
bucket standing in when the upstream is gone."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path

import obstore
import pytest

from ocimirror import digest as digests
from ocimirror.proxy.cachestore import ObjectBlobs, open_store
from ocimirror.testkit.images import make_index
from ocimirror.testkit.proxy import ProxyProcess
from ocimirror.testkit.registry import LocalRegistry
from ocimirror.testkit.s3 import LocalS3
from ocimirror.testkit.seeding import seed
from ocimirror.testkit.skopeo import Skopeo
from test_proxy import assert_layout_holds, pull_to_oci
from test_proxy_pullthrough import api, metric


def test_pulls_come_from_the_bucket_for_this_proxy_and_another_sharing_it(
    registry: LocalRegistry,
    start_proxy: Callable[..., ProxyProcess],
    skopeo: Skopeo,
    s3: LocalS3,
    tmp_path: Path,
) -> None:
    index = make_index(["linux/amd64", "linux/arm64"], layer_size=300_000, seed="s3-index")
    asyncio.run(seed(registry, "team/app", [("1", index)]))
    url = s3.url(s3.bucket(), "proxy-cache")
    env = s3.environment()
    first = start_proxy(
        "--registry-host",
        registry.host,
        "--cache",
        url,
        "--cache-local",
        str(tmp_path / "index-a"),
        "--tag-ttl",
        "1s",
        env=env,
    )
    assert url in first.text()  # the start-up line names the cache
    ref = "team/app:1"

    pull_to_oci(skopeo, first.ref(ref), tmp_path / "first", "--all")
    assert_layout_holds(tmp_path / "first", index)
    # Everything is in the bucket: blobs, manifests (with their media types), the tag.
    store = open_store(url, s3.options)
    keys = {m["path"] for m in obstore.list(store).collect()}
    manifests = index.all_manifests()
    for blob in index.all_blobs():
        assert ObjectBlobs.key(blob.digest) in keys
    for m in manifests:
        assert ObjectBlobs.key(m.digest) in keys
        assert ObjectBlobs.key(m.digest, "manifests") in keys
    assert f"tags/{registry.host}/team/app/1" in keys
    assert bytes(obstore.get(store, f"tags/{registry.host}/team/app/1").bytes()) == (
        index.digest.encode()
    )
    # Every request to the bucket is counted: a put per blob, two per manifest (its media
    # type beside it), one for the tag; nothing failed.
    puts = metric(first, "ocimirror_proxy_store_requests_total", op="put")
    assert puts == len(index.all_blobs()) + 2 * len(manifests) + 1
    assert metric(first, "ocimirror_proxy_store_requests_total", op="list") == 1
    assert metric(first, "ocimirror_proxy_store_errors_total") == 0

    # Pulled again: not one GET upstream (the tag, fresh, not even a HEAD).
    mark = registry.mark()
    pull_to_oci(skopeo, first.ref(ref), tmp_path / "second", "--all")
    assert_layout_holds(tmp_path / "second", index)
    assert [r for r in api(registry.requests(since=mark)) if r.method == "GET"] == []
    assert metric(first, "ocimirror_proxy_cache_hits_total", kind="blob") >= len(
        list(index.all_blobs())
    )

    # Another proxy, its index empty (a temporary one), finds it all in the bucket: the
    # upstream is asked with HEADs only (the tag's revalidation; each client's right to read).
    other = start_proxy("--registry-host", registry.host, "--cache", url, env=env)
    mark = registry.mark()
    pull_to_oci(skopeo, other.ref(ref), tmp_path / "other", "--all")
    assert_layout_holds(tmp_path / "other", index)
    asked = api(registry.requests(since=mark))
    assert asked
    assert {r.method for r in asked} == {"HEAD"}

    # The upstream gone, the bucket stands in (the tag is stale by now).
    registry.stop()
    time.sleep(1.1)
    pull_to_oci(skopeo, first.ref(ref), tmp_path / "after", "--all")
    assert_layout_holds(tmp_path / "after", index)
    assert "serving the stale cached copy" in first.text()


def test_ten_concurrent_pulls_of_a_50_mib_blob_make_one_fetch_and_one_put(
    registry: LocalRegistry,
    start_proxy: Callable[..., ProxyProcess],
    s3: LocalS3,
    tmp_path: Path,
) -> None:
    from ocimirror.testkit.images import make_image

    image = make_image(layers=1, layer_size=50 * 1024 * 1024, seed="s3-big")
    asyncio.run(seed(registry, "big", [("1", image)]))
    bucket = s3.bucket()
    proxy = start_proxy(
        "--registry-host", registry.host, "--cache", s3.url(bucket), env=s3.environment()
    )
    layer = max(image.all_blobs(), key=lambda b: b.size)
    mark = registry.mark()
    before = s3.requests()

    def pull() -> tuple[int, str, int]:
        answer = proxy.call("GET", f"/v2/big/blobs/{layer.digest}")
        return answer.status, digests.of(answer.body), len(answer.body)

    async def pull_all(n: int) -> list[tuple[int, str, int]]:
        loop = asyncio.get_running_loop()
        return list(await asyncio.gather(*(loop.run_in_executor(None, pull) for _ in range(n))))

    assert asyncio.run(pull_all(10)) == [(200, layer.digest, layer.size)] * 10
    gets = [r for r in registry.requests(since=mark) if r.kind == "blob" and r.method == "GET"]
    assert len(gets) == 1  # counted in the upstream registry's log
    # One multipart upload: initiated once (POST), completed once (POST), 5 MiB parts.
    deadline = time.monotonic() + 30
    while (s3.requests() - before)["POST"] < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert (s3.requests() - before)["POST"] == 2
    assert (s3.requests() - before)["PUT"] == -(-layer.size // (5 * 1024 * 1024))  # the parts
    store = open_store(s3.url(bucket), s3.options)
    assert obstore.head(store, ObjectBlobs.key(layer.digest))["size"] == layer.size
    # From the bucket now, the upstream gone.
    registry.stop()
    assert asyncio.run(pull_all(3)) == [(200, layer.digest, layer.size)] * 3


def test_cache_store_settings_from_flags_environment_and_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from ocimirror.errors import ConfigError
    from ocimirror.proxy.settings import load_settings

    base = {"REGISTRY_HOST": "localhost:5000"}
    s = load_settings(cache="s3://bucket/prefix", env=base).cache
    assert (s.store, s.directory, s.enabled, s.where) == ("s3://bucket/prefix", None, True, s.store)
    s = load_settings(cache="gs://b/p", cache_local=tmp_path / "idx", env=base).cache
    assert (s.store, s.directory) == ("gs://b/p", tmp_path / "idx")
    env = {**base, "OCIMIRROR_PROXY_CACHE": "memory:///", "OCIMIRROR_PROXY_CACHE_LOCAL": "/l"}
    s = load_settings(env=env).cache
    assert (s.store, s.directory) == ("memory:///", Path("/l"))
    # A directory flag wins over a store in the file, and drops it.
    config = tmp_path / "proxy.yaml"
    monkeypatch.setenv("R2_SECRET", "s3cr3t")
    config.write_text(
        "cache:\n  store: s3://bucket/cache\n  directory: /var/lib/px\n"
        "  options: {endpoint: 'https://acct.r2.cloudflarestorage.com', region: auto,\n"
        "            secret_access_key: {env: R2_SECRET}, virtual_hosted_style_request: false}\n"
    )
    s = load_settings(config=config, env=base).cache
    assert (s.store, s.directory) == ("s3://bucket/cache", Path("/var/lib/px"))
    assert s.store_options() == {
        "endpoint": "https://acct.r2.cloudflarestorage.com",
        "region": "auto",
        "secret_access_key": "s3cr3t",
        "virtual_hosted_style_request": "false",
        "checksum_algorithm": "sha256",  # on by default for s3://
    }
    assert "s3cr3t" not in repr(s)
    s = load_settings(config=config, cache=str(tmp_path / "d"), env=base).cache
    assert (s.store, s.directory) == (None, tmp_path / "d")
    config.write_text("cache: s3://short/hand\n")
    assert load_settings(config=config, env=base).cache.store == "s3://short/hand"
    # Mistakes are named.
    with pytest.raises(ConfigError, match=r"--cache-local .* is for an object-store cache"):
        load_settings(cache=str(tmp_path / "d"), cache_local=tmp_path / "x", env=base)
    config.write_text("cache: {store: /not/a/url}\n")
    with pytest.raises(ConfigError, match=r"cache\.store.*not an object store URL"):
        load_settings(config=config, env=base)
    with pytest.raises(ConfigError, match=r"cache store s3://b/p: .*"):
        open_store("s3://b/p", {"no_such_option": "x"})


def test_cache_uploads_to_s3_carry_their_sha256_unless_turned_off(tmp_path: Path) -> None:
    """A blob damaged on its way up to an s3:// cache is refused by the store rather than
    kept under its digest (found with the injector before moto, test_proxy_faults.py): the
    store's options ask obstore for `x-amz-checksum-sha256` unless --no-cache-checksum,
    $OCIMIRROR_PROXY_CACHE_CHECKSUM=0 or `checksum: false` says otherwise."""
    from ocimirror.proxy.settings import load_settings

    base = {"REGISTRY_HOST": "localhost:5000"}
    on = {"checksum_algorithm": "sha256"}
    assert load_settings(cache="s3://b/p", env=base).cache.store_options() == on
    assert load_settings(cache="gs://b/p", env=base).cache.store_options() == {}
    off = load_settings(cache="s3://b/p", cache_checksum=False, env=base).cache
    assert (off.checksum, off.store_options()) == (False, {})
    env = {**base, "OCIMIRROR_PROXY_CACHE_CHECKSUM": "0"}
    assert load_settings(cache="s3://b/p", env=env).cache.store_options() == {}
    flag_wins = load_settings(cache="s3://b/p", cache_checksum=True, env=env).cache
    assert flag_wins.store_options() == on
    config = tmp_path / "proxy.yaml"
    config.write_text("cache: {store: 's3://b/p', checksum: false}\n")
    assert load_settings(config=config, env=base).cache.store_options() == {}
    # An algorithm the options name is left as it is.
    config.write_text("cache: {store: 's3://b/p', options: {AWS_CHECKSUM_ALGORITHM: sha256}}\n")
    assert load_settings(config=config, env=base).cache.store_options() == {
        "AWS_CHECKSUM_ALGORITHM": "sha256"
    }


def test_cache_redirect_sends_clients_to_the_bucket_for_cached_blobs(
    registry: LocalRegistry,
    start_proxy: Callable[..., ProxyProcess],
    skopeo: Skopeo,
    s3: LocalS3,
    tmp_path: Path,
) -> None:
    index = make_index(["linux/amd64", "linux/arm64"], layer_size=200_000, seed="s3-redirect")
    asyncio.run(seed(registry, "team/app", [("1", index)]))
    url = s3.url(s3.bucket(), "c")
    proxy = start_proxy(
        "--registry-host", registry.host, "--cache", url, "--cache-redirect", env=s3.environment()
    )
    ref = proxy.ref("team/app:1")
    pull_to_oci(skopeo, ref, tmp_path / "first", "--all")  # fills the bucket
    assert_layout_holds(tmp_path / "first", index)
    layer = max(index.all_blobs(), key=lambda b: b.size)
    answer = proxy.call("GET", f"/v2/team/app/blobs/{layer.digest}")
    assert answer.status == 307
    assert answer.headers["Location"].startswith(f"{s3.endpoint}/")
    assert "X-Amz-Signature=" in answer.headers["Location"]
    assert answer.headers["Docker-Content-Digest"] == layer.digest
    assert answer.body == b""

    # skopeo follows the redirects: the blobs come from the bucket, not the proxy.
    before = s3.requests()["GET"]
    sent = metric(proxy, "ocimirror_proxy_bytes_total", source="cache")
    mark = registry.mark()
    pull_to_oci(skopeo, ref, tmp_path / "second", "--all")
    assert_layout_holds(tmp_path / "second", index)
    assert [r for r in api(registry.requests(since=mark)) if r.method == "GET"] == []
    assert s3.requests()["GET"] - before >= len(index.all_blobs())
    manifest_bytes = sum(m.size for m in index.all_manifests())
    assert metric(proxy, "ocimirror_proxy_bytes_total", source="cache") - sent <= manifest_bytes
    # A blob not cached is not redirected: it is fetched (once) and streamed.
    other = make_index(["linux/amd64"], layer_size=1000, seed="s3-redirect-2")
    asyncio.run(seed(registry, "team/app", [("2", other)]))
    fresh = other.children[0].blobs[-1]
    got = proxy.call("GET", f"/v2/team/app/blobs/{fresh.digest}")
    assert (got.status, got.body) == (200, fresh.data)


def test_cache_redirect_needs_a_store_that_signs(tmp_path: Path) -> None:
    from ocimirror.errors import ConfigError
    from ocimirror.proxy.settings import load_settings

    base = {"REGISTRY_HOST": "localhost:5000"}
    assert load_settings(cache="s3://b/p", cache_redirect=True, env=base).cache.redirect
    env = {**base, "OCIMIRROR_PROXY_CACHE": "gs://b/p", "OCIMIRROR_PROXY_CACHE_REDIRECT": "1"}
    assert load_settings(env=env).cache.redirect
    r2 = "https://acct.r2.cloudflarestorage.com/bucket"
    assert load_settings(cache=r2, cache_redirect=True, env=base).cache.redirect
    for where in (str(tmp_path), "memory:///", "file:///tmp/x", "https://example.com/dav"):
        with pytest.raises(ConfigError, match="redirect needs a store that can presign"):
            load_settings(cache=where, cache_redirect=True, env=base)
    config = tmp_path / "p.yaml"
    config.write_text("cache: {directory: /x, redirect: true}\n")
    with pytest.raises(ConfigError, match=r"cache.*redirect needs a store"):
        load_settings(config=config, env=base)
