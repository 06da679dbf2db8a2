"""`trust_state`: warm passes that skip the target HEAD, and the full checks that catch
what changed at the target behind ocimirror's back. Against real registries."""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from ocimirror.errors import ConfigError
from ocimirror.settings.config import Config
from ocimirror.settings.loading import parse_config
from ocimirror.state.db import StateDB
from ocimirror.sync.runner import MirrorPass, sync_pass
from ocimirror.testkit.accesslog import Request
from ocimirror.testkit.command import run_ocimirror
from ocimirror.testkit.images import make_image
from ocimirror.testkit.registry import LocalRegistry
from ocimirror.testkit.seeding import seed
from ocimirror.testkit.skopeo import Skopeo

RegistryFactory = Callable[..., LocalRegistry]


#: Referrers off: these tests count what the images alone cost (the look for referrers
#: added since is counted by test_referrers and bench/referrers.py; `check_interval`
#: bounds it).
NO_REFERRERS = "    referrers: {enabled: false}\n"


def config_for(src: LocalRegistry, dst: LocalRegistry, extra: str = "") -> Config:
    """One mirror of src/lib/app to dst/mirror/app."""
    return parse_config(
        f"mirrors:\n  - name: app\n    source: {src.host}/lib/app\n"
        f"    targets: [{dst.host}/mirror/app]\n{NO_REFERRERS}{extra}"
    )


def kinds(requests: list[Request]) -> Counter[tuple[str, str]]:
    """Count requests by (method, kind)."""
    return Counter((r.method, r.kind) for r in requests)


def headed(requests: list[Request]) -> set[str | None]:
    """The references HEADed as manifests (the copy of a changed tag may HEAD it again)."""
    return {r.reference for r in requests if (r.method, r.kind) == ("HEAD", "manifest")}


def reasons(p: MirrorPass) -> dict[str, str]:
    """tag → reason, `(trusted)` marked."""
    return {t.target.ref: t.reason + (" (trusted)" if t.trusted else "") for t in p.plan.tasks}


def test_trust_state_and_verify_every_are_mirror_settings() -> None:
    config = parse_config(
        "defaults: {trust_state: true, verify_every: 6h}\n"
        "mirrors:\n  - {source: a/b, targets: [c/d]}\n"
        "  - {source: a/e, targets: [c/e], trust_state: false, verify_every: 90}\n"
    )
    first, second = config.mirrors
    assert (first.trust_state, first.verify_interval) == (True, timedelta(hours=6))
    assert (second.trust_state, second.verify_interval) == (False, timedelta(seconds=90))
    assert parse_config("mirrors: [{source: a/b, targets: [c/d]}]").mirrors[
        0
    ].verify_interval == timedelta(hours=24)
    with pytest.raises(ConfigError, match=r"mirrors\[0\]\.verify_every: invalid interval 'soon'"):
        parse_config("mirrors: [{source: a/b, targets: [c/d], verify_every: soon}]")


async def test_trusting_warm_pass_is_one_source_head_per_mutable_tag(
    registry_factory: RegistryFactory, tmp_path: Path
) -> None:
    src, dst = registry_factory("src"), registry_factory("dst")
    mutable = [f"m{i}" for i in range(40)]
    immutable = [f"v1.0.{i}" for i in range(5)]
    await seed(src, "lib/app", [(t, make_image(layer_size=300, seed=t)) for t in mutable])
    await seed(src, "lib/app", [(t, make_image(layer_size=300, seed=t)) for t in immutable])
    whole = config_for(src, dst, '    immutable_tags: ["v*.*.*"]\n    trust_state: true\n')
    async with StateDB(f"sqlite:///{tmp_path}/state.db") as state:
        (cold,) = await sync_pass(whole, state=state)
        assert cold.copied == len(mutable) + len(immutable)
        m1, m2 = src.mark(), dst.mark()
        (warm,) = await sync_pass(whole, state=state)
        seen_src, seen_dst = kinds(src.requests(since=m1)), kinds(dst.requests(since=m2))
        assert warm.status == "ok"
        assert warm.copied == 0
        assert Counter(reasons(warm).values()) == {
            "unchanged (trusted)": len(mutable),
            "immutable": len(immutable),
        }
        # The source: one HEAD per mutable tag (none for immutable ones) and its tags list
        # (the whole repository is mirrored); the target: its tags list, nothing else.
        assert seen_src == {("HEAD", "manifest"): len(mutable), ("GET", "tags"): 1}
        assert seen_dst == {("GET", "tags"): 1}
        total = seen_src.total() + seen_dst.total()
        assert total <= 1.05 * len(mutable)
        # Literal tags need no source listing: exactly a HEAD each plus one target listing.
        exact = config_for(
            src, dst, f"    tags: {{exact: [{', '.join(mutable[:20])}]}}\n    trust_state: true\n"
        )
        m1, m2 = src.mark(), dst.mark()
        (literal,) = await sync_pass(exact, state=state)
        seen_src, seen_dst = kinds(src.requests(since=m1)), kinds(dst.requests(since=m2))
        assert set(reasons(literal).values()) == {"unchanged (trusted)"}
        assert seen_src == {("HEAD", "manifest"): 20}
        assert seen_dst == {("GET", "tags"): 1}
        assert seen_src.total() + seen_dst.total() == 21  # 1.05 per tag
        # The same pass without trust HEADs every target tag, as before.
        m2 = dst.mark()
        (plain,) = await sync_pass(exact, state=state, verify=True)
        assert set(reasons(plain).values()) == {"unchanged"}
        assert kinds(dst.requests(since=m2))[("HEAD", "manifest")] == 20


async def test_out_of_band_change_is_caught_at_the_next_full_check(
    registry_factory: RegistryFactory, tmp_path: Path, skopeo: Skopeo
) -> None:
    src, dst = registry_factory("src"), registry_factory("dst")
    tags = ["a", "b", "latest"]
    images = {t: make_image(layer_size=400, seed=t) for t in tags}
    await seed(src, "lib/app", list(images.items()))
    config = config_for(src, dst, "    trust_state: true\n")
    rogue = make_image(layer_size=400, seed="rogue")

    def at_target(tag: str) -> bytes:
        return skopeo.manifest(dst.ref(f"mirror/app:{tag}"), registry=dst)

    async with StateDB(f"sqlite:///{tmp_path}/state.db") as state:
        (cold,) = await sync_pass(config, state=state)
        assert cold.copied == 3
        # Behind ocimirror's back: `latest` at the target becomes another image.
        await seed(dst, "mirror/app", [("latest", rogue)])
        m2 = dst.mark()
        (trusting,) = await sync_pass(config, state=state)
        assert reasons(trusting)["latest"] == "unchanged (trusted)"
        assert ("HEAD", "manifest") not in kinds(dst.requests(since=m2))  # not noticed
        assert at_target("latest") == rogue.manifest.raw
        # `--verify`: every target is HEADed, the moved tag seen and put back.
        m2 = dst.mark()
        (verified,) = await sync_pass(config, state=state, verify=True)
        assert reasons(verified) == {"a": "unchanged", "b": "unchanged", "latest": "changed"}
        assert headed(dst.requests(since=m2)) == set(tags)
        assert verified.copied == 1
        assert at_target("latest") == images["latest"].manifest.raw
        # Trusted again after the full check; moved again behind its back.
        (trusting,) = await sync_pass(config, state=state)
        assert set(reasons(trusting).values()) == {"unchanged (trusted)"}
        await seed(dst, "mirror/app", [("b", rogue)])
        # Within verify_every (24 h by default) of the last look, still trusted ...
        later = datetime.now(UTC) + timedelta(hours=23)
        (plan,) = await sync_pass(config, state=state, mode="dry-run", clock=lambda: later)
        assert reasons(plan)["b"] == "unchanged (trusted)"
        # ... past it, the pass is a full check: the change is seen and fixed.
        much_later = datetime.now(UTC) + timedelta(hours=25)
        m2 = dst.mark()
        (due,) = await sync_pass(config, state=state, clock=lambda: much_later)
        assert reasons(due) == {"a": "unchanged", "b": "changed", "latest": "unchanged"}
        assert headed(dst.requests(since=m2)) == set(tags)
        assert at_target("b") == images["b"].manifest.raw
        # A tag deleted at the target is missing from its tags list: no HEAD needed.
        resp = dst.http("DELETE", f"/v2/mirror/app/manifests/{images['a'].digest}")
        assert resp.status == 202, resp.body
        m2 = dst.mark()
        (lost,) = await sync_pass(config, state=state)
        assert reasons(lost) == {
            "a": "missing-at-target",
            "b": "unchanged (trusted)",
            "latest": "unchanged (trusted)",
        }
        assert ("HEAD", "manifest") not in kinds(dst.requests(since=m2))
        assert dst.tags("mirror/app") == tags
        # A moved source tag is HEADed at the target too, and copied.
        await seed(src, "lib/app", [("latest", rogue)])
        (moved,) = await sync_pass(config, state=state)
        assert reasons(moved)["latest"] == "changed"
        assert at_target("latest") == rogue.manifest.raw


def test_dry_run_shows_trusted_and_verify_turns_it_off(
    registry_pair: tuple[LocalRegistry, LocalRegistry],
) -> None:
    src, dst = registry_pair
    asyncio.run(seed(src, "lib/app", [("1.0", make_image(layer_size=300, seed="cli"))]))
    cfg = Path(dst.directory) / "mirror.yaml"
    cfg.write_text(
        f"mirrors:\n  - name: app\n    source: {src.host}/lib/app\n"
        f"    targets: [{dst.host}/mirror/app]\n"
    )
    out = run_ocimirror("sync", "-c", str(cfg))
    assert out.returncode == 0, out.stderr
    out = run_ocimirror("sync", "-c", str(cfg), "--dry-run", "-v", "--trust-state")
    assert out.returncode == 0, out.stderr
    assert "1.0" in out.stderr
    assert "unchanged (trusted)" in out.stderr
    assert "0 to copy, 1 unchanged (1 trusted)," in out.stderr
    out = run_ocimirror("sync", "-c", str(cfg), "--trust-state", "--json")
    assert out.returncode == 0, out.stderr
    assert "ok app: 0 copied, 1 unchanged (1 trusted)," in out.stderr
    (summary,) = json.loads(out.stdout)
    assert [(t["reason"], t["trusted"]) for t in summary["tasks"]] == [("unchanged", True)]
    out = run_ocimirror("sync", "-c", str(cfg), "--dry-run", "-v", "--trust-state", "--verify")
    assert out.returncode == 0, out.stderr
    assert "unchanged" in out.stderr
    assert "trusted" not in out.stderr
    # Without the flag (and not in the config), nothing is trusted.
    out = run_ocimirror("sync", "-c", str(cfg), "--dry-run", "-v")
    assert "trusted" not in out.stderr


async def test_run_trust_state_flag_reaches_the_daemons_passes(
    registry_pair: tuple[LocalRegistry, LocalRegistry], tmp_path: Path
) -> None:
    from ocimirror.settings.connection import pool_for
    from ocimirror.sync.daemon import Daemon

    src, dst = registry_pair
    await seed(src, "lib/app", [(t, make_image(layer_size=300, seed=t)) for t in ("a", "b")])
    cfg = tmp_path / "mirror.yaml"
    cfg.write_text(
        f"mirrors:\n  - name: app\n    source: {src.host}/lib/app\n"
        f"    targets: [{dst.host}/mirror/app]\n    schedule: 0\n{NO_REFERRERS}"
    )
    daemon = Daemon(cfg, trust_state=True)  # what `ocimirror run --trust-state` builds
    pool = pool_for(daemon.config)
    try:
        async with StateDB(f"sqlite:///{tmp_path}/state.db") as state:
            (mirror,) = daemon.config.mirrors
            await daemon._run(mirror, state, pool)  # cold: copies both
            m2 = dst.mark()
            await daemon._run(mirror, state, pool)  # warm: trusted
            assert kinds(dst.requests(since=m2)) == {("GET", "tags"): 1}
            (last, cold) = await state.runs("app", limit=2)
            assert (cold.copied, last.copied, last.unchanged) == (2, 0, 2)
    finally:
        await pool.close()
