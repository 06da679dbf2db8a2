"""An object-store target and an OCI-layout target under faults, and a full layout disk.

- S3 (moto) behind the seeded TCP `FaultInjector` (all seven modes, half the connections):
  moto keeps whatever bytes arrive, so `ChecksumS3` stands in front of it for S3's own
  check of `x-amz-checksum-sha256`. No tag object names a blob that is missing or does
  not hash to its digest; at most one image of ten fails, and is named; the rerun
  completes without uploading a blob that was already complete.
- `sync` into an OCI layout from a faulty source, with the state database: no
  `index.json` entry names a missing blob, the database records no success for a failed
  copy, and the rerun completes.
- A full disk at a layout target, made with `RLIMIT_FSIZE` on the child process (a file
  may not grow past 100 KiB: the kernel fails the write with EFBIG, as it fails one with
  ENOSPC on a full disk; no root, no loop device, no test seam in the code): the copy fails
  with an error naming the layout and the blob, `index.json` names nothing missing, and
  the rerun without the limit (space freed) completes.
"""

from __future__ import annotations

import json
import os
import resource
from pathlib import Path
from typing import Any

import pytest

from ocimirror.reference import Reference
from ocimirror.state.db import StateDB
from ocimirror.stores.buckets import BucketSettings, open_bucket, store_options
from ocimirror.stores.layout import LayoutStore
from ocimirror.testkit.command import ocimirror_async
from ocimirror.testkit.faults import FaultInjector
from ocimirror.testkit.images import SampleImage, corpus_faults, make_image
from ocimirror.testkit.invariants import assert_sound, complete_blobs
from ocimirror.testkit.registry import LocalRegistry
from ocimirror.testkit.s3 import ChecksumS3, LocalS3
from ocimirror.testkit.seeding import seed

pytestmark = pytest.mark.faults

SOAK = os.environ.get("OCIMIRROR_SOAK", "") not in ("", "0")
SEEDS = list(range(1, 11)) if SOAK else [1]
FAULT_RATE = 0.5


def corpus() -> list[tuple[str, SampleImage]]:
    """Nine small images sharing two layers, and one multi-arch index: ten tags."""
    return corpus_faults(seed="targets")


def failed_of(summary: dict[str, Any]) -> list[dict[str, Any]]:
    return [r for r in summary.get("images", []) if r.get("status") == "failed"]


def check_named(code: int, summary: dict[str, Any], stderr: str) -> None:
    """At most one of ten images failed; each failure is in the exit code and named."""
    failed = failed_of(summary)
    assert len(summary["images"]) == 10, summary
    assert len(failed) <= 1, f"more than 1 of 10 images failed under faults: {failed}"
    assert "Traceback" not in stderr
    if failed:
        assert code == 3
        for image in failed:
            assert image["error"]
            assert image["source"].rsplit("/", 1)[-1] in stderr
    else:
        assert code == 0, stderr


def test_s3_and_r2_uploads_carry_their_checksum() -> None:
    settings = BucketSettings(endpoint="http://127.0.0.1:9000")
    for ref in ("s3://bucket/app", "r2://account/bucket/app"):
        _, opts = store_options(Reference.parse(ref), settings, None)
        assert opts["checksum_algorithm"] == "sha256"
    off = BucketSettings(endpoint="http://127.0.0.1:9000", checksum=False)
    _, opts = store_options(Reference.parse("s3://bucket/app"), off, None)
    assert "checksum_algorithm" not in opts


@pytest.mark.parametrize("fault_seed", SEEDS)
async def test_copy_into_s3_under_faults(
    s3: LocalS3, registry_factory: Any, fault_seed: int
) -> None:
    src: LocalRegistry = registry_factory("src")
    await seed(src, "app", corpus())
    bucket = s3.bucket()
    target = f"s3://{bucket}/app"
    async with (
        ChecksumS3(s3).running() as checked,
        FaultInjector(checked.port, seed=fault_seed, fault_rate=FAULT_RATE).running() as faulty,
    ):
        env = {**s3.environment(), "AWS_ENDPOINT_URL": f"http://{faulty.host}"}
        env.pop("AWS_ENDPOINT", None)
        code, out, err = await ocimirror_async(
            "copy", "--all-tags", "--json", f"{src.host}/app", target, env=env
        )
        check_named(code, json.loads(out), err)
        assert sum(faulty.counts.values()) > 0
        store = open_bucket(
            Reference.parse(target),
            BucketSettings(
                endpoint=s3.endpoint, region="us-east-1", access_key_id="t", secret_access_key="t"
            ),
        )
        try:
            await assert_sound(store, "app")
            wanted = {b.digest for _, image in corpus() for b in image.all_blobs()}
            complete = await complete_blobs(store, "app", wanted)
            puts_before = len(checked.puts)
            code, out, err = await ocimirror_async(
                "copy", "--all-tags", "--json", f"{src.host}/app", target, env=env
            )
            assert code == 0, err
            again = {p.rsplit("/", 1)[-1] for p in checked.puts[puts_before:]}
            assert not again & complete, "a complete blob was uploaded again"
            await assert_sound(store, "app", tags=10)
        finally:
            await store.close()


@pytest.mark.parametrize("fault_seed", SEEDS)
async def test_sync_into_a_layout_under_faults_records_what_happened(
    registry_factory: Any, tmp_path: Path, fault_seed: int
) -> None:
    src: LocalRegistry = registry_factory("src")
    await seed(src, "app", corpus())
    layout = tmp_path / "layout"
    state = f"sqlite:///{tmp_path}/state.db"
    async with FaultInjector(src.port, seed=fault_seed, fault_rate=FAULT_RATE).running() as faulty:
        config = tmp_path / "mirror.yaml"
        config.write_text(
            f"mirrors:\n  - name: app\n    source: {faulty.host}/app\n"
            f"    targets: ['oci:{layout}']\n"
        )
        code, out, err = await ocimirror_async(
            "sync", "-c", str(config), "--state", state, "--json"
        )
        assert sum(faulty.counts.values()) > 0
        (done,) = json.loads(out)
        failed = [c for c in done["copied"] if c["status"] == "failed"]
        assert len(failed) <= 1, failed
        assert "Traceback" not in err
        assert code == (3 if failed else 0), err
        for c in failed:  # named in the output and in the summary line
            assert c["target"] in err
        await assert_state_true(state, layout)
        code, out, err = await ocimirror_async("sync", "-c", str(config), "--state", state)
        assert code == 0, err
    await assert_state_true(state, layout)
    await assert_sound(LayoutStore(layout), "", tags=10)


async def assert_state_true(state: str, layout: Path) -> None:
    """No run left running; every success the database records is true at the target."""
    store = LayoutStore(layout)
    await assert_sound(store, "")
    async with StateDB(state) as db:
        runs = await db.runs("app", limit=100)
        assert runs
        assert "running" not in [r.status for r in runs]
        synced = await db.synced("app")
        for dest, row in synced.items():
            tag = dest.rsplit(":", 1)[-1]
            desc = await store.head_manifest("", tag)
            assert desc is not None, f"the state says {dest} was synced; the layout lacks it"
            assert desc.digest == row.target_digest
        # A failed image is recorded as failed (and never as synced).
        latest = runs[0]
        if latest.failed:
            assert latest.status == "partial"
            assert latest.error


async def test_full_layout_disk_fails_naming_the_target_and_a_rerun_completes(
    registry: LocalRegistry, tmp_path: Path
) -> None:
    small = [
        (f"small-{i}", make_image(layers=2, layer_size=8 * 1024, seed=f"s{i}")) for i in range(3)
    ]
    big = make_image(layers=2, layer_size=256 * 1024, seed="big")
    await seed(registry, "app", [*small, ("big", big)])
    layout = tmp_path / "layout"
    limit = 100 * 1024

    def full_disk() -> None:  # runs in the child, before ocimirror starts
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    code, out, err = await ocimirror_async(
        "copy", "--all-tags", "--json", f"{registry.host}/app", f"oci:{layout}", preexec=full_disk
    )
    assert code == 3, err
    assert "Traceback" not in err
    [failed] = failed_of(json.loads(out))
    assert failed["destination"].endswith(":big")
    assert f"oci:{layout}: cannot write blob sha256:" in failed["error"]
    assert "free space at the target" in failed["error"]
    assert "app:big" in err
    store = LayoutStore(layout)
    await assert_sound(store, "", tags=3)  # the small ones; nothing names the blob that did not fit
    leftovers = [p.name for p in (layout / "blobs" / "sha256").iterdir() if p.name.startswith(".")]
    assert not leftovers  # no temporary file left behind
    code, _, err = await ocimirror_async(
        "copy", "--all-tags", f"{registry.host}/app", f"oci:{layout}"
    )
    assert code == 0, err
    await assert_sound(store, "", tags=4)
