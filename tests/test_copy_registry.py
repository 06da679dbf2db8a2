"""The copy engine against real registries on loopback, with skopeo as the judge."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable
from pathlib import Path

from ocimirror import digest as digests
from ocimirror import mediatypes as mt
from ocimirror.auth.credentials import Credentials
from ocimirror.client import HostOptions
from ocimirror.reference import Reference
from ocimirror.testkit.images import (
    derive_seed,
    make_artifact,
    make_image,
    make_index,
    pack_layer,
    random_layer,
)
from ocimirror.testkit.registry import LocalRegistry
from ocimirror.testkit.seeding import seed, store_for
from ocimirror.testkit.skopeo import Skopeo
from ocimirror.transfer.copy import CopyOptions
from ocimirror.transfer.engine import RunSummary, Side, run_copies
from ocimirror.transfer.tags import TagFilter

RegistryFactory = Callable[..., LocalRegistry]


def ref(registry: LocalRegistry, name: str) -> Reference:
    """Parse `HOST:PORT/name` for a local registry."""
    return Reference.parse(f"{registry.host}/{name}")


async def copy(
    src: Reference | str,
    dst: Reference | str,
    *,
    src_side: Side | None = None,
    dst_side: Side | None = None,
    **kwargs: object,
) -> RunSummary:
    """Run the engine on one pair."""
    s = Reference.parse(src) if isinstance(src, str) else src
    d = Reference.parse(dst) if isinstance(dst, str) else dst
    return await run_copies([(s, d)], source=src_side, destination=dst_side, **kwargs)  # type: ignore[arg-type]


def judge(skopeo: Skopeo, registry: LocalRegistry, name: str, tmp: Path, expect: bytes) -> None:
    """skopeo reads exactly `expect` at `name` and copies every blob it needs (verifying)."""
    assert skopeo.manifest(registry.ref(name), registry=registry) == expect
    out = tmp / ("judge-" + name.replace("/", "_").replace(":", "_").replace("@", "_"))
    skopeo.copy(registry.ref(name), f"oci:{out}:x", src_registry=registry, args=["--all"])
    index = json.loads((out / "index.json").read_text())
    assert index["manifests"], "skopeo wrote nothing"


async def test_copy_image_keeps_digest(
    registry_pair: tuple[LocalRegistry, LocalRegistry], skopeo: Skopeo, tmp_path: Path
) -> None:
    src, dst = registry_pair
    image = make_image(layers=3, layer_size=200_000, seed="one")
    await seed(src, "team/app", [("1.2", image)])
    summary = await copy(ref(src, "team/app:1.2"), ref(dst, "mirror/app:1.2"))
    assert summary.ok, summary.to_json()
    (result,) = summary.results
    assert result.status == "copied"
    assert result.source_digest == result.destination_digest == image.digest
    assert result.blobs_copied == 4
    assert result.bytes_copied == sum(b.size for b in image.blobs)
    judge(skopeo, dst, "mirror/app:1.2", tmp_path, image.manifest.raw)


async def test_copy_index_all_platforms_digest_unchanged(
    registry_pair: tuple[LocalRegistry, LocalRegistry], skopeo: Skopeo, tmp_path: Path
) -> None:
    src, dst = registry_pair
    index = make_index(layer_size=50_000, seed="multi")  # linux x3 + windows/amd64
    await seed(src, "team/multi", [("v1", index)])
    summary = await copy(ref(src, "team/multi:v1"), ref(dst, "team/multi"))
    assert summary.ok, summary.to_json()
    (result,) = summary.results
    assert result.destination_digest == index.digest
    assert "windows/amd64" in " ".join(result.platforms)
    assert dst.tags("team/multi") == ["v1"]  # the tag was inherited from the source
    judge(skopeo, dst, "team/multi:v1", tmp_path, index.manifest.raw)
    for child in index.manifest.manifests:
        raw = skopeo.manifest(dst.ref(f"team/multi@{child.digest}"), registry=dst)
        assert len(raw) == child.size


async def test_platform_filter_makes_a_smaller_index(
    registry_pair: tuple[LocalRegistry, LocalRegistry], skopeo: Skopeo, tmp_path: Path
) -> None:
    src, dst = registry_pair
    index = make_index(layer_size=20_000, seed="filter")
    await seed(src, "app", [("v1", index)])
    options = CopyOptions(platforms=("linux/amd64", "linux/arm64"))
    summary = await copy(ref(src, "app:v1"), ref(dst, "app:v1"), copy_options=options)
    assert summary.ok, summary.to_json()
    (result,) = summary.results
    assert result.filtered
    assert result.source_digest == index.digest != result.destination_digest
    raw = skopeo.manifest(dst.ref("app:v1"), registry=dst)
    doc = json.loads(raw)
    kept = {f"{m['platform']['os']}/{m['platform']['architecture']}" for m in doc["manifests"]}
    assert kept == {"linux/amd64", "linux/arm64"}
    source_children = {m.digest for m in index.manifest.manifests}
    assert {m["digest"] for m in doc["manifests"]} <= source_children  # children unchanged
    judge(skopeo, dst, "app:v1", tmp_path, raw)
    # A glob: every linux platform, no windows.
    summary = await copy(
        ref(src, "app:v1"), ref(dst, "app:linux"), copy_options=CopyOptions(platforms=("linux/*",))
    )
    doc = json.loads(skopeo.manifest(dst.ref("app:linux"), registry=dst))
    assert {m["platform"]["os"] for m in doc["manifests"]} == {"linux"}
    assert len(doc["manifests"]) == 3
    # A filter that matches nothing fails clearly, and writes no tag.
    summary = await copy(
        ref(src, "app:v1"), ref(dst, "app:none"), copy_options=CopyOptions(platforms=("aix/*",))
    )
    assert not summary.ok
    assert "platform" in summary.failed[0].error
    assert "none" not in dst.tags("app")


async def test_all_tags_with_filters_and_warm_run_costs_heads_only(
    registry_pair: tuple[LocalRegistry, LocalRegistry],
) -> None:
    src, dst = registry_pair
    versions = ["1.0.0", "1.1.0", "1.2.0", "2.0.0", "latest", "dev-1"]
    shared = [random_layer(30_000, seed="base")]
    images = {
        t: make_image(layers=1, layer_size=10_000, seed=t, shared_layers=shared) for t in versions
    }
    await seed(src, "lib", images.items())
    tag_filter = TagFilter(semver=">=1.1.0", exclude=(r"2\..*",))
    summary = await copy(
        ref(src, "lib"), ref(dst, "copy/lib"), all_tags=True, tag_filter=tag_filter
    )
    assert summary.ok, summary.to_json()
    assert dst.tags("copy/lib") == ["1.1.0", "1.2.0"]
    summary = await copy(
        ref(src, "lib"), ref(dst, "all/lib"), all_tags=True, tag_filter=TagFilter(latest=2)
    )
    assert dst.tags("all/lib") == ["1.2.0", "2.0.0"]
    # Everything: the shared layer crosses the wire once per destination repository at most.
    mark_src = src.mark()
    summary = await copy(ref(src, "lib"), ref(dst, "lib"), all_tags=True)
    assert summary.ok
    assert dst.tags("lib") == sorted(versions)
    shared_digest = pack_layer(shared[0])
    shared_gets = [
        r
        for r in src.requests(since=mark_src)
        if r.method == "GET" and r.kind == "blob" and r.reference == _digest(shared_digest[0])
    ]
    assert len(shared_gets) <= 1  # mounted or copied once, never once per tag

    # Warm: the same run again touches nothing but HEADs (and the tags list).
    mark_src, mark_dst = src.mark(), dst.mark()
    summary = await copy(ref(src, "lib"), ref(dst, "lib"), all_tags=True)
    assert summary.ok
    assert {r.status for r in summary.results} == {"unchanged"}
    src_requests = src.requests(since=mark_src)
    dst_requests = dst.requests(since=mark_dst)
    assert not [r for r in src_requests if r.method == "GET" and r.kind == "manifest"]
    assert not [r for r in src_requests + dst_requests if r.kind == "blob" and r.method == "GET"]
    assert not [r for r in dst_requests if r.method in ("PUT", "POST", "PATCH", "DELETE")]
    assert len([r for r in src_requests if r.kind == "tags"]) == 1
    assert len([r for r in dst_requests if r.method == "HEAD"]) == len(versions)


def _digest(gz: bytes) -> str:
    return digests.of(gz)


async def test_mount_across_repositories_moves_no_bytes(
    registry_pair: tuple[LocalRegistry, LocalRegistry],
) -> None:
    src, dst = registry_pair
    image = make_image(layers=2, layer_size=100_000, seed="mount")
    await seed(src, "a", [("1", image)])
    summary = await copy(ref(src, "a:1"), ref(dst, "first:1"))
    assert summary.ok
    # A second run into another repository: blobs the destination registry already holds
    # are mounted from the first repository, not uploaded again.
    mark = dst.mark()
    summary = await run_copies(
        [
            (ref(src, "a:1"), ref(dst, "second:1")),
            (ref(src, "a:1"), ref(dst, "first:1")),
        ]
    )
    assert summary.ok, summary.to_json()
    second = next(r for r in summary.results if "second" in r.destination)
    requests = dst.requests(since=mark)
    mounts = [r for r in requests if r.method == "POST" and "mount=" in r.path]
    if second.blobs_mounted:
        assert len(mounts) >= second.blobs_mounted
        assert not [r for r in requests if r.method in ("PATCH", "PUT") and r.kind == "upload"]
    else:
        # Without a known home the blobs are copied; either way nothing is uploaded twice.
        assert second.blobs_copied == 3


async def test_a_blob_bound_for_many_repositories_is_fetched_once(
    registry_pair: tuple[LocalRegistry, LocalRegistry],
) -> None:
    """One image copied into three repositories of one registry at once: each blob comes
    from the source once, and the other repositories mount it (or find it), instead of
    three fetches in flight that a rate limit or a storm would refuse three times."""
    src, dst = registry_pair
    image = make_image(layers=2, layer_size=50_000, seed="one-fetch")
    await seed(src, "a", [("1", image)])
    mark = src.mark()
    summary = await run_copies([(ref(src, "a:1"), ref(dst, f"r{i}:1")) for i in range(3)])
    assert summary.ok, summary.to_json()
    gets = Counter(
        r.reference for r in src.requests(since=mark) if r.method == "GET" and r.kind == "blob"
    )
    assert set(gets) == {b.digest for b in image.all_blobs()}
    assert set(gets.values()) == {1}, gets
    for i in range(3):
        assert dst.tags(f"r{i}") == ["1"]


async def test_auth_modes_and_tls(
    htpasswd_registry: LocalRegistry,
    token_registry: LocalRegistry,
    tls_registry: LocalRegistry,
    ca_cert: Path,
    skopeo: Skopeo,
    tmp_path: Path,
) -> None:
    image = make_image(layers=2, layer_size=30_000, seed="auth")
    await seed(htpasswd_registry, "secret/app", [("1", image)])
    alice = Credentials(username="alice", password="wonderland")
    bob = Credentials(username="bob", password="builder")
    # htpasswd (basic) → token auth
    summary = await copy(
        ref(htpasswd_registry, "secret/app:1"),
        ref(token_registry, "pub/app:1"),
        src_side=Side(credentials=alice),
        dst_side=Side(credentials=bob),
    )
    assert summary.ok, summary.to_json()
    judge(skopeo, token_registry, "pub/app:1", tmp_path, image.manifest.raw)
    # token (anonymous pull) → TLS with our CA
    summary = await copy(
        ref(token_registry, "pub/app:1"),
        ref(tls_registry, "tls/app:1"),
        dst_side=Side(options=HostOptions(ca_file=str(ca_cert))),
    )
    assert summary.ok, summary.to_json()
    judge(skopeo, tls_registry, "tls/app:1", tmp_path, image.manifest.raw)
    # TLS without trusting the CA fails clearly; --dest-tls-verify=false goes through.
    summary = await copy(ref(token_registry, "pub/app:1"), ref(tls_registry, "tls/app:2"))
    assert not summary.ok
    assert "certificate" in summary.failed[0].error.lower()
    assert tls_registry.tags("tls/app") == ["1"]
    summary = await copy(
        ref(token_registry, "pub/app:1"),
        ref(tls_registry, "tls/app:2"),
        dst_side=Side(options=HostOptions(tls_verify=False)),
    )
    assert summary.ok
    # Wrong and missing credentials: a 401 named as such, the password never shown.
    summary = await copy(
        ref(htpasswd_registry, "secret/app:1"),
        ref(token_registry, "pub/app:3"),
        src_side=Side(credentials=Credentials(username="alice", password="not-the-password")),
        dst_side=Side(credentials=bob),
    )
    assert not summary.ok
    error = summary.failed[0].error
    assert "401" in error or "unauthorized" in error.lower()
    assert "not-the-password" not in json.dumps(summary.to_json())
    summary = await copy(ref(token_registry, "pub/app:1"), ref(token_registry, "other/app:1"))
    assert not summary.ok  # anonymous push refused
    assert token_registry.tags("other/app") == []


async def test_foreign_layers_skipped_by_default_and_included_on_request(
    registry_factory: RegistryFactory, skopeo: Skopeo, tmp_path: Path
) -> None:
    src = registry_factory("src")
    dst = registry_factory("dst")
    strict = registry_factory("strict", allow_foreign_urls=False)
    image = make_image(layers=1, layer_size=10_000, seed="win", foreign_layer=True)
    await seed(src, "win", [("1", image)])
    foreign = image.manifest.layers[-1]
    assert foreign.urls
    summary = await copy(ref(src, "win:1"), ref(dst, "win:1"))
    assert summary.ok, summary.to_json()
    assert dst.http("HEAD", f"/v2/win/blobs/{foreign.digest}").status == 404
    assert skopeo.manifest(dst.ref("win:1"), registry=dst) == image.manifest.raw
    # --include-foreign copies the layer itself (here the source registry holds it).
    gz, _ = pack_layer(random_layer(10_000, seed=derive_seed("win", "foreign")))
    assert _digest(gz) == foreign.digest
    store = store_for(src)
    try:

        async def one() -> object:
            yield gz

        await store.put_blob("win", foreign, one())  # type: ignore[arg-type]
    finally:
        await store.close()
    summary = await copy(
        ref(src, "win:1"), ref(dst, "win2:1"), copy_options=CopyOptions(include_foreign=True)
    )
    assert summary.ok, summary.to_json()
    assert dst.http("HEAD", f"/v2/win2/blobs/{foreign.digest}").status == 200
    # A destination that refuses the manifest: the registry's own reason, no tag written,
    # and the other image of the run still copied.
    plain = make_image(layers=1, layer_size=1000, seed="plain")
    await seed(src, "plain", [("1", plain)])
    summary = await run_copies(
        [(ref(src, "win:1"), ref(strict, "win:1")), (ref(src, "plain:1"), ref(strict, "plain:1"))]
    )
    failed = summary.failed
    assert len(failed) == 1
    assert "win" in failed[0].source
    assert "manifest" in failed[0].error.lower()
    assert strict.tags("win") == []
    assert strict.tags("plain") == ["1"]


async def test_artifact_with_subject(
    registry_pair: tuple[LocalRegistry, LocalRegistry], skopeo: Skopeo, tmp_path: Path
) -> None:
    src, dst = registry_pair
    image = make_image(layers=1, layer_size=1000, seed="subject")
    artifact = make_artifact(image)
    await seed(src, "app", [("1", image), ("1.sbom", artifact)])
    summary = await copy(ref(src, "app"), ref(dst, "app"), all_tags=True)
    assert summary.ok, summary.to_json()
    assert skopeo.manifest(dst.ref("app:1.sbom"), registry=dst) == artifact.manifest.raw
    assert json.loads(artifact.manifest.raw)["subject"]["digest"] == image.digest


async def test_failures_are_isolated_and_leave_no_tag(
    registry_pair: tuple[LocalRegistry, LocalRegistry],
) -> None:
    src, dst = registry_pair
    good = make_image(layers=1, layer_size=1000, seed="good")
    await seed(src, "app", [("good", good)])
    summary = await run_copies(
        [
            (ref(src, "app:good"), ref(dst, "app:good")),
            (ref(src, "app:missing"), ref(dst, "app:missing")),
            (Reference.parse("127.0.0.1:9/app:x"), ref(dst, "app:x")),
        ]
    )
    by_source = {r.source.rsplit(":", 1)[-1]: r for r in summary.results}
    assert by_source["good"].status == "copied"
    assert "missing" in by_source["missing"].error
    assert "unknown" in by_source["missing"].error.lower() or "not found" in (
        by_source["missing"].error.lower()
    )
    assert "127.0.0.1:9" in by_source["x"].error
    assert dst.tags("app") == ["good"]


async def test_blob_corrupted_at_the_source_is_refused(
    registry_pair: tuple[LocalRegistry, LocalRegistry],
) -> None:
    """A blob whose bytes do not match its digest never becomes a tag at the destination."""
    src, dst = registry_pair
    image = make_image(layers=1, layer_size=50_000, seed="corrupt")
    await seed(src, "app", [("1", image)])
    layer = image.manifest.layers[0].digest
    algo, hexpart = layer.split(":")
    data = src.storage / "docker/registry/v2/blobs" / algo / hexpart[:2] / hexpart / "data"
    raw = bytearray(data.read_bytes())
    raw[-100] ^= 0xFF
    data.write_bytes(bytes(raw))
    summary = await copy(ref(src, "app:1"), ref(dst, "app:1"))
    assert not summary.ok
    assert "digest" in summary.failed[0].error.lower()
    assert dst.tags("app") == []
    assert dst.http("HEAD", f"/v2/app/blobs/{layer}").status == 404


async def test_registry_to_oci_layout_and_back(
    registry_pair: tuple[LocalRegistry, LocalRegistry], skopeo: Skopeo, tmp_path: Path
) -> None:
    src, dst = registry_pair
    index = make_index(("linux/amd64", "linux/arm64"), layer_size=10_000, seed="layout")
    await seed(src, "app", [("1.2", index)])
    bundle = tmp_path / "bundle"
    summary = await copy(ref(src, "app:1.2"), f"oci:{bundle}")
    assert summary.ok, summary.to_json()
    layout_index = json.loads((bundle / "index.json").read_text())
    (entry,) = layout_index["manifests"]
    assert entry["digest"] == index.digest
    assert entry["annotations"]["org.opencontainers.image.ref.name"] == "1.2"
    assert json.loads((bundle / "oci-layout").read_text())["imageLayoutVersion"] == "1.0.0"
    out = skopeo.run("inspect", "--raw", f"oci:{bundle}:1.2").stdout
    assert json.loads(out)["mediaType"] == mt.OCI_INDEX
    summary = await copy(f"oci:{bundle}:1.2", ref(dst, "back/app:1.2"))
    assert summary.ok, summary.to_json()
    judge(skopeo, dst, "back/app:1.2", tmp_path, index.manifest.raw)
