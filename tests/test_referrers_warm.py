"""Warm sync passes look for referrers at the protocol's floor (issue 16, issue 17).

A sync plan that listed a repository's tags knows which `sha256-<hex>` fallback tags and
cosign `.sig/.att/.sbom` tags exist: an image with none costs no request beyond the plan's,
one that has them costs a GET of the fallback index and a HEAD per cosign tag. The counts
are read from the registries' access logs (fallback case, distribution 2.8) and from
`ReferrersFront` (API case); a signature added after the image is still found.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from ocimirror.reference import Reference
from ocimirror.settings.loading import parse_config
from ocimirror.state.db import StateDB
from ocimirror.sync.runner import sync_pass
from ocimirror.testkit.artifacts import (
    cosign_signature,
    fallback_tag_of,
    push_fallback,
    signature_referrer,
    spdx_sbom,
)
from ocimirror.testkit.images import SampleImage, make_image, push
from ocimirror.testkit.referrersfront import ReferrersFront
from ocimirror.testkit.registry import LocalRegistry
from ocimirror.testkit.seeding import open_store
from ocimirror.testkit.skopeo import Skopeo
from ocimirror.transfer.engine import run_copies

WRITES = ("PUT", "POST", "PATCH", "DELETE")


async def push_all(host: str, repo: str, *items: tuple[SampleImage, str | None]) -> None:
    async with open_store(host) as s:
        for image, tag in items:
            await push(s, repo, image, tag)


def whole_repo(src: str, dst: str) -> str:
    return f"mirrors:\n  - name: app\n    source: {src}/lib/app\n    targets: [{dst}/mirror/app]\n"


async def test_fallback_warm_pass_asks_only_for_listed_referrer_tags(
    registry_pair: tuple[LocalRegistry, LocalRegistry], tmp_path: Path, skopeo: Skopeo
) -> None:
    """Four tags, one signed (cosign tag + fallback index with an SBOM): the three others
    cost the plan's HEADs only; a cosign signature added later is found next pass."""
    src, dst = registry_pair
    images = {t: make_image(seed=f"warm-{t}") for t in ("a", "b", "c", "d")}
    signed = images["a"]
    sbom = spdx_sbom(signed.descriptor)
    await push_all(src.host, "lib/app", *((img, tag) for tag, img in images.items()))
    await push_all(
        src.host,
        "lib/app",
        (cosign_signature(signed.descriptor), fallback_tag_of(signed.digest) + ".sig"),
    )
    async with open_store(src.host) as s:
        await push_fallback(s, "lib/app", signed.digest, sbom)
    config = parse_config(whole_repo(src.host, dst.host))
    async with StateDB(f"sqlite:///{tmp_path}/state.db") as state:
        (cold,) = await sync_pass(config, state=state)
        assert cold.status == "ok", cold.failed
        assert cold.copied == 4  # the fallback and cosign tags travel with `a`, not as images
        assert dst.tags("mirror/app") == sorted(
            [
                "a",
                "b",
                "c",
                "d",
                fallback_tag_of(signed.digest),
                fallback_tag_of(signed.digest) + ".sig",
            ]
        )

        m1, m2 = src.mark(), dst.mark()
        (warm,) = await sync_pass(config, state=state)
        assert warm.status == "ok", warm.failed
        src_seen = Counter((r.method, r.kind) for r in src.requests(since=m1))
        dst_seen = Counter((r.method, r.kind) for r in dst.requests(since=m2))
        # Source: its tags list, 4 plan HEADs, the run's API probe, `a`'s fallback index
        # (one GET by tag) and `.sig` (one HEAD, its digest compared at the target). No
        # `.att`/`.sbom`, no fallback tag of b/c/d or of the SBOM: not listed, not asked.
        assert src_seen == {
            ("GET", "tags"): 1,
            ("HEAD", "manifest"): 4 + 1,
            ("GET", "referrers"): 1,
            ("GET", "manifest"): 1,
        }
        # Target: its tags list, 4 plan HEADs, its API probe, `a`'s fallback index, `.sig`.
        assert dst_seen == {
            ("GET", "tags"): 1,
            ("HEAD", "manifest"): 4 + 1,
            ("GET", "referrers"): 1,
            ("GET", "manifest"): 1,
        }

        # Signed after it was mirrored: `b`'s cosign signature appears in the listing.
        late = cosign_signature(images["b"].descriptor)
        await push_all(src.host, "lib/app", (late, fallback_tag_of(images["b"].digest) + ".sig"))
        (again,) = await sync_pass(config, state=state)
        assert again.status == "ok", again.failed
        checks = {c.destination.rsplit(":", 1)[1]: c for c in again.referrer_checks}
        assert [(r.status, r.via) for r in checks["b"].referrers] == [("copied", "cosign")]
        raw = skopeo.manifest(
            f"docker://{dst.host}/mirror/app:{fallback_tag_of(images['b'].digest)}.sig",
            registry=dst,
        )
        assert raw == late.manifest.raw


async def test_a_listed_fallback_tag_naming_the_image_itself_is_ignored(
    registry_pair: tuple[LocalRegistry, LocalRegistry],
) -> None:
    """A source tagging the image itself `sha256-<hex>` (as some registries resolve that
    name): the listed tag is read, found to be the image, and ignored; it is never
    selected as an image of its own either."""
    src, dst = registry_pair
    image = make_image(seed="selfish")
    await push_all(src.host, "lib/app", (image, "v1"), (image, fallback_tag_of(image.digest)))
    config = parse_config(whole_repo(src.host, dst.host))
    (cold,) = await sync_pass(config, state=None)
    assert cold.status == "ok", cold.failed
    assert [t.source.tag for t in cold.plan.tasks] == ["v1"]
    assert [r.referrers for r in cold.results] == [[]]
    mark = src.mark()
    (warm,) = await sync_pass(config, state=None)
    assert warm.status == "ok", warm.failed
    assert warm.referrer_checks == []
    # The listed tag was read once (a GET by tag), found to be the image, and dropped.
    assert src.count("GET", "manifest", since=mark) == 1
    assert dst.tags("mirror/app") == ["v1"]


async def test_api_warm_pass_asks_once_per_image_and_finds_late_signatures(
    registry_pair: tuple[LocalRegistry, LocalRegistry], tmp_path: Path
) -> None:
    """API case: one referrers request per image and per OCI referrer found, no cosign
    HEAD for tags the listing lacks; an OCI signature and a cosign tag added later are
    found on the next pass."""
    src, dst = registry_pair
    images = {t: make_image(seed=f"api-{t}") for t in ("a", "b", "c")}
    sbom = spdx_sbom(images["a"].descriptor)
    async with (
        ReferrersFront(src).running() as sfront,
        ReferrersFront(dst).running() as dfront,
    ):
        await push_all(sfront.host, "lib/app", *((img, tag) for tag, img in images.items()))
        await push_all(sfront.host, "lib/app", (sbom, None))
        config = parse_config(whole_repo(sfront.host, dfront.host))
        async with StateDB(f"sqlite:///{tmp_path}/state.db") as state:
            (cold,) = await sync_pass(config, state=state)
            assert cold.status == "ok", cold.failed
            assert dfront.referrers_of("mirror/app", images["a"].digest)

            s0, d0 = len(sfront.seen), len(dfront.seen)
            (warm,) = await sync_pass(config, state=state)
            assert warm.status == "ok", warm.failed
            src_seen = Counter((s.method, s.kind) for s in sfront.seen[s0:])
            dst_seen = Counter((s.method, s.kind) for s in dfront.seen[d0:])
            # 3 images + the SBOM (its own referrers); HEADs: the plan's only.
            assert src_seen == {
                ("GET", "tags"): 1,
                ("HEAD", "manifest"): 3,
                ("GET", "referrers"): 4,
            }
            # Target: the plan, and the list of `a`'s referrers (is the SBOM there?).
            assert dst_seen == {
                ("GET", "tags"): 1,
                ("HEAD", "manifest"): 3,
                ("GET", "referrers"): 1,
            }

            late_sig = signature_referrer(images["c"].descriptor)
            late_cosign = cosign_signature(images["b"].descriptor)
            await push_all(
                sfront.host,
                "lib/app",
                (late_sig, None),
                (late_cosign, fallback_tag_of(images["b"].digest) + ".sig"),
            )
            d0 = len(dfront.seen)
            (again,) = await sync_pass(config, state=state)
            assert again.status == "ok", again.failed
            checks = {c.destination.rsplit(":", 1)[1]: c for c in again.referrer_checks}
            assert [(r.digest, r.status) for r in checks["c"].referrers] == [
                (late_sig.digest, "copied")
            ]
            assert [(r.digest, r.status, r.via) for r in checks["b"].referrers] == [
                (late_cosign.digest, "copied", "cosign")
            ]
            assert [d["digest"] for d in dfront.referrers_of("mirror/app", images["c"].digest)] == [
                late_sig.digest
            ]
            assert fallback_tag_of(images["b"].digest) + ".sig" in dst.tags("mirror/app")
            assert sum(1 for s in dfront.seen[d0:] if s.method in WRITES) > 0


async def test_trusting_the_state_the_target_is_only_listed(
    registry_pair: tuple[LocalRegistry, LocalRegistry], tmp_path: Path
) -> None:
    """trust_state: a warm pass over unsigned images asks the target for its tags list
    only (the image's media type comes from the source's HEAD of the same digest), and a
    signature added later is still found and copied."""
    src, dst = registry_pair
    images = {t: make_image(seed=f"trust-{t}") for t in ("a", "b", "c")}
    await push_all(src.host, "lib/app", *((img, tag) for tag, img in images.items()))
    config = parse_config(whole_repo(src.host, dst.host) + "    trust_state: true\n")
    async with StateDB(f"sqlite:///{tmp_path}/state.db") as state:
        (cold,) = await sync_pass(config, state=state)
        assert cold.copied == 3
        (full,) = await sync_pass(config, state=state)  # records the targets as looked at
        assert full.status == "ok", full.failed
        m1, m2 = src.mark(), dst.mark()
        (warm,) = await sync_pass(config, state=state)
        assert warm.status == "ok", warm.failed
        assert all(t.trusted for t in warm.plan.tasks)
        assert Counter((r.method, r.kind) for r in dst.requests(since=m2)) == {("GET", "tags"): 1}
        assert Counter((r.method, r.kind) for r in src.requests(since=m1)) == {
            ("GET", "tags"): 1,
            ("HEAD", "manifest"): 3,
            ("GET", "referrers"): 1,  # the API probe, once per run
        }

        sig = signature_referrer(images["c"].descriptor)
        async with open_store(src.host) as s:
            await push_fallback(s, "lib/app", images["c"].digest, sig)
        (signed,) = await sync_pass(config, state=state)
        assert signed.status == "ok", signed.failed
        (check,) = signed.referrer_checks
        assert [(r.digest, r.status) for r in check.referrers] == [(sig.digest, "copied")]
        assert fallback_tag_of(images["c"].digest) in dst.tags("mirror/app")


async def test_copy_all_tags_reads_referrer_tags_from_its_listing(
    registry_pair: tuple[LocalRegistry, LocalRegistry],
) -> None:
    """`copy --all-tags` lists the source anyway: a warm copy asks only for the listed
    referrer tags (the `.sig` HEAD, the fallback index GET), at both ends."""
    src, dst = registry_pair
    signed, plain = make_image(seed="all-signed"), make_image(seed="all-plain")
    sbom = spdx_sbom(signed.descriptor)
    await push_all(
        src.host,
        "lib/app",
        (signed, "v1"),
        (plain, "v2"),
        (cosign_signature(signed.descriptor), fallback_tag_of(signed.digest) + ".sig"),
    )
    async with open_store(src.host) as s:
        await push_fallback(s, "lib/app", signed.digest, sbom)
    pairs = [(Reference.parse(f"{src.host}/lib/app"), Reference.parse(f"{dst.host}/mirror/app"))]
    cold = await run_copies(pairs, all_tags=True)
    assert sorted(r.status for r in cold.results) == ["copied", "copied"]
    m1, m2 = src.mark(), dst.mark()
    warm = await run_copies(pairs, all_tags=True)
    assert sorted(r.status for r in warm.results) == ["unchanged", "unchanged"]
    for registry, mark in ((src, m1), (dst, m2)):
        assert Counter((r.method, r.kind) for r in registry.requests(since=mark)) == {
            ("GET", "tags"): 1,
            ("HEAD", "manifest"): 2 + 1,  # the two images, the listed `.sig`
            ("GET", "referrers"): 1,  # the API probe
            ("GET", "manifest"): 1,  # the listed fallback index
        }
