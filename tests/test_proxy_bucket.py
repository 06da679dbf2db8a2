"""`ocimirror proxy --registry-host s3://BUCKET`: a bucket served back as a pull-only registry.

Images are copied into a bucket on moto (as `ocimirror copy` writes it), then pulled back
through the proxy with skopeo, digests unchanged; manifests, blobs, ranges, tags and the
error answers are checked request by request.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from pathlib import Path

import pytest

from ocimirror import mediatypes as mt
from ocimirror.testkit.command import run_ocimirror
from ocimirror.testkit.images import SampleImage, make_image, make_index
from ocimirror.testkit.proxy import ProxyProcess
from ocimirror.testkit.registry import LocalRegistry
from ocimirror.testkit.s3 import LocalS3
from ocimirror.testkit.seeding import seed
from ocimirror.testkit.skopeo import Skopeo

ACCEPT_ALL = {"Accept": mt.MANIFEST_ACCEPT}


def _env(s3: LocalS3) -> dict[str, str]:
    return {
        "AWS_ACCESS_KEY_ID": "test",
        "AWS_SECRET_ACCESS_KEY": "test",
        "AWS_REGION": "us-east-1",
        "AWS_ENDPOINT_URL": s3.endpoint,
    }


class Filled:
    """A bucket holding `team/app` (tags multi, single, list) copied from a registry."""

    def __init__(self, bucket: str, images: dict[str, SampleImage]) -> None:
        self.bucket = bucket
        self.images = images


def _copy_in(
    registry: LocalRegistry, target: str, images: dict[str, SampleImage], env: dict[str, str]
) -> None:
    asyncio.run(seed(registry, "team/app", list(images.items())))
    for tag in images:
        r = run_ocimirror("copy", f"{registry.host}/team/app:{tag}", f"{target}:{tag}", env=env)
        assert r.returncode == 0, r.stderr


def _images() -> dict[str, SampleImage]:
    return {
        "multi": make_index(["linux/amd64", "linux/arm64"], seed="pb-index"),
        "single": make_image(seed="pb-single", oci=False, layer_size=64 * 1024),
        "list": make_index(["linux/arm64", "linux/amd64"], seed="pb-list", oci=False),
    }


@pytest.fixture(scope="module")
def filled(s3: LocalS3, tmp_path_factory: pytest.TempPathFactory) -> Filled:
    """The bucket the tests here read, filled once for the module: the proxy only reads
    it (its writes are refused before any bucket request, tested below)."""
    source = LocalRegistry(tmp_path_factory.mktemp("src")).start()
    try:
        bucket = s3.bucket()
        images = _images()
        _copy_in(source, f"s3://{bucket}/team/app", images, _env(s3))
    finally:
        source.stop()
    return Filled(bucket, images)


StartProxy = Callable[..., ProxyProcess]


@pytest.fixture
def proxy(filled: Filled, s3: LocalS3, start_proxy: StartProxy) -> ProxyProcess:
    return start_proxy("--registry-host", f"s3://{filled.bucket}", env=_env(s3))


def _pull_all(
    skopeo: Skopeo, proxy: ProxyProcess, images: dict[str, SampleImage], out: Path
) -> None:
    """skopeo pulls every tag (and the index by digest): manifests and blobs unchanged."""
    out.mkdir(parents=True)
    for tag, image in images.items():
        for ref in (f"team/app:{tag}", f"team/app@{image.digest}"):
            raw = skopeo.run("inspect", "--raw", "--tls-verify=false", proxy.ref(ref)).stdout
            assert raw.encode() == image.manifest.raw
        dest = out / tag
        # dir: keeps the manifests' bytes (and checks every blob against its digest).
        skopeo.run(
            "copy", "--src-tls-verify=false", "--all", proxy.ref(f"team/app:{tag}"), f"dir:{dest}"
        )
        assert (dest / "manifest.json").read_bytes() == image.manifest.raw
        for blob in image.all_blobs():
            assert (dest / blob.digest.split(":")[1]).read_bytes() == blob.data
    skopeo.run(
        "copy", "--src-tls-verify=false", proxy.ref("team/app:single"), f"oci:{out / 'oci'}:single"
    )


def test_skopeo_pulls_every_image_through_the_proxy_digests_unchanged(
    filled: Filled, proxy: ProxyProcess, skopeo: Skopeo, tmp_path: Path
) -> None:
    _pull_all(skopeo, proxy, filled.images, tmp_path / "out")
    ping = proxy.call("GET", "/v2/")
    assert ping.status == 200
    assert ping.headers["Docker-Distribution-Api-Version"] == "registry/2.0"


def test_registry_host_from_the_environment_with_a_repository_prefix(
    filled: Filled, s3: LocalS3, skopeo: Skopeo, start_proxy: StartProxy
) -> None:
    env = {**_env(s3), "REGISTRY_HOST": f"s3://{filled.bucket}/team"}
    p = start_proxy(env=env)
    image = filled.images["multi"]
    raw = skopeo.run("inspect", "--raw", "--tls-verify=false", p.ref("app:multi")).stdout
    assert raw.encode() == image.manifest.raw
    tags = p.call("GET", "/v2/app/tags/list")
    assert tags.json() == {"name": "app", "tags": ["list", "multi", "single"]}


def test_manifests_by_tag_and_digest_carry_type_digest_and_length(
    filled: Filled, proxy: ProxyProcess
) -> None:
    for tag, image in filled.images.items():
        for ref in (tag, image.digest):
            for method in ("GET", "HEAD"):
                a = proxy.call(method, f"/v2/team/app/manifests/{ref}", headers=ACCEPT_ALL)
                assert a.status == 200, (tag, ref, method)
                assert a.headers["Content-Type"] == image.manifest.media_type
                assert a.headers["Docker-Content-Digest"] == image.digest
                assert int(a.headers["Content-Length"]) == len(image.manifest.raw)
                assert a.body == (image.manifest.raw if method == "GET" else b"")


def test_the_accept_header_is_honoured_as_distribution_does(
    filled: Filled, proxy: ProxyProcess
) -> None:
    oci_index, docker_image, docker_list = (filled.images[t] for t in ("multi", "single", "list"))
    docker_only = {"Accept": f"{mt.DOCKER_MANIFEST}, {mt.DOCKER_MANIFEST_LIST}"}
    # An OCI index the client does not accept: 404 MANIFEST_UNKNOWN, distribution's words.
    a = proxy.call("GET", "/v2/team/app/manifests/multi", headers=docker_only)
    assert a.status == 404
    assert a.json()["errors"][0] == {
        "code": "MANIFEST_UNKNOWN",
        "message": "OCI index found, but accept header does not support OCI indexes",
    }
    # A Docker image manifest: served whatever the Accept (none at all here).
    a = proxy.call("GET", "/v2/team/app/manifests/single")
    assert (a.status, a.body) == (200, docker_image.manifest.raw)
    # A Docker manifest list by tag, not accepted: its linux/amd64 manifest instead.
    entry = next(d for d in docker_list.manifest.manifests if d.platform.architecture == "amd64")  # type: ignore[union-attr]
    amd64 = next(c for c in docker_list.children if c.digest == entry.digest)
    a = proxy.call("GET", "/v2/team/app/manifests/list", headers={"Accept": mt.DOCKER_MANIFEST})
    assert (a.status, a.headers["Docker-Content-Digest"]) == (200, amd64.digest)
    assert a.body == amd64.manifest.raw
    # ... but by digest it is the list itself.
    a = proxy.call("GET", f"/v2/team/app/manifests/{docker_list.digest}", headers=docker_only)
    assert (a.status, a.body) == (200, docker_list.manifest.raw)
    assert oci_index.digest != docker_list.digest


def test_blobs_whole_ranged_and_beyond_the_end(filled: Filled, proxy: ProxyProcess) -> None:
    blob = filled.images["single"].blobs[-1]
    path = f"/v2/team/app/blobs/{blob.digest}"
    a = proxy.call("GET", path)
    assert (a.status, a.body, a.headers["Docker-Content-Digest"]) == (200, blob.data, blob.digest)
    a = proxy.call("HEAD", path)
    assert (a.status, int(a.headers["Content-Length"])) == (200, len(blob.data))
    a = proxy.call("GET", path, headers={"Range": "bytes=100-1099"})
    assert a.status == 206
    assert a.headers["Content-Range"] == f"bytes 100-1099/{len(blob.data)}"
    assert a.body == blob.data[100:1100]
    a = proxy.call("GET", path, headers={"Range": "bytes=-10"})
    assert (a.status, a.body) == (206, blob.data[-10:])
    a = proxy.call("GET", path, headers={"Range": f"bytes={len(blob.data)}-"})
    assert a.status == 416
    assert a.headers["Content-Range"] == f"bytes */{len(blob.data)}"
    missing = "sha256:" + "0" * 64
    a = proxy.call("GET", f"/v2/team/app/blobs/{missing}")
    assert (a.status, a.json()["errors"][0]["code"]) == (404, "BLOB_UNKNOWN")


def test_tags_list_pages_with_n_and_last(proxy: ProxyProcess) -> None:
    a = proxy.call("GET", "/v2/team/app/tags/list")
    assert a.json() == {"name": "team/app", "tags": ["list", "multi", "single"]}
    a = proxy.call("GET", "/v2/team/app/tags/list?n=2")
    assert a.json()["tags"] == ["list", "multi"]
    assert a.headers["Link"] == '</v2/team/app/tags/list?n=2&last=multi>; rel="next"'
    a = proxy.call("GET", "/v2/team/app/tags/list?n=2&last=multi")
    assert a.json()["tags"] == ["single"]
    assert "Link" not in a.headers
    a = proxy.call("GET", "/v2/team/nothing/tags/list")
    assert (a.status, a.json()["errors"][0]["code"]) == (404, "NAME_UNKNOWN")


def test_a_missing_tag_is_manifest_unknown_naming_no_bucket(
    filled: Filled, proxy: ProxyProcess
) -> None:
    for method in ("GET", "HEAD"):
        a = proxy.call(method, "/v2/team/app/manifests/nope", headers=ACCEPT_ALL)
        assert a.status == 404
    a = proxy.call("GET", "/v2/team/app/manifests/nope", headers=ACCEPT_ALL)
    assert a.json()["errors"][0]["code"] == "MANIFEST_UNKNOWN"
    for answer in (a, proxy.call("GET", "/v2/_catalog"), proxy.call("GET", "/team/app")):
        text = answer.body.decode() + str(answer.headers)
        assert filled.bucket not in text
        assert "s3" not in text.lower().replace("sha256", "")


def test_hostile_paths_and_writes_are_refused_before_any_bucket_request(
    filled: Filled, proxy: ProxyProcess, s3: LocalS3
) -> None:
    blob = filled.images["single"].blobs[0]
    before = s3.requests()
    hostile = [
        ("GET", "/v2/team/app/manifests/..%2F..%2Fv2"),
        ("GET", "/v2/..%2Fteam/app/manifests/single"),
        ("GET", "/v2/team/..%2F..%2Fapp/tags/list"),
        ("GET", "/v2/team/app/blobs/..%2F..%2Fmanifests%2Fsingle"),
        ("GET", "/v2/team/app/manifests/%2E%2E"),
        ("GET", "/v2/team/app/blobs/sha256:..%2F"),
        ("PUT", "/v2/team/app/manifests/single"),
        ("DELETE", f"/v2/team/app/blobs/{blob.digest}"),
        ("POST", "/v2/team/app/blobs/uploads/"),
    ]
    for method, path in hostile:
        a = proxy.call(method, path)
        assert a.status in (400, 404, 405), (method, path, a.status)
    # One legitimate request after them: its HEAD is the only request the bucket saw.
    assert proxy.call("HEAD", f"/v2/team/app/blobs/{blob.digest}").status == 200
    after = s3.requests()
    assert {k: after[k] - before[k] for k in after if after[k] != before[k]} == {"HEAD": 1}


def test_blobs_by_presigned_url_with_bucket_redirect(
    filled: Filled, s3: LocalS3, tmp_path: Path, skopeo: Skopeo, start_proxy: StartProxy
) -> None:
    args = ("--registry-host", f"s3://{filled.bucket}", "--bucket-redirect")
    p = start_proxy(*args, env=_env(s3))
    blob = filled.images["single"].blobs[-1]
    a = p.call("GET", f"/v2/team/app/blobs/{blob.digest}")
    assert a.status == 307
    assert a.headers["Location"].startswith(f"{s3.endpoint}/{filled.bucket}/v2/team/app/blobs/")
    assert "X-Amz-Signature=" in a.headers["Location"]
    image = filled.images["single"]
    dest = tmp_path / "redirected"
    skopeo.run("copy", "--src-tls-verify=false", p.ref("team/app:single"), f"dir:{dest}")
    assert (dest / "manifest.json").read_bytes() == image.manifest.raw


def test_a_file_directory_is_served_too(
    src_registry: LocalRegistry, skopeo: Skopeo, tmp_path: Path, start_proxy: StartProxy
) -> None:
    site = tmp_path / "site"
    images = _images()
    _copy_in(src_registry, f"file://{site}//team/app", images, {})
    p = start_proxy("--registry-host", f"file://{site}")
    _pull_all(skopeo, p, images, tmp_path / "out")
    a = p.call("GET", "/v2/team/app/tags/list?n=1")
    assert json.loads(a.body)["tags"] == ["list"]


def test_a_bucket_host_with_upstream_credentials_is_refused(s3: LocalS3, tmp_path: Path) -> None:
    env = {**_env(s3), "REGISTRY_HOST": "s3://some-bucket", "AUTH_HEADER": "Bearer x"}
    r = run_ocimirror("proxy", env=env)
    assert r.returncode == 2
    assert "a bucket's credentials come from" in r.stderr
    r = run_ocimirror("proxy", "--registry-host", "file:///srv", "--bucket-redirect")
    assert r.returncode == 2
    assert "redirect needs a bucket that can presign URLs" in r.stderr


def test_a_yaml_upstream_reads_the_bucket_with_its_own_settings(
    filled: Filled, s3: LocalS3, tmp_path: Path, start_proxy: StartProxy
) -> None:
    config = tmp_path / "proxy.yaml"
    config.write_text(
        "upstreams:\n"
        "  - name: mirror\n"
        f"    host: s3://{filled.bucket}/team\n"
        "    bucket:\n"
        f"      endpoint: {s3.endpoint}\n"
        "      region: us-east-1\n"
        "      credentials: {username: test, password: {env: BUCKET_SECRET}}\n"
    )
    # No AWS_* at all: the endpoint and key pair come from the upstream's `bucket:` block.
    env = {"BUCKET_SECRET": "test", "AWS_CONFIG_FILE": "/dev/null"}
    p = start_proxy("--config", str(config), env=env)
    image = filled.images["single"]
    a = p.call("GET", "/v2/mirror/app/manifests/single", headers=ACCEPT_ALL)
    assert (a.status, a.body) == (200, image.manifest.raw)
    assert p.call("GET", "/mirror/app").status == 404  # no page to send a browser to
