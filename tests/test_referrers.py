"""Referrers travel with their images: OCI 1.1 API, fallback tags and cosign tags.

Two cases, against real servers on loopback:

* the fallback-tag case: Debian's distribution 2.8 (no referrers API) on both sides, with
  referrers pushed as oras/cosign push them there (manifests, then `sha256-<hex>`);
* the API case: `ReferrersFront` (testkit) in front of distribution 2.8, which serves
  `/v2/<name>/referrers/<digest>` from the manifests PUT through it and answers such PUTs
  with `OCI-Subject`.

skopeo reads every copied artifact back by digest.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from ocimirror import mediatypes as mt
from ocimirror.errors import ConfigError
from ocimirror.reference import Reference
from ocimirror.service.jobs import JobManager
from ocimirror.service.models import MirrorEntry, MirrorRequest
from ocimirror.settings.loading import parse_config
from ocimirror.state.db import StateDB
from ocimirror.stores.layout import LayoutStore
from ocimirror.sync.runner import sync_pass
from ocimirror.testkit.artifacts import (
    NOTATION,
    SPDX,
    cosign_signature,
    fallback_tag_of,
    intoto_attestation,
    listing,
    push_fallback,
    signature_referrer,
    spdx_sbom,
)
from ocimirror.testkit.command import run_ocimirror
from ocimirror.testkit.front import Front
from ocimirror.testkit.images import SampleImage, make_image, make_index, push
from ocimirror.testkit.referrersfront import ReferrersFront, resolving_fallback_tag
from ocimirror.testkit.registry import LocalRegistry
from ocimirror.testkit.seeding import open_store
from ocimirror.testkit.skopeo import Skopeo
from ocimirror.transfer.copy import CopyOptions, ImageResult
from ocimirror.transfer.engine import RunSummary, run_copies
from ocimirror.transfer.referrers import ReferrerOptions, is_referrer_tag
from ocimirror.transfer.tags import TagFilter

WRITES = ("PUT", "POST", "PATCH", "DELETE")


async def copy(
    src: str,
    dst: str,
    referrers: ReferrerOptions | None = None,
    *,
    all_tags: bool = False,
    platforms: Sequence[str] = (),
) -> RunSummary:
    options = CopyOptions(platforms=tuple(platforms), referrers=referrers or ReferrerOptions())
    return await run_copies(
        [(Reference.parse(src), Reference.parse(dst))], all_tags=all_tags, copy_options=options
    )


def only(summary: RunSummary) -> ImageResult:
    assert len(summary.results) == 1, summary.to_json()
    return summary.results[0]


def statuses(result: ImageResult) -> dict[str, str]:
    return {r.digest: r.status for r in result.referrers}


def same_bytes(skopeo: Skopeo, registry: LocalRegistry, repo: str, *artifacts: SampleImage) -> None:
    """skopeo reads each artifact back by digest: byte for byte what the source holds."""
    for a in artifacts:
        raw = skopeo.manifest(f"docker://{registry.host}/{repo}@{a.digest}", registry=registry)
        assert raw == a.manifest.raw


def fallback_digests(skopeo: Skopeo, registry: LocalRegistry, repo: str, subject: str) -> set[str]:
    tag = fallback_tag_of(subject)
    index = json.loads(skopeo.manifest(f"docker://{registry.host}/{repo}:{tag}", registry=registry))
    assert index["mediaType"] == mt.OCI_INDEX
    return {m["digest"] for m in index["manifests"]}


class SignedIndex:
    """A multi-arch index, signed twice (cosign tag, OCI referrer), with an attestation,
    an SBOM per platform and a signature of one SBOM (a referrer of a referrer)."""

    def __init__(self) -> None:
        self.index = make_index(("linux/amd64", "linux/arm64/v8"), seed="signed")
        self.amd64, self.arm64 = self.index.children
        self.cosign = cosign_signature(self.index.descriptor)
        self.sig = signature_referrer(self.index.descriptor)
        self.att = intoto_attestation(self.index.descriptor)
        self.sbom_amd64 = spdx_sbom(self.amd64.descriptor, "amd64")
        self.sbom_arm64 = spdx_sbom(self.arm64.descriptor, "arm64")
        self.sbom_sig = signature_referrer(self.sbom_amd64.descriptor)

    @property
    def referrers(self) -> tuple[SampleImage, ...]:
        return (self.sig, self.att, self.sbom_amd64, self.sbom_arm64, self.sbom_sig)

    async def push_fallback(self, host: str, repo: str = "app", tag: str = "v1") -> None:
        async with open_store(host) as s:
            await push(s, repo, self.index, tag)
            await push(s, repo, self.cosign, fallback_tag_of(self.index.digest) + ".sig")
            await push_fallback(s, repo, self.index.digest, self.sig, self.att)
            await push_fallback(s, repo, self.amd64.digest, self.sbom_amd64)
            await push_fallback(s, repo, self.arm64.digest, self.sbom_arm64)
            await push_fallback(s, repo, self.sbom_amd64.digest, self.sbom_sig)

    async def push_api(self, host: str, repo: str = "app", tag: str = "v1") -> None:
        async with open_store(host) as s:
            await push(s, repo, self.index, tag)
            await push(s, repo, self.cosign, fallback_tag_of(self.index.digest) + ".sig")
            for a in self.referrers:
                await push(s, repo, a)


# -- the fallback-tag case: distribution 2.8 on both sides -------------------------------


async def test_signed_index_with_sboms_through_fallback_tags(
    registry_pair: tuple[LocalRegistry, LocalRegistry], skopeo: Skopeo
) -> None:
    src, dst = registry_pair
    image = SignedIndex()
    await image.push_fallback(src.host)

    summary = await copy(f"{src.host}/app:v1", f"{dst.host}/app:v1")
    result = only(summary)
    assert result.status == "copied", result.error
    copied = {a.digest for a in image.referrers} | {image.cosign.digest}
    assert statuses(result) == dict.fromkeys(copied, "copied")
    assert {r.via for r in result.referrers} == {"tag", "cosign"}
    # The source has no API: asked once for the whole run, then only fallback tags.
    assert src.count("GET", "referrers") == 1

    same_bytes(skopeo, dst, "app", image.index, *image.referrers, image.cosign)
    assert fallback_digests(skopeo, dst, "app", image.index.digest) == {
        image.sig.digest,
        image.att.digest,
    }
    assert fallback_digests(skopeo, dst, "app", image.amd64.digest) == {image.sbom_amd64.digest}
    assert fallback_digests(skopeo, dst, "app", image.arm64.digest) == {image.sbom_arm64.digest}
    assert fallback_digests(skopeo, dst, "app", image.sbom_amd64.digest) == {image.sbom_sig.digest}
    sig_tag = fallback_tag_of(image.index.digest) + ".sig"
    assert skopeo.manifest(f"docker://{dst.host}/app:{sig_tag}", registry=dst) == (
        image.cosign.manifest.raw
    )
    doc = summary.to_json()["images"][0]
    assert len(doc["referrers"]) == 6
    assert {"subject", "digest", "artifact_type", "via", "status"} <= set(doc["referrers"][0])

    # A warm pass: nothing written; per image and child one HEAD per fallback/cosign tag,
    # one HEAD per referrer's fallback tag, the fallback indexes that exist read once.
    src_mark, dst_mark = src.mark(), dst.mark()
    warm = only(await copy(f"{src.host}/app:v1", f"{dst.host}/app:v1"))
    assert warm.status == "unchanged"
    assert set(statuses(warm).values()) == {"present"}
    assert sum(dst.count(m, since=dst_mark) for m in WRITES) == 0
    subjects_with_cosign = 3  # the index and its two children
    # The OCI referrers' own fallback tags are HEADed (a signature of an SBOM is found so);
    # cosign tags are looked for on images only, and cosign's own images are not followed.
    referrers = 5
    assert src.count("HEAD", "manifest", since=src_mark) == 1 + 4 * subjects_with_cosign + referrers
    assert src.count("GET", "manifest", since=src_mark) == 4  # the four fallback indexes
    assert src.count("GET", "referrers", since=src_mark) == 1
    assert src.count("GET", "blob", since=src_mark) == 0
    # The destination: its tag, the index's bytes (children), and its fallback indexes.
    assert dst.count("GET", "referrers", since=dst_mark) == 1
    assert dst.count("GET", "manifest", since=dst_mark) == 1 + 4


async def test_a_target_fallback_index_keeps_what_another_writer_put_there(
    registry_pair: tuple[LocalRegistry, LocalRegistry], skopeo: Skopeo
) -> None:
    src, dst = registry_pair
    image = make_image(seed="kept")
    sbom = spdx_sbom(image.descriptor)
    theirs = signature_referrer(image.descriptor, artifact_type=NOTATION)
    async with open_store(src.host) as s:
        await push(s, "app", image, "v1")
        await push_fallback(s, "app", image.digest, sbom)
    async with open_store(dst.host) as d:
        await push(d, "app", image, "v1")
        await push_fallback(d, "app", image.digest, theirs)

    result = only(await copy(f"{src.host}/app:v1", f"{dst.host}/app:v1"))
    assert result.status == "unchanged"
    assert statuses(result) == {sbom.digest: "copied"}
    assert fallback_digests(skopeo, dst, "app", image.digest) == {theirs.digest, sbom.digest}
    same_bytes(skopeo, dst, "app", sbom, theirs)
    tag = fallback_tag_of(image.digest)
    index = json.loads(skopeo.manifest(f"docker://{dst.host}/app:{tag}", registry=dst))
    by_digest = {m["digest"]: m for m in index["manifests"]}
    assert by_digest[sbom.digest]["artifactType"] == SPDX
    assert by_digest[sbom.digest]["annotations"] == sbom.manifest.data["annotations"]
    assert by_digest[theirs.digest]["artifactType"] == NOTATION


async def test_filters_by_artifact_type(
    registry_pair: tuple[LocalRegistry, LocalRegistry], skopeo: Skopeo
) -> None:
    src, dst = registry_pair
    image = SignedIndex()
    await image.push_fallback(src.host)

    result = only(
        await copy(
            f"{src.host}/app:v1",
            f"{dst.host}/app:v1",
            ReferrerOptions(exclude=("application/spdx*",)),
        )
    )
    assert result.status == "copied"
    s = statuses(result)
    assert s[image.sbom_amd64.digest] == s[image.sbom_arm64.digest] == "filtered"
    assert s[image.sig.digest] == s[image.att.digest] == s[image.cosign.digest] == "copied"
    # An excluded SBOM is not followed either: its signature stays behind.
    assert image.sbom_sig.digest not in s
    for a in (image.sbom_amd64, image.sbom_sig):
        out = skopeo.run(
            "inspect",
            "--raw",
            "--tls-verify=false",
            f"docker://{dst.host}/app@{a.digest}",
            check=False,
        )
        assert out.returncode != 0
    assert dst.tags("app") == sorted(
        ["v1", fallback_tag_of(image.index.digest), fallback_tag_of(image.index.digest) + ".sig"]
    )

    only_sigs = ReferrerOptions(include=("application/vnd.dev.cosign.*",))
    again = only(await copy(f"{src.host}/app:v1", f"{dst.host}/other:v1", only_sigs))
    kept = {d for d, st in statuses(again).items() if st == "copied"}
    assert kept == {image.sig.digest, image.cosign.digest}


def test_tag_filters_never_select_referrer_tags() -> None:
    hexd = "ab" * 32
    listed = ["v1", f"sha256-{hexd}", f"sha256-{hexd}.sig", f"sha256-{hexd}.att", "sha256-x"]
    assert TagFilter().select(listed) == ["v1", "sha256-x"]
    assert TagFilter(include=("sha256-.*",)).select(listed) == ["sha256-x"]
    # An exact tag is still the user's to ask for.
    assert TagFilter(tags=(f"sha256-{hexd}",)).select([]) == [f"sha256-{hexd}"]
    assert is_referrer_tag(f"sha256-{hexd}.sbom")
    assert not is_referrer_tag(f"sha256-{hexd}.sig2")
    assert not is_referrer_tag(f"sha512-{hexd}")


def test_options_refuse_what_makes_no_sense() -> None:
    with pytest.raises(ConfigError, match="require_signed needs referrers enabled"):
        ReferrerOptions(enabled=False, require_signed=True)
    with pytest.raises(ConfigError, match="must be a list of globs"):
        ReferrerOptions(include="application/*")  # type: ignore[arg-type]


async def test_require_signed_skips_and_reports_unsigned_images(
    registry_pair: tuple[LocalRegistry, LocalRegistry],
) -> None:
    src, dst = registry_pair
    signed = make_image(seed="signed")
    unsigned = make_image(seed="unsigned")
    async with open_store(src.host) as s:
        await push(s, "app", signed, "signed")
        await push(
            s, "app", cosign_signature(signed.descriptor), fallback_tag_of(signed.digest) + ".sig"
        )
        await push(s, "app", unsigned, "unsigned")
        await push_fallback(s, "app", unsigned.digest, spdx_sbom(unsigned.descriptor))

    out = run_ocimirror(
        "copy", "--all-tags", "--require-signed", "--json", f"{src.host}/app", f"{dst.host}/app"
    )
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)
    by_tag = {i["source"].rsplit(":", 1)[1]: i for i in doc["images"]}
    # The cosign tag is no image of its own: it travels with `signed`.
    assert set(by_tag) == {"signed", "unsigned"}
    assert by_tag["signed"]["status"] == "copied"
    assert by_tag["unsigned"]["status"] == "skipped"
    assert by_tag["unsigned"]["reason"] == "unsigned"
    assert doc["counts"]["skipped"] == 1
    assert "1 skipped (unsigned)" in out.stderr
    assert dst.tags("app") == sorted(["signed", fallback_tag_of(signed.digest) + ".sig"])


async def test_dry_run_lists_referrers_and_writes_nothing(
    registry_pair: tuple[LocalRegistry, LocalRegistry],
) -> None:
    src, dst = registry_pair
    image = SignedIndex()
    await image.push_fallback(src.host)
    mark = dst.mark()
    out = run_ocimirror("copy", "--dry-run", "--json", f"{src.host}/app:v1", f"{dst.host}/app:v1")
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)["images"][0]
    assert doc["status"] == "planned"
    assert {r["digest"]: r["status"] for r in doc["referrers"]} == dict.fromkeys(
        [a.digest for a in image.referrers] + [image.cosign.digest], "found"
    )
    assert sum(dst.count(m, since=mark) for m in WRITES) == 0


async def test_sync_dry_run_lists_the_referrers_it_would_copy_and_writes_nothing(
    registry_pair: tuple[LocalRegistry, LocalRegistry], tmp_path: Path
) -> None:
    src, dst = registry_pair
    old, new = make_image(seed="dry-old"), make_image(seed="dry-new")
    async with open_store(src.host) as s:
        await push(s, "lib/app", old, "old")
    cfg = tmp_path / "mirror.yaml"
    cfg.write_text(
        f"mirrors:\n  - name: app\n    source: {src.host}/lib/app\n"
        f"    targets: [{dst.host}/mirror/app]\n"
    )
    assert run_ocimirror("sync", "-c", str(cfg), "--no-state").returncode == 0
    # Then: `old` is signed, `new` arrives with an SBOM, itself signed.
    sig, sbom = signature_referrer(old.descriptor), spdx_sbom(new.descriptor)
    sbom_sig = signature_referrer(sbom.descriptor)
    async with open_store(src.host) as s:
        await push_fallback(s, "lib/app", old.digest, sig)
        await push(s, "lib/app", new, "new")
        await push_fallback(s, "lib/app", new.digest, sbom)
        await push_fallback(s, "lib/app", sbom.digest, sbom_sig)
    mark = dst.mark()
    out = run_ocimirror("sync", "-c", str(cfg), "--no-state", "--dry-run", "--json")
    assert out.returncode == 0, out.stderr
    (doc,) = json.loads(out.stdout)
    (planned,) = doc["planned"]
    assert planned["target"].endswith(":new")
    assert planned["status"] == "planned"
    assert {r["digest"]: r["status"] for r in planned["referrers"]} == {
        sbom.digest: "found",
        sbom_sig.digest: "found",
    }
    (check,) = doc["referrer_checks"]
    assert check["target"].endswith(":old")
    assert [(r["digest"], r["status"], r["via"]) for r in check["referrers"]] == [
        (sig.digest, "found", "tag")
    ]
    assert doc["copied"] == []
    assert "mirror/app:new: referrers 2 to copy" in out.stderr
    assert "mirror/app:old: referrers 1 to copy" in out.stderr
    assert sum(dst.count(m, since=mark) for m in WRITES) == 0
    assert dst.tags("mirror/app") == ["old"]


async def test_no_referrers_asks_nothing(
    registry_pair: tuple[LocalRegistry, LocalRegistry],
) -> None:
    src, dst = registry_pair
    image = SignedIndex()
    await image.push_fallback(src.host)
    mark = src.mark()
    out = run_ocimirror("copy", "--no-referrers", f"{src.host}/app:v1", f"{dst.host}/app:v1")
    assert out.returncode == 0, out.stderr
    assert src.count("GET", "referrers", since=mark) == 0
    assert src.count("HEAD", "manifest", since=mark) == 0
    assert dst.tags("app") == ["v1"]


async def test_a_fallback_tag_resolving_to_the_image_is_ignored(
    registry_pair: tuple[LocalRegistry, LocalRegistry],
) -> None:
    """Some registries answer any `sha256-<hex>` tag with the image of that digest."""
    src, dst = registry_pair
    image = make_image(seed="self")
    async with open_store(src.host) as s:
        await push(s, "app", image, "v1")

    async with Front(src, resolving_fallback_tag(image.digest)).running() as front:
        result = only(await copy(f"{front.host}/app:v1", f"{dst.host}/app:v1"))
    assert result.status == "copied"
    assert result.referrers == []
    assert dst.tags("app") == ["v1"]


async def test_layout_target_keeps_referrers_in_index_json(
    src_registry: LocalRegistry, tmp_path: Path
) -> None:
    image = make_image(seed="layout")
    sbom = spdx_sbom(image.descriptor)
    sig = signature_referrer(sbom.descriptor)
    async with open_store(src_registry.host) as s:
        await push(s, "app", image, "v1")
        await push_fallback(s, "app", image.digest, sbom)
        await push_fallback(s, "app", sbom.digest, sig)

    result = only(await copy(f"{src_registry.host}/app:v1", f"oci:{tmp_path / 'out'}:v1"))
    assert result.status == "copied"
    index = json.loads((tmp_path / "out" / "index.json").read_text())
    untagged = {m["digest"]: m for m in index["manifests"] if "annotations" not in m}
    assert set(untagged) == {sbom.digest, sig.digest}
    assert untagged[sbom.digest]["artifactType"] == SPDX
    layout = LayoutStore(tmp_path / "out")
    assert [d.digest for d in await layout.referrers("", image.digest) or []] == [sbom.digest]
    assert [d.digest for d in await layout.referrers("", sbom.digest) or []] == [sig.digest]
    assert await layout.list_tags("") == ["v1"]


# -- the API case: ReferrersFront over distribution 2.8 -----------------------------------


async def test_api_source_and_target(registry_pair: tuple[LocalRegistry, LocalRegistry]) -> None:
    src, dst = registry_pair
    image = SignedIndex()
    async with (
        ReferrersFront(src, page_size=1).running() as sfront,
        ReferrersFront(dst).running() as dfront,
    ):
        await image.push_api(sfront.host)
        summary = await copy(f"{sfront.host}/app:v1", f"{dfront.host}/app:v1")
        result = only(summary)
        assert result.status == "copied", result.error
        assert {r.digest for r in result.referrers if r.via == "api"} == {
            a.digest for a in image.referrers
        }
        # Pages of one descriptor: the index's two referrers took two requests.
        index_asks = [
            s for s in sfront.of("GET", "referrers") if s.path.endswith(image.index.digest)
        ]
        assert [s.query.get("last") for s in index_asks] == [
            None,
            min(image.sig.digest, image.att.digest),
        ]
        # The target answered OCI-Subject: it lists them itself, no fallback tag is written.
        assert {d["digest"] for d in dfront.referrers_of("app", image.index.digest)} == {
            image.sig.digest,
            image.att.digest,
        }
        assert [d["digest"] for d in dfront.referrers_of("app", image.sbom_amd64.digest)] == [
            image.sbom_sig.digest
        ]
        assert dst.tags("app") == sorted(["v1", fallback_tag_of(image.index.digest) + ".sig"])

        # Warm: one referrers request per subject (the 2 pages of the index's aside).
        seen, dseen = len(sfront.seen), len(dfront.seen)
        warm = only(await copy(f"{sfront.host}/app:v1", f"{dfront.host}/app:v1"))
        assert warm.status == "unchanged"
        after = sfront.seen[seen:]
        referrer_gets = [s for s in after if s.kind == "referrers"]
        # index (2 pages), 2 children, 5 referrers (cosign's tag image is not followed)
        assert len(referrer_gets) == 2 + 2 + 5
        assert len([s for s in after if s.method == "HEAD"]) == 1 + 3 * 3
        assert not [s for s in after if s.method == "GET" and s.kind in ("manifest", "blob")]
        assert not [s for s in dfront.seen[dseen:] if s.method in WRITES]


async def test_server_filter_is_used_and_honoured(
    registry_pair: tuple[LocalRegistry, LocalRegistry],
) -> None:
    src, dst = registry_pair
    image = SignedIndex()
    async with ReferrersFront(src).running() as front:
        await image.push_api(front.host)
        result = only(
            await copy(
                f"{front.host}/app:v1", f"{dst.host}/app:v1", ReferrerOptions(include=(SPDX,))
            )
        )
        assert result.status == "copied"
        asks = front.of("GET", "referrers")
        assert {s.query.get("artifactType") for s in asks} == {SPDX}
    copied = {r.digest for r in result.referrers if r.status == "copied"}
    assert copied == {image.sbom_amd64.digest, image.sbom_arm64.digest}


async def test_a_source_api_failing_fails_that_image_only(
    registry_pair: tuple[LocalRegistry, LocalRegistry],
) -> None:
    src, dst = registry_pair
    good, bad = make_image(seed="good"), make_image(seed="bad")
    async with ReferrersFront(src).running() as front:
        async with open_store(front.host) as s:
            await push(s, "app", good, "good")
            await push(s, "app", bad, "bad")
            await push(s, "app", spdx_sbom(good.descriptor))
        front.failing = {bad.digest}
        summary = await copy(f"{front.host}/app", f"{dst.host}/app", all_tags=True)
        by_tag = {r.source.rsplit(":", 1)[1]: r for r in summary.results}
        assert by_tag["good"].status == "copied"
        assert by_tag["bad"].status == "failed"
        assert "HTTP 500" in by_tag["bad"].error
        failed_asks = [s for s in front.of("GET", "referrers") if s.path.endswith(bad.digest)]
        assert len(failed_asks) == 5  # the client's attempts: retried, then given up
    # Nothing of the failed image was written; the other went through with its SBOM.
    assert dst.tags("app") == sorted(["good", fallback_tag_of(good.digest)])


# -- sync passes ----------------------------------------------------------------------------


async def test_sync_warm_pass_finds_a_signature_added_later(
    registry_pair: tuple[LocalRegistry, LocalRegistry], tmp_path: Path, skopeo: Skopeo
) -> None:
    src, dst = registry_pair
    images = {t: make_image(seed=t) for t in ("1.0.0", "1.1.0", "latest")}
    async with open_store(src.host) as s:
        for tag, image in images.items():
            await push(s, "lib/app", image, tag)
    config = parse_config(
        f"mirrors:\n  - name: app\n    source: {src.host}/lib/app\n"
        f"    targets: [{dst.host}/mirror/app]\n"
        '    immutable_tags: ["*.*.*"]\n'
    )
    async with StateDB(f"sqlite:///{tmp_path}/state.db") as state:
        (cold,) = await sync_pass(config, state=state)
        assert cold.copied == 3
        # Signed after it was mirrored: the digest is the same, the signature is new.
        latest = images["latest"]
        sig = signature_referrer(latest.descriptor)
        async with open_store(src.host) as s:
            await push_fallback(s, "lib/app", latest.digest, sig)
        m1, m2 = src.mark(), dst.mark()
        (warm,) = await sync_pass(config, state=state)
        assert warm.status == "ok", warm.failed
        assert warm.copied == 0
        (check,) = warm.referrer_checks
        assert check.destination.endswith(":latest")
        assert statuses(check) == {sig.digest: "copied"}
        same_bytes(skopeo, dst, "mirror/app", sig)
        assert fallback_digests(skopeo, dst, "mirror/app", latest.digest) == {sig.digest}
        # Immutable tags were not asked about; `latest` cost one API probe for the run and
        # the plan's HEAD. The plan listed the source's tags: the fallback tag listed there
        # is read (one GET by tag), the cosign tags and the signature's own fallback tag
        # are not listed, so not asked for.
        src_seen = Counter((r.method, r.kind) for r in src.requests(since=m1))
        assert src_seen[("GET", "referrers")] == 1
        assert src_seen[("HEAD", "manifest")] == 1
        assert src_seen[("GET", "manifest")] == 1 + 1  # the fallback index, the signature
        # The target's listing (3 tags go there) shows no fallback tag: not asked for.
        dst_seen = Counter((r.method, r.kind) for r in dst.requests(since=m2))
        assert dst_seen[("HEAD", "manifest")] == 1  # the plan's, of `latest`
        # Unchanged, signature present: the next pass reads both fallback indexes, and
        # writes nothing.
        m1, m2 = src.mark(), dst.mark()
        (again,) = await sync_pass(config, state=state)
        assert again.status == "ok"
        assert again.referrer_checks[0].referrers[0].status == "present"
        assert sum(dst.count(m, since=m2) for m in WRITES) == 0
        assert src.count("HEAD", "manifest", since=m1) == 1
        assert src.count("GET", "manifest", since=m1) == 1
        assert dst.count("GET", "manifest", since=m2) == 1
        # check_immutable: the version tags are looked at too.
        checked = parse_config(
            f"mirrors:\n  - name: app\n    source: {src.host}/lib/app\n"
            f"    targets: [{dst.host}/mirror/app]\n"
            '    immutable_tags: ["*.*.*"]\n'
            "    referrers: {check_immutable: true}\n"
        )
        m1 = src.mark()
        (third,) = await sync_pass(checked, state=state)
        assert third.status == "ok"
        # Their fallback and cosign tags are not in the source's listing: no more requests.
        assert src.count("HEAD", "manifest", since=m1) == 1
        assert src.count("GET", "manifest", since=m1) == 1


def test_config_referrers_section_is_checked() -> None:
    with pytest.raises(ConfigError, match="require_signed needs referrers enabled"):
        parse_config(
            "mirrors:\n  - source: a.example/app\n    targets: [b.example/app]\n"
            "    referrers: {enabled: false, require_signed: true}\n"
        )
    cfg = parse_config(
        "defaults:\n  referrers: {exclude: ['application/spdx+json']}\n"
        "mirrors:\n  - source: a.example/app\n    targets: [b.example/app]\n"
    )
    referrers = cfg.mirrors[0].referrers
    assert referrers is not None
    assert referrers.options() == ReferrerOptions(exclude=("application/spdx+json",))


# -- the serve API ---------------------------------------------------------------------------


async def test_api_requests_carry_referrer_options(
    registry_pair: tuple[LocalRegistry, LocalRegistry], tmp_path: Path, skopeo: Skopeo
) -> None:
    src, dst = registry_pair
    signed = SignedIndex()
    await signed.push_fallback(src.host, "lib/app", "signed")
    unsigned = make_image(seed="api-unsigned")
    async with open_store(src.host) as s:
        await push(s, "lib/app", unsigned, "unsigned")

    def entry(tag: str, **options: Any) -> MirrorEntry:
        return MirrorEntry(src=f"{src.host}/lib/app:{tag}", dst=f"{dst.host}/app:{tag}", **options)

    async with StateDB(f"sqlite:///{tmp_path}/state.db") as state:
        manager = JobManager(state)
        await manager.start()
        try:
            view, _ = await manager.submit(
                MirrorRequest(
                    mirrors=[
                        entry("signed", referrers_exclude=["application/spdx+json"]),
                        entry("unsigned"),
                    ],
                    require_signed=True,
                )
            )
            done = await manager.wait(view.id)
            bad = await manager.run_sync(
                MirrorRequest(mirrors=[entry("signed", referrers=False)], require_signed=True)
            )
        finally:
            await manager.close()
    first, second = done.entries
    assert first.status == "copied"
    assert second.status == "unchanged"
    assert second.error == f"1 of 1 images skipped (unsigned): {dst.host}/app:unsigned"
    assert second.digests == {}
    assert dst.tags("app") == sorted(
        [
            "signed",
            fallback_tag_of(signed.index.digest),
            fallback_tag_of(signed.index.digest) + ".sig",
        ]
    )
    same_bytes(skopeo, dst, "app", signed.sig, signed.att, signed.cosign)
    with pytest.raises(Exception):  # noqa: B017, PT011 - any failure: the SBOM was excluded
        same_bytes(skopeo, dst, "app", signed.sbom_amd64)
    assert bad.errors is not None
    assert "require_signed needs referrers enabled" in bad.errors[0].error


# -- hostile sources ----------------------------------------------------------------------


async def test_a_referrers_page_linking_elsewhere_is_refused(
    registry_pair: tuple[LocalRegistry, LocalRegistry],
) -> None:
    src, dst = registry_pair
    image = make_image(seed="link-away")
    async with open_store(src.host) as s:
        await push(s, "app", image, "v1")

    async def away(front: Front, request: web.Request, body: bytes) -> web.StreamResponse | None:
        if "/referrers/" not in request.path:
            return None
        doc = {
            "schemaVersion": 2,
            "mediaType": mt.OCI_INDEX,
            "manifests": [listing(spdx_sbom(image.descriptor))],
        }
        return web.json_response(
            doc, headers={"Link": f'<http://{dst.host}/v2/app/referrers/x?last=1>; rel="next"'}
        )

    async with Front(src, away).running() as front:
        result = only(await copy(f"{front.host}/app:v1", f"{dst.host}/app:v1"))
        assert [s.query for s in front.of("GET", "referrers")] == [{}]
    assert result.status == "failed"
    assert result.error == (
        f"{front.host}/app: referrers of {image.digest}: the next-page link points at another"
        f" host (http://{dst.host}); refused, the credentials are for http://{front.host}"
    )
    assert dst.tags("app") == []


@pytest.mark.parametrize(
    ("body", "problem"),
    [
        (b"<html>hello</html>", "the answer is not JSON"),
        (b'{"manifests": {"a": 1}}', "the answer is not an image index"),
        (b'{"manifests": [{"digest": "sha256:nope", "size": 1}]}', "invalid digest"),
    ],
)
async def test_a_referrers_answer_that_is_no_index_fails_the_image(
    registry_pair: tuple[LocalRegistry, LocalRegistry], body: bytes, problem: str
) -> None:
    src, dst = registry_pair
    image = make_image(seed="garbage")
    async with open_store(src.host) as s:
        await push(s, "app", image, "v1")

    async def garbage(front: Front, request: web.Request, _: bytes) -> web.StreamResponse | None:
        if "/referrers/" in request.path:
            return web.Response(body=body, content_type=mt.OCI_INDEX)
        return None

    async with Front(src, garbage).running() as front:
        result = only(await copy(f"{front.host}/app:v1", f"{dst.host}/app:v1"))
    assert result.status == "failed"
    assert result.error.startswith(f"{front.host}/app: referrers of {image.digest}")
    assert problem in result.error
    assert dst.tags("app") == []


async def test_a_fallback_index_listing_another_subjects_referrer_copies_nothing_of_it(
    registry_pair: tuple[LocalRegistry, LocalRegistry],
) -> None:
    src, dst = registry_pair
    image, other = make_image(seed="mine"), make_image(seed="theirs")
    stray = spdx_sbom(other.descriptor)  # its subject is `other`, yet listed for `image`
    async with open_store(src.host) as s:
        await push(s, "app", image, "v1")
        await push_fallback(s, "app", image.digest, stray)
    result = only(await copy(f"{src.host}/app:v1", f"{dst.host}/app:v1"))
    assert result.status == "copied"
    assert statuses(result) == {stray.digest: "filtered"}
    assert dst.tags("app") == ["v1"]


async def test_sync_check_interval_trusts_the_last_look(
    registry_pair: tuple[LocalRegistry, LocalRegistry], tmp_path: Path
) -> None:
    src, dst = registry_pair
    image = make_image(seed="interval")
    async with open_store(src.host) as s:
        await push(s, "lib/app", image, "latest")
    base = (
        f"mirrors:\n  - name: app\n    source: {src.host}/lib/app:latest\n"
        f"    targets: [{dst.host}/mirror/app]\n"
    )
    hourly = parse_config(base + "    referrers: {check_interval: 1h}\n")
    async with StateDB(f"sqlite:///{tmp_path}/state.db") as state:
        (cold,) = await sync_pass(hourly, state=state)
        assert cold.copied == 1
        sig = signature_referrer(image.descriptor)
        async with open_store(src.host) as s:
            await push_fallback(s, "lib/app", image.digest, sig)
        # Within the hour: the plan's HEAD only, no look for referrers, nothing copied.
        mark = src.mark()
        (warm,) = await sync_pass(hourly, state=state)
        assert warm.referrer_checks == []
        assert src.count("HEAD", "manifest", since=mark) == 1
        assert src.count("GET", "referrers", since=mark) == 0
        assert dst.tags("mirror/app") == ["latest"]
        # Without the interval, the same state: looked at, and the signature comes.
        (looked,) = await sync_pass(parse_config(base), state=state)
        (check,) = looked.referrer_checks
        assert statuses(check) == {sig.digest: "copied"}
        assert dst.tags("mirror/app") == sorted(["latest", fallback_tag_of(image.digest)])
    with pytest.raises(ConfigError, match="referrers: invalid interval '-5m'"):
        parse_config(base + "    referrers: {check_interval: -5m}\n")
