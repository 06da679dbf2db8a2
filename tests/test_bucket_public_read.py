"""A bucket entry's `public_read: true`: every object written public-read (moto as S3).

Checked the way a reader would: each object's ACL, as S3 reports it, grants AllUsers
READ after a copy (the single-request PUTs, a multipart blob, a blob copied server-side
from another repository), and nothing of the kind without the option. Buckets that
cannot keep object ACLs are refused before any request, and a bucket that refuses ACLs
is named in one line.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path
from typing import Any

import pytest

from ocimirror.errors import ConfigError, StoreError
from ocimirror.extras import MissingExtra
from ocimirror.reference import Reference
from ocimirror.stores.buckets import BucketSettings, open_bucket
from ocimirror.stores.objectstore import PART_SIZE
from ocimirror.testkit.command import run_ocimirror
from ocimirror.testkit.images import make_image, make_index
from ocimirror.testkit.registry import LocalRegistry
from ocimirror.testkit.s3 import LocalS3, RefusingS3
from ocimirror.testkit.seeding import seed

ALL_USERS = "http://acs.amazonaws.com/groups/global/AllUsers"


def _client(s3: LocalS3) -> Any:
    import boto3
    from botocore.config import Config

    return boto3.session.Session().client(
        "s3",
        endpoint_url=s3.endpoint,
        region_name="us-east-1",
        aws_access_key_id="test",
        aws_secret_access_key="test",
        config=Config(s3={"addressing_style": "path"}),
    )


def _public(client: Any, bucket: str) -> dict[str, bool]:
    """Each object of the bucket: does its ACL grant AllUsers READ?"""
    out: dict[str, bool] = {}
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        for obj in page.get("Contents", []):
            grants = client.get_object_acl(Bucket=bucket, Key=obj["Key"])["Grants"]
            out[obj["Key"]] = any(
                g["Grantee"].get("URI") == ALL_USERS and g["Permission"] == "READ" for g in grants
            )
    return out


def _settings(s3: LocalS3, public_read: bool) -> BucketSettings:
    return BucketSettings(
        endpoint=s3.endpoint,
        region="us-east-1",
        access_key_id="test",
        secret_access_key="test",
        public_read=public_read,
    )


def test_public_read_objects_grant_all_users_read_and_none_do_by_default(
    s3: LocalS3, src_registry: LocalRegistry, tmp_path: Path
) -> None:
    big = make_image(seed="acl-big", layer_size=PART_SIZE + 4096)  # a multipart blob
    index = make_index(["linux/amd64", "linux/arm64"], seed="acl-index")
    asyncio.run(seed(src_registry, "team/app", [("big", big), ("multi", index)]))
    public, private = s3.bucket(), s3.bucket()
    host = src_registry.host
    # Without the option, no multipart object: moto answers GetObjectAcl on a multipart
    # object that was never given an ACL with a 500.
    config = tmp_path / "mirror.yaml"
    config.write_text(
        f"""\
buckets:
  s3://{public}:
    endpoint: {s3.endpoint}
    credentials: {{username: test, password: test}}
    public_read: true
  s3://{private}:
    endpoint: {s3.endpoint}
    credentials: {{username: test, password: test}}
mirrors:
  - source: [{host}/team/app:big, {host}/team/app:multi]
    targets: [s3://{public}/m]
  - source: [{host}/team/app:multi]
    targets: [s3://{private}/m]
"""
    )
    r = run_ocimirror("sync", "-c", str(config), "--no-state", env={"AWS_REGION": "us-east-1"})
    assert r.returncode == 0, r.stdout + r.stderr
    # A blob copied server-side from another repository of the bucket (CopyObject).
    layer = big.blobs[-1]
    store = open_bucket(Reference.parse(f"s3://{public}/x"), _settings(s3, True))
    assert asyncio.run(store.mount_blob("moved", layer.descriptor, "m/team/app"))

    client = _client(s3)
    acl = _public(client, public)
    for key in (
        "v2",
        f"v2/m/team/app/blobs/{layer.digest}",
        f"v2/moved/blobs/{layer.digest}",
        "v2/m/team/app/manifests/multi",
        f"v2/m/team/app/manifests/{index.digest}",
        "v2/m/team/app/tags/list",
    ):
        assert acl.get(key) is True, key
    assert all(acl.values()), [k for k, v in acl.items() if not v]
    assert len(acl) > 10
    acl = _public(client, private)
    assert len(acl) > 5
    assert not any(acl.values())
    # The public objects carry the same type and digest metadata as any others.
    head = client.head_object(Bucket=public, Key="v2/m/team/app/manifests/multi")
    assert head["ContentType"] == index.manifest.media_type
    assert head["Metadata"]["docker-content-digest"] == index.digest


@pytest.mark.parametrize(
    ("name", "cause"),
    [
        ("r2://f6934f56ce237241104dbe9302cee786/images", "R2 has no object ACLs"),
        ("gs://images", "grant allUsers the Storage Object Viewer role"),
        ("az://acct/images", "public access level to Blob"),
        ("file:///srv/www", "a directory has no ACLs"),
    ],
)
def test_public_read_on_a_bucket_without_object_acls_is_refused(name: str, cause: str) -> None:
    from ocimirror.settings.loading import parse_config

    with pytest.raises(ConfigError) as err:
        parse_config(f"buckets:\n  {name}:\n    public_read: true\n", "m.yaml")
    assert str(err.value).startswith(f"m.yaml:2:3: buckets: {name}: public_read: ")
    assert cause in str(err.value)
    ref = Reference.parse(f"{name}{'//' if name.startswith('file') else '/'}app")
    with pytest.raises(ConfigError) as err:
        open_bucket(ref, BucketSettings(public_read=True))
    assert str(err.value).startswith(f"{ref.place}: public_read: ")
    assert cause in str(err.value)


def test_public_read_without_boto3_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "boto3", None)  # import boto3 raises ImportError
    with pytest.raises(MissingExtra) as err:
        open_bucket(Reference.parse("s3://images/app"), BucketSettings(public_read=True))
    assert str(err.value) == (
        "s3://images: public_read needs the optional package boto3: pip install 'ocimirror[aws]'"
    )


def test_a_bucket_that_refuses_acls_is_named_in_one_line() -> None:
    # S3's answer to an ACL on a bucket whose Object Ownership is "bucket owner enforced".
    with RefusingS3(400, "AccessControlListNotSupported") as server:
        settings = BucketSettings(
            endpoint=server.endpoint,
            region="us-east-1",
            access_key_id="test",
            secret_access_key="test",
            public_read=True,
        )
        store = open_bucket(Reference.parse("s3://owned/app"), settings)
        image = make_image(seed="acl-refused")
        with pytest.raises(StoreError) as err:
            asyncio.run(store.put_manifest("app", "1", image.manifest))
        assert str(err.value) == (
            "s3://owned: write v2: the bucket does not allow ACLs (its Object Ownership is"
            " 'bucket owner enforced', the default for new S3 buckets): allow ACLs on the"
            " bucket, or drop public_read and make the bucket public with a bucket policy"
        )


def test_public_read_on_a_proxy_upstream_is_refused() -> None:
    from pydantic import ValidationError

    from ocimirror.proxy.settings import UpstreamConfig

    with pytest.raises(ValidationError, match="public_read is for copy targets"):
        UpstreamConfig.model_validate({"host": "s3://images", "bucket": {"public_read": True}})
