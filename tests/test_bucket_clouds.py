"""az:// and gs:// buckets against their emulators: Azurite (Microsoft's) and fake-gcs-server.

The cases moto runs for S3 (tests/test_objectstore.py, tests/test_proxy_bucket.py), where
the emulator can: copy into the bucket, a warm pass costing one HEAD per tag, the bucket
read back as a source, and `ocimirror proxy --registry-host` serving it to skopeo, digests
unchanged. Azurite takes all of them. fake-gcs-server serves obstore's reads (GET, HEAD,
ranges, the XML listing) but not its writes (XML API uploads: 400 "invalid uploadType"),
so a GCS bucket is filled through the JSON API with the objects a BucketStore wrote and
read back; the same copy, warm pass, read back and proxy as Azure's, and a multipart blob
upload, are strict expected failures that fail only for that refusal (the emulator's log
and ocimirror's words both say it) and fail the suite the day the emulator takes them."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from urllib.parse import unquote

import pytest
from obstore.store import MemoryStore

from ocimirror import digest as digests
from ocimirror.errors import NotFound, StoreError
from ocimirror.manifest import Descriptor
from ocimirror.reference import Reference
from ocimirror.stores.buckets import BucketSettings, open_bucket
from ocimirror.stores.objectstore import AZURE_DIGEST_ATTRIBUTE, PART_SIZE, BucketStore
from ocimirror.testkit.command import run_ocimirror
from ocimirror.testkit.emulators import AZURITE_ACCOUNT, AZURITE_KEY, LocalAzurite, LocalGCS
from ocimirror.testkit.images import SampleImage, make_image, make_index, push
from ocimirror.testkit.proxy import ProxyProcess
from ocimirror.testkit.registry import LocalRegistry
from ocimirror.testkit.seeding import seed
from ocimirror.testkit.skopeo import Skopeo

StartProxy = Callable[..., ProxyProcess]


def _images(layer_size: int = 64 * 1024) -> dict[str, SampleImage]:
    return {
        "multi": make_index(["linux/amd64", "linux/arm64"], seed="cloud-index"),
        "single": make_image(seed="cloud-single", oci=False, layer_size=layer_size),
    }


def _served(skopeo: Skopeo, proxy: ProxyProcess, images: dict[str, SampleImage], out: Path) -> None:
    """skopeo reads every tag through the proxy, and pulls one whole: bytes unchanged."""
    for tag, image in images.items():
        raw = skopeo.run("inspect", "--raw", "--tls-verify=false", proxy.ref(f"team/app:{tag}"))
        assert raw.stdout.encode() == image.manifest.raw
    image = images["multi"]
    skopeo.run("copy", "--src-tls-verify=false", "--all", proxy.ref("team/app:multi"), f"dir:{out}")
    assert (out / "manifest.json").read_bytes() == image.manifest.raw
    for blob in image.all_blobs():
        assert (out / blob.digest.split(":")[1]).read_bytes() == blob.data


def _read_back(
    source: str,
    images: dict[str, SampleImage],
    dst: LocalRegistry,
    skopeo: Skopeo,
    env: dict[str, str],
) -> None:
    r = run_ocimirror("copy", "--all-tags", source, f"{dst.host}/back/app", env=env)
    assert r.returncode == 0, r.stderr
    for tag, image in images.items():
        got = skopeo.manifest(f"docker://{dst.host}/back/app:{tag}", registry=dst)
        assert got == image.manifest.raw


# -- Azure (Azurite) ------------------------------------------------------------------------


def test_azure_copy_warm_pass_read_back_and_proxy(
    azurite: LocalAzurite,
    src_registry: LocalRegistry,
    dst_registry: LocalRegistry,
    skopeo: Skopeo,
    start_proxy: StartProxy,
    tmp_path: Path,
) -> None:
    images = _images(layer_size=PART_SIZE + 4096)  # a blob in blocks (a multipart upload)
    asyncio.run(seed(src_registry, "team/app", list(images.items())))
    container = azurite.container()
    bucket = f"az://{AZURITE_ACCOUNT}/{container}"
    env = azurite.environment()
    r = run_ocimirror(
        "copy", "--all-tags", f"{src_registry.host}/team/app", f"{bucket}/team/app", env=env
    )
    assert r.returncode == 0, r.stderr

    # The layout, with the digest in metadata Azure accepts (its names are C# identifiers).
    store = _azure_store(azurite, container)
    got = asyncio.run(_attributes(store, "v2/team/app/manifests/multi"))
    assert got["Content-Type"] == images["multi"].manifest.media_type
    assert got[AZURE_DIGEST_ATTRIBUTE] == images["multi"].digest

    _warm_read_back_and_proxy(
        src_registry, bucket, images, dst_registry, skopeo, start_proxy, tmp_path, azurite, env
    )


def _warm_read_back_and_proxy(
    src_registry: LocalRegistry,
    bucket: str,
    images: dict[str, SampleImage],
    dst_registry: LocalRegistry,
    skopeo: Skopeo,
    start_proxy: StartProxy,
    tmp_path: Path,
    emulator: LocalAzurite | LocalGCS,
    env: dict[str, str],
) -> None:
    """After a copy of `images` into `bucket`: a warm pass, the bucket read back as a source,
    and served by `proxy --registry-host` to skopeo."""
    # A warm pass: one HEAD per tag at the bucket (and the index's children, read there
    # to look for referrers added since); nothing written.
    for extra, cost in (((), {"HEAD": 1, "GET": 1}), (("--no-referrers",), {"HEAD": 1})):
        before = emulator.requests()
        r = run_ocimirror(
            "copy",
            *extra,
            f"{src_registry.host}/team/app:multi",
            f"{bucket}/team/app:multi",
            env=env,
        )
        assert r.returncode == 0, r.stderr
        spent = emulator.requests() - before
        assert dict(spent) == cost

    _read_back(f"{bucket}/team/app", images, dst_registry, skopeo, env)
    proxy = start_proxy("--registry-host", bucket, env=env)
    _served(skopeo, proxy, images, tmp_path / "pulled")
    tags = proxy.call("GET", "/v2/team/app/tags/list")
    assert tags.json() == {"name": "team/app", "tags": ["multi", "single"]}


def _azure_store(azurite: LocalAzurite, container: str) -> BucketStore:
    """The container, opened with the config's settings (no environment)."""
    settings = BucketSettings(endpoint=azurite.endpoint, secret_access_key=AZURITE_KEY)
    return open_bucket(Reference.parse(f"az://{AZURITE_ACCOUNT}/{container}/x"), settings)


async def _attributes(store: BucketStore, key: str) -> dict[str, str]:
    import obstore

    got = await obstore.get_async(store.store, key)
    return {k: str(v) for k, v in got.attributes.items()}


def test_a_missing_azure_container_is_one_line_naming_it(azurite: LocalAzurite) -> None:
    store = _azure_store(azurite, "no-such-container")
    with pytest.raises(NotFound) as err:
        asyncio.run(store.get_manifest("app", "1"))
    assert str(err.value) == (
        f"az://{AZURITE_ACCOUNT}/no-such-container: read v2/app/manifests/1:"
        " the container does not exist"
    )


# -- GCS (fake-gcs-server) -------------------------------------------------------------------


def _fill_gcs(gcs: LocalGCS, images: dict[str, SampleImage]) -> str:
    """A bucket holding team/app as a BucketStore writes it (through the JSON API)."""
    mem = MemoryStore()
    store = BucketStore(mem, name="memory://")
    for tag, image in images.items():
        asyncio.run(push(store, "team/app", image, tag))
    bucket = gcs.bucket()
    assert gcs.fill(bucket, mem) > 10
    return bucket


def test_gcs_read_back_one_head_per_tag_and_proxy(
    gcs: LocalGCS,
    dst_registry: LocalRegistry,
    skopeo: Skopeo,
    start_proxy: StartProxy,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    images = _images()
    bucket = _fill_gcs(gcs, images)
    env = gcs.environment()

    # A tag's check is one HEAD: the digest and type come from the object's metadata. The
    # endpoint from the config's settings, the token from the environment.
    monkeypatch.setenv("GOOGLE_BEARER_TOKEN", "test")
    settings = BucketSettings(endpoint=gcs.endpoint)
    store = open_bucket(Reference.parse(f"gs://{bucket}/team/app"), settings)
    before = gcs.requests()
    desc = asyncio.run(store.head_manifest("team/app", "multi"))
    assert dict(gcs.requests() - before) == {"HEAD": 1}
    assert desc is not None
    multi = images["multi"]
    assert (desc.digest, desc.media_type) == (multi.digest, multi.manifest.media_type)

    _read_back(f"gs://{bucket}/team/app", images, dst_registry, skopeo, env)
    proxy = start_proxy("--registry-host", f"gs://{bucket}", env=env)
    _served(skopeo, proxy, images, tmp_path / "pulled")
    blob = images["single"].blobs[-1]
    part = proxy.call("GET", f"/v2/team/app/blobs/{blob.digest}", headers={"Range": "bytes=0-9"})
    assert (part.status, part.body) == (206, blob.data[:10])


class XmlWriteRefused(Exception):
    """fake-gcs-server answered one of obstore's XML API writes with 400 invalid uploadType."""


def _check_refusal(gcs: LocalGCS, bucket: str, since: int, said: str) -> None:
    """Raise XmlWriteRefused when the emulator refused a write into `bucket` (a PUT or POST
    answered 400 since its `since`-th logged request) and `said` (what ocimirror reported)
    is that refusal: the test then fails for the known reason only, any other way fails."""
    refused = [
        (method, path, status)
        for method, path, status in gcs.answered()[since:]
        if method in ("PUT", "POST") and unquote(path).startswith(f"/{bucket}/") and status == 400
    ]
    if refused and said:
        raise XmlWriteRefused(f"{refused[0]}: {said.strip()[:400]}")
    assert not refused, refused


# The day fake-gcs-server takes the XML API's PUT (fsouza/fake-gcs-server#331, PR #1164)
# the copy passes and, strict, fails the suite: drop its mark. The multipart upload also
# needs the XML multipart API (#852, PR #1819). Both read back what they wrote.
_XML_WRITES = pytest.mark.xfail(
    strict=True,
    raises=XmlWriteRefused,
    reason="fake-gcs-server answers obstore's XML API writes (PUT /BUCKET/KEY,"
    " POST /BUCKET/KEY?uploads) 400 invalid uploadType: see docs/static-registry.md",
)


@_XML_WRITES
def test_gcs_copy_warm_pass_read_back_and_proxy(
    gcs: LocalGCS,
    src_registry: LocalRegistry,
    dst_registry: LocalRegistry,
    skopeo: Skopeo,
    start_proxy: StartProxy,
    tmp_path: Path,
) -> None:
    images = _images()  # every object a single PUT
    asyncio.run(seed(src_registry, "team/app", list(images.items())))
    name = gcs.bucket()
    bucket = f"gs://{name}"
    env = gcs.environment()
    since = len(gcs.answered())
    source = f"{src_registry.host}/team/app"
    r = run_ocimirror(
        "copy", "--log-level", "debug", "--all-tags", source, f"{bucket}/team/app", env=env
    )
    # The store's own words are in the debug log only (a message has ours).
    said = [line for line in r.stderr.splitlines() if "invalid uploadType" in line]
    _check_refusal(gcs, name, since, said[0] if r.returncode and said else "")
    assert r.returncode == 0, r.stderr
    _warm_read_back_and_proxy(
        src_registry, bucket, images, dst_registry, skopeo, start_proxy, tmp_path, gcs, env
    )


@_XML_WRITES
def test_gcs_multipart_blob_upload(gcs: LocalGCS, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GOOGLE_BEARER_TOKEN", "test")
    name = gcs.bucket()
    store = open_bucket(Reference.parse(f"gs://{name}/x"), BucketSettings(endpoint=gcs.endpoint))
    data = bytes(range(256)) * ((PART_SIZE + 4096) // 256)
    desc = Descriptor("application/octet-stream", digests.of(data), len(data))

    async def chunks() -> AsyncIterator[bytes]:
        for i in range(0, len(data), 1 << 20):
            yield data[i : i + (1 << 20)]

    since = len(gcs.answered())
    try:
        asyncio.run(store.put_blob("team/app", desc, chunks()))
    except StoreError as e:  # ocimirror's words: the store's are in the debug log
        _check_refusal(gcs, name, since, str(e) if "the store answered HTTP 400" in str(e) else "")
        raise
    started = ("POST", f"/{name}/v2/team/app/blobs/{desc.digest}?uploads=")
    assert started in [(method, unquote(path)) for method, path, _ in gcs.answered()[since:]]

    async def read() -> bytes:
        async with store.open_blob("team/app", desc) as got:
            return b"".join([chunk async for chunk in got])

    assert asyncio.run(read()) == data
