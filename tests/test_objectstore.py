"""BucketStore: the registry layout in a bucket (obstore memory/local stores, moto as S3)."""

from __future__ import annotations

import json
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path

import obstore
import pytest
from obstore.store import MemoryStore

from ocimirror import digest as digests
from ocimirror import mediatypes as mt
from ocimirror.errors import AuthError, DigestMismatch, ManifestError, NotFound, ReferenceError
from ocimirror.reference import Reference
from ocimirror.stores.buckets import BucketSettings, open_bucket
from ocimirror.stores.objectstore import DIGEST_ATTRIBUTE, IMMUTABLE, PART_SIZE, BucketStore
from ocimirror.testkit.command import run_ocimirror
from ocimirror.testkit.images import make_image, make_index, push
from ocimirror.testkit.registry import LocalRegistry
from ocimirror.testkit.s3 import LocalS3
from ocimirror.testkit.seeding import seed
from ocimirror.testkit.skopeo import Skopeo

ACCOUNT = "f6934f56ce237241104dbe9302cee786"


async def _chunks(data: bytes, size: int = 64 * 1024) -> AsyncIterator[bytes]:
    for i in range(0, len(data), size):
        yield data[i : i + size]


def _get(store: object, key: str) -> tuple[bytes, dict[str, str]]:
    got = obstore.get(store, key)  # type: ignore[arg-type]
    return bytes(got.bytes()), dict(got.attributes)


# -- names ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "transport", "registry", "repo", "tag"),
    [
        ("s3://my-bucket/library/alpine:3.20", "s3", "my-bucket", "library/alpine", "3.20"),
        ("gs://my-bucket/app", "gs", "my-bucket", "app", None),
        ("az://acct/images/org/app:1", "az", "acct/images", "org/app", "1"),
        (
            f"r2://{ACCOUNT}/docker-sync-test/ubuntu",
            "r2",
            f"{ACCOUNT}/docker-sync-test",
            "ubuntu",
            None,
        ),
        (
            f"r2:{ACCOUNT}:docker-sync-test:ubuntu",
            "r2",
            f"{ACCOUNT}/docker-sync-test",
            "ubuntu",
            None,
        ),
        ("s3:us-east-1:docker-sync-test:ubuntu:22.04", "s3", "docker-sync-test", "ubuntu", "22.04"),
        ("file:///srv/www//library/alpine:3", "file", "/srv/www", "library/alpine", "3"),
    ],
)
def test_bucket_references_parse_and_round_trip(
    text: str, transport: str, registry: str, repo: str, tag: str | None
) -> None:
    ref = Reference.parse(text)
    assert (ref.transport, ref.registry, ref.repository, ref.tag) == (
        transport,
        registry,
        repo,
        tag,
    )
    assert Reference.parse(str(ref)) == ref


@pytest.mark.parametrize(
    ("text", "fault"),
    [
        ("r3:us-east-1:docker-sync-test:ubuntu", "unknown bucket scheme 'r3'"),
        ("file:///srv/www/library/alpine", "end the directory with '//'"),
        ("s3://Bad_Bucket/app", "invalid bucket name"),
        ("s3://my-bucket", "missing repository name"),
        ("r2://acct", "expected r2://ACCOUNT/BUCKET/REPOSITORY"),
    ],
)
def test_bad_bucket_references_say_what_is_wrong(text: str, fault: str) -> None:
    with pytest.raises(ReferenceError, match=fault):
        Reference.parse(text)


# -- the layout, in memory ----------------------------------------------------------------


async def test_the_layout_is_docker_syncs_with_metadata_and_tags_list() -> None:
    mem = MemoryStore()
    store = BucketStore(mem, name="memory://", prefix="mirror")
    index = make_index(["linux/amd64", "linux/arm64"], seed="layout")
    await push(store, "library/app", index, "1.0")

    assert _get(mem, "mirror/v2")[0] == b"{}"
    raw, attrs = _get(mem, "mirror/v2/library/app/manifests/1.0")
    assert raw == index.manifest.raw
    assert attrs["Content-Type"] == mt.OCI_INDEX
    assert attrs[DIGEST_ATTRIBUTE] == index.digest
    assert attrs["Cache-Control"] == "public, max-age=60"
    by_digest = _get(mem, f"mirror/v2/library/app/manifests/{index.digest}")
    assert by_digest[0] == raw
    assert by_digest[1]["Cache-Control"] == IMMUTABLE
    for blob in index.all_blobs():
        data, battrs = _get(mem, f"mirror/v2/library/app/blobs/{blob.digest}")
        assert data == blob.data
        assert battrs["Cache-Control"] == IMMUTABLE
    tags = json.loads(_get(mem, "mirror/v2/library/app/tags/list")[0])
    assert tags == {"name": "library/app", "tags": ["1.0"]}

    await push(store, "library/app", make_image(seed="second"), "2.0")
    assert await store.list_tags("library/app") == ["1.0", "2.0"]
    desc = await store.head_manifest("library/app", "1.0")
    assert desc is not None
    assert (desc.digest, desc.media_type) == (index.digest, mt.OCI_INDEX)
    assert (await store.get_manifest("library/app", "1.0")).raw == index.manifest.raw
    assert await store.head_manifest("library/app", "nope") is None


async def test_a_blob_that_does_not_match_its_digest_leaves_no_object() -> None:
    mem = MemoryStore()
    store = BucketStore(mem, name="memory://")
    image = make_image(layer_size=3 * PART_SIZE // 2, seed="big")
    layer = (
        image.all_blobs()[-1] if image.all_blobs()[-1].size > PART_SIZE else image.all_blobs()[0]
    )
    wrong = bytearray(layer.data)
    wrong[-1] ^= 1
    with pytest.raises(DigestMismatch):
        await store.put_blob("app", layer.descriptor, _chunks(bytes(wrong)))
    assert await store.blob_size("app", layer.digest) is None
    await store.put_blob("app", layer.descriptor, _chunks(layer.data))
    assert await store.blob_size("app", layer.digest) == layer.size
    assert await store.mount_blob("other", layer.descriptor, "app")
    assert await store.blob_size("other", layer.digest) == layer.size


async def test_a_key_under_manifests_that_is_not_a_manifest_is_named() -> None:
    mem = MemoryStore()
    store = BucketStore(mem, name="s3://bucket")
    await obstore.put_async(mem, "v2/app/manifests/1", b"<html>not json</html>")
    with pytest.raises(ManifestError) as err:
        await store.get_manifest("app", "1")
    assert str(err.value).startswith("s3://bucket: v2/app/manifests/1: not a manifest:")
    assert "\n" not in str(err.value)


async def test_a_bucket_without_tags_list_is_listed_from_its_tag_objects(tmp_path: Path) -> None:
    store = open_bucket(Reference.parse(f"file://{tmp_path}//app:1"))
    image = make_image(seed="listing", oci=False)
    await push(store, "app", image, "1")
    await push(store, "app", image, "3.20")
    (tmp_path / "v2/app/tags/list").unlink()
    assert await store.list_tags("app") == ["1", "3.20"]
    layer = image.blobs[-1]
    assert await store.mount_blob("other/app", layer.descriptor, "app")
    assert (tmp_path / f"v2/other/app/blobs/{layer.digest}").read_bytes() == layer.data
    # A directory keeps no metadata: a typed twin carries the media type for nginx.
    twin = tmp_path / "v2/app/manifests/1.docker-manifest"
    assert twin.read_bytes() == image.manifest.raw
    desc = await store.head_manifest("app", "1")
    assert desc is not None
    assert desc.media_type == mt.DOCKER_MANIFEST


# -- S3 (moto) ---------------------------------------------------------------------------


def _env(s3: LocalS3) -> dict[str, str]:
    return {
        "AWS_ACCESS_KEY_ID": "test",
        "AWS_SECRET_ACCESS_KEY": "test",
        "AWS_REGION": "us-east-1",
        "AWS_ENDPOINT_URL": s3.endpoint,
        "OCIMIRROR_R2_ENDPOINT": s3.endpoint,
    }


def _settings(endpoint: str) -> BucketSettings:
    return BucketSettings(
        endpoint=endpoint, region="us-east-1", access_key_id="test", secret_access_key="test"
    )


def _pending_uploads(s3: LocalS3, bucket: str) -> str:
    with urllib.request.urlopen(f"{s3.endpoint}/{bucket}?uploads", timeout=10) as r:
        return str(r.read().decode())


async def test_a_failed_multipart_upload_is_aborted_in_s3(s3: LocalS3) -> None:
    bucket = s3.bucket()
    settings = _settings(s3.endpoint)
    store = open_bucket(Reference.parse(f"s3://{bucket}/app"), settings)
    data = b"x" * (2 * PART_SIZE + 10)
    wrong = make_image(seed="x").all_blobs()[0].descriptor
    desc = type(wrong)(wrong.media_type, wrong.digest, len(data))
    with pytest.raises(DigestMismatch):
        await store.put_blob("app", desc, _chunks(data, 1024 * 1024))
    assert await store.blob_size("app", desc.digest) is None
    assert "<Upload>" not in _pending_uploads(s3, bucket)
    # The same stream with its right digest: three parts, one object, the same bytes.
    right = type(wrong)(wrong.media_type, digests.of(data), len(data))
    await store.put_blob("app", right, _chunks(data, 1024 * 1024))
    assert await store.blob_size("app", right.digest) == len(data)
    async with store.open_blob("app", right) as chunks:
        assert b"".join([c async for c in chunks]) == data


async def test_a_missing_bucket_is_one_line_naming_bucket_and_key(s3: LocalS3) -> None:
    settings = _settings(s3.endpoint)
    store = open_bucket(Reference.parse("s3://no-such-bucket/app:1"), settings)
    with pytest.raises(NotFound) as err:
        await store.get_manifest("app", "1")
    assert str(err.value) == (
        "s3://no-such-bucket: read v2/app/manifests/1: the bucket does not exist"
    )


def test_copy_into_s3_and_r2_and_back_keeps_digests(
    s3: LocalS3, src_registry: LocalRegistry, dst_registry: LocalRegistry, skopeo: Skopeo
) -> None:
    import asyncio

    index = make_index(["linux/amd64", "linux/arm64"], seed="bucket-index")
    single = make_image(seed="bucket-single", oci=False)
    asyncio.run(seed(src_registry, "team/app", [("multi", index), ("single", single)]))
    bucket, r2_bucket = s3.bucket(), s3.bucket()
    env = _env(s3)
    for tag, image in (("multi", index), ("single", single)):
        for target in (f"s3://{bucket}/team/app:{tag}", f"r2:{ACCOUNT}:{r2_bucket}:app:{tag}"):
            r = run_ocimirror("copy", f"{src_registry.host}/team/app:{tag}", target, env=env)
            assert r.returncode == 0, r.stderr
        back = f"{dst_registry.host}/back/app:{tag}"
        r = run_ocimirror("copy", f"r2://{ACCOUNT}/{r2_bucket}/app:{tag}", back, env=env)
        assert r.returncode == 0, r.stderr
        got = skopeo.manifest(f"docker://{back}", registry=dst_registry)
        assert got == image.manifest.raw
    # A warm pass: one HEAD per tag at the bucket, nothing written; looking for referrers
    # added since (on by default) reads the index's children there, sparing the source.
    for extra, cost in (((), {"HEAD": 1, "GET": 1}), (("--no-referrers",), {"HEAD": 1})):
        before = s3.requests()
        r = run_ocimirror(
            "copy",
            *extra,
            f"{src_registry.host}/team/app:multi",
            f"s3://{bucket}/team/app:multi",
            env=env,
        )
        assert r.returncode == 0, r.stderr
        after = s3.requests()
        spent = {k: after[k] - before[k] for k in after if after[k] != before[k]}
        assert spent == cost


def test_docker_sync_s3_and_r2_examples_sync_into_buckets(
    s3: LocalS3, src_registry: LocalRegistry, skopeo: Skopeo, tmp_path: Path
) -> None:
    import asyncio

    asyncio.run(seed(src_registry, "library/ubuntu", [("latest", make_image(seed="ubuntu"))]))
    s3_bucket, r2_bucket = s3.bucket(), s3.bucket()
    # docker-sync's README examples, with their indentation corrected (and its S3 target's
    # `r3:` typo written as the `s3:` its comment names).
    config = tmp_path / "config.yaml"
    config.write_text(
        f"""\
sync:
    images:
        - source: {src_registry.host}/library/ubuntu:latest
          targets:
            - r2:{ACCOUNT}:{r2_bucket}:ubuntu # r2:<endpoint>:<bucket>:<image>
            - s3:us-east-1:{s3_bucket}:ubuntu # s3:<region>:<bucket>:<image>
    registries:
        - auth:
            helper: ""
            password: "test"
            token: ""
            username: "test"
          name: R2
          url: r2:{ACCOUNT}:{r2_bucket} # r2:<endpoint>:<bucket>
        - auth:
            helper: ""
            password: "test"
            token: ""
            username: "test"
          name: S3
          url: s3:us-east-1:{s3_bucket} # s3:<region>:<bucket>
"""
    )
    env = {"AWS_ENDPOINT_URL": s3.endpoint, "OCIMIRROR_R2_ENDPOINT": s3.endpoint}
    r = run_ocimirror("sync", "-c", str(config), "--state", f"sqlite:///{tmp_path}/s.db", env=env)
    assert r.returncode == 0, r.stdout + r.stderr
    for bucket in (s3_bucket, r2_bucket):
        store = open_bucket(Reference.parse(f"s3://{bucket}/ubuntu"), _settings(s3.endpoint))
        assert _get(store.store, "v2/ubuntu/tags/list")[0] == b'{"name":"ubuntu","tags":["latest"]}'
        assert _get(store.store, "v2")[0] == b"{}"


def test_docker_sync_readme_r2_example_as_printed_is_a_yaml_error_with_position(
    tmp_path: Path,
) -> None:
    from ocimirror.errors import ConfigError
    from ocimirror.settings.loading import load_config

    config = tmp_path / "config.yaml"
    config.write_text(
        "sync:\n"
        "    images:\n"
        "        - source: docker.io/library/ubuntu\n"
        "          targets:\n"
        f"            - r2:{ACCOUNT}:docker-sync-test:ubuntu # r2:<endpoint>:<bucket>:<image>\n"
        "      registries:\n"
        "            - auth:\n"
        '                password: "SECRET_ACCES_KEY"\n'
        '                username: "ACCESS_KEY_ID"\n'
        "              name: R2\n"
        f"              url: r2:{ACCOUNT}:docker-sync-test # r2:<endpoint>:<bucket>\n"
    )
    with pytest.raises(ConfigError) as err:
        load_config(config)
    assert str(err.value).startswith(f"{config}:6:7: (syntax): invalid YAML:")


def test_docker_sync_one_off_form_syncs_into_r2_with_the_target_key_pair(
    s3: LocalS3, src_registry: LocalRegistry, tmp_path: Path
) -> None:
    import asyncio

    image = make_image(seed="one-off")
    asyncio.run(seed(src_registry, "library/ubuntu", [("latest", image)]))
    bucket = s3.bucket()
    r = run_ocimirror(
        "sync",
        "--no-state",
        "--source",
        f"{src_registry.host}/library/ubuntu:latest",
        "--target",
        f"r2:{ACCOUNT}:{bucket}:ubuntu",
        "--target-username",
        "test",
        "--target-password",
        "test",
        env={"OCIMIRROR_R2_ENDPOINT": s3.endpoint},
    )
    assert r.returncode == 0, r.stdout + r.stderr
    store = open_bucket(Reference.parse(f"s3://{bucket}/ubuntu"), _settings(s3.endpoint))
    assert _get(store.store, "v2/ubuntu/manifests/latest")[0] == image.manifest.raw


def test_wrong_credentials_are_access_denied_naming_the_bucket() -> None:
    from ocimirror.testkit.s3 import RefusingS3

    with RefusingS3() as server:
        store = open_bucket(
            Reference.parse("s3://locked-bucket/app:1"),
            _settings(server.endpoint),
        )
        import asyncio

        with pytest.raises(AuthError) as err:
            asyncio.run(store.get_manifest("app", "1"))
        assert str(err.value) == "s3://locked-bucket: read v2/app/manifests/1: access denied"


# -- served back by nginx (the docs/static-registry.md recipe) ----------------------------


def test_the_docs_carry_the_tested_nginx_recipe() -> None:
    from ocimirror.testkit.nginx import SERVER_BLOCK

    doc = (Path(__file__).parent.parent / "docs" / "static-registry.md").read_text()
    assert SERVER_BLOCK.replace("{listen}", "80").replace("{root}", "/srv/www") in doc


def test_nginx_serves_a_file_layout_that_skopeo_and_podman_pull(
    src_registry: LocalRegistry, skopeo: Skopeo, tmp_path: Path
) -> None:
    import asyncio
    import shutil

    from ocimirror.testkit.nginx import StaticNginx
    from ocimirror.testkit.podman import podman_pull

    if shutil.which("nginx") is None:
        pytest.skip("nginx is not installed (scripts/bootstrap.sh installs it)")
    index = make_index(["linux/amd64", "linux/arm64"], seed="nginx-index")
    single = make_image(seed="nginx-single", oci=False)
    asyncio.run(seed(src_registry, "team/app", [("multi", index), ("single", single)]))
    site = tmp_path / "site"
    for tag in ("multi", "single"):
        r = run_ocimirror(
            "copy", f"{src_registry.host}/team/app:{tag}", f"file://{site}//team/app:{tag}"
        )
        assert r.returncode == 0, r.stderr
    with StaticNginx(site) as nginx:
        for tag, image in (("multi", index), ("single", single)):
            ref = f"docker://{nginx.host}/team/app:{tag}"
            raw = skopeo.run("inspect", "--raw", "--tls-verify=false", ref).stdout
            assert raw.encode() == image.manifest.raw
            req = urllib.request.Request(
                f"http://{nginx.host}/v2/team/app/manifests/{image.digest}", method="HEAD"
            )
            with urllib.request.urlopen(req) as resp:
                assert resp.headers["Content-Type"] == image.manifest.media_type
                assert resp.headers["Docker-Content-Digest"] == image.digest
            out = tmp_path / f"out-{tag}"
            # dir: keeps manifests as they are (and checks every blob against its digest).
            skopeo.run("copy", "--src-tls-verify=false", "--all", ref, f"dir:{out}")
            assert (out / "manifest.json").read_bytes() == image.manifest.raw
        with urllib.request.urlopen(f"http://{nginx.host}/v2/") as resp:
            assert resp.headers["Docker-Distribution-API-Version"] == "registry/2.0"
        if shutil.which("podman") is None:
            pytest.skip("podman is not installed (scripts/bootstrap.sh installs it)")
        result = podman_pull(skopeo, f"{nginx.host}/team/app:single")
        assert result.returncode == 0, result.stderr
        assert single.blobs[0].digest.split(":")[1] in result.stdout


def test_a_wrong_region_is_named_with_bucket_and_key() -> None:
    import asyncio

    from ocimirror.errors import StoreError
    from ocimirror.testkit.s3 import RefusingS3

    with RefusingS3(400, "AuthorizationHeaderMalformed") as server:
        store = open_bucket(Reference.parse("s3://far-bucket/app:1"), _settings(server.endpoint))
        with pytest.raises(StoreError) as err:
            asyncio.run(store.get_manifest("app", "1"))
        assert str(err.value) == (
            "s3://far-bucket: read v2/app/manifests/1: wrong region"
            " (the bucket is in another region; set its region)"
        )


def test_copy_into_a_missing_bucket_fails_in_one_line_naming_bucket_and_key(
    s3: LocalS3, src_registry: LocalRegistry
) -> None:
    import asyncio

    asyncio.run(seed(src_registry, "team/app", [("1", make_image(seed="nobucket"))]))
    r = run_ocimirror(
        "copy", f"{src_registry.host}/team/app:1", "s3://no-such-bucket/team/app:1", env=_env(s3)
    )
    assert r.returncode != 0
    lines = [line for line in r.stderr.splitlines() if "no-such-bucket" in line]
    assert any(
        "s3://no-such-bucket: write v2: the bucket does not exist" in line for line in lines
    ), r.stderr


def test_sync_config_buckets_section_prefix_and_a_warm_pass_of_heads(
    s3: LocalS3, src_registry: LocalRegistry, tmp_path: Path
) -> None:
    import asyncio

    images = [("1", make_image(seed="warm-1")), ("2", make_image(seed="warm-2", oci=False))]
    asyncio.run(seed(src_registry, "team/app", images))
    bucket = s3.bucket()
    config = tmp_path / "mirror.yaml"
    config.write_text(
        f"""\
buckets:
  s3://{bucket}:
    endpoint: {s3.endpoint}
    region: us-east-1
    credentials: {{username: test, password: test}}
    prefix: registry
mirrors:
  - source: [{src_registry.host}/team/app:1, {src_registry.host}/team/app:2]
    targets: [s3://{bucket}/mirror]
"""
    )
    r = run_ocimirror("sync", "-c", str(config), "--no-state")
    assert r.returncode == 0, r.stdout + r.stderr
    store = open_bucket(Reference.parse(f"s3://{bucket}/x"), _settings(s3.endpoint))
    listed = _get(store.store, "registry/v2/mirror/team/app/tags/list")[0]
    assert json.loads(listed) == {"name": "mirror/team/app", "tags": ["1", "2"]}
    before = s3.requests()
    r = run_ocimirror("sync", "-c", str(config), "--no-state")
    assert r.returncode == 0, r.stdout + r.stderr
    after = s3.requests()
    spent = {k: after[k] - before[k] for k in after if after[k] != before[k]}
    # One HEAD per tag at the bucket, nothing read or written.
    assert spent == {"HEAD": 2}


async def test_tags_put_at_once_by_one_store_all_reach_tags_list() -> None:
    import asyncio

    mem = MemoryStore()
    store = BucketStore(mem, name="memory://")
    image = make_image(seed="many-tags")
    await push(store, "app", image, "base")
    tags = [f"t{i}" for i in range(12)]
    await asyncio.gather(*(store.put_manifest("app", t, image.manifest) for t in tags))
    assert await store.list_tags("app") == sorted([*tags, "base"])


def test_a_bad_buckets_entry_is_named_with_its_line() -> None:
    from ocimirror.errors import ConfigError
    from ocimirror.settings.loading import parse_config

    with pytest.raises(ConfigError) as err:
        parse_config("buckets:\n  s3://Bad_Bucket: {}\n", "m.yaml")
    assert "invalid bucket name 'Bad_Bucket'" in str(err.value)
    with pytest.raises(ConfigError) as err:
        parse_config("buckets:\n  s3://good-bucket:\n    credentials: {token: x}\n", "m.yaml")
    assert str(err.value) == (
        "m.yaml:3:5: buckets.s3://good-bucket: a bucket's credentials are username (key id)"
        " and password (secret)"
    )


def test_a_missing_directory_source_is_not_found_and_not_made(tmp_path: Path) -> None:
    ref = Reference.parse(f"file://{tmp_path}/none//app:1")
    with pytest.raises(NotFound, match="no such directory"):
        open_bucket(ref, create=False)
    assert not (tmp_path / "none").exists()


def test_a_missing_directory_target_is_made_by_the_first_write_not_by_a_dry_run(
    tmp_path: Path, registry: LocalRegistry
) -> None:
    import asyncio

    image = make_image(seed="dir-made-on-write")
    asyncio.run(seed(registry, "team/app", [("1", image)]))
    target = f"file://{tmp_path}/a/b//team/app:1"
    r = run_ocimirror("copy", "--dry-run", f"{registry.host}/team/app:1", target)
    assert r.returncode == 0, r.stderr
    assert not (tmp_path / "a").exists()
    r = run_ocimirror("copy", f"{registry.host}/team/app:1", target)
    assert r.returncode == 0, r.stderr
    tag = tmp_path / "a" / "b" / "v2" / "team" / "app" / "manifests" / "1"
    assert tag.read_bytes() == image.manifest.raw
