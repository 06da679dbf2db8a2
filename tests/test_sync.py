"""Sync passes against real registries: the planner's reasons, warm costs, state, CLI."""

from __future__ import annotations

import asyncio
import base64
import json
import shutil
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest

from ocimirror.settings.config import Config
from ocimirror.settings.loading import parse_config
from ocimirror.state.db import StateDB
from ocimirror.sync.runner import MirrorPass, sync_pass
from ocimirror.testkit.accesslog import Request
from ocimirror.testkit.command import run_ocimirror
from ocimirror.testkit.images import make_image, make_index
from ocimirror.testkit.registry import LocalRegistry
from ocimirror.testkit.seeding import seed
from ocimirror.testkit.skopeo import Skopeo

RegistryFactory = Callable[..., LocalRegistry]
WRITES = ("PUT", "POST", "PATCH", "DELETE")


def config_for(src: LocalRegistry, dst: LocalRegistry, extra: str = "") -> Config:
    """One mirror of src/lib/app (every tag) to dst/mirror/app."""
    return parse_config(
        f"mirrors:\n  - name: app\n    source: {src.host}/lib/app\n"
        f"    targets: [{dst.host}/mirror/app]\n{extra}"
    )


def reasons(p: MirrorPass) -> dict[str, str]:
    """tag → reason."""
    return {t.target.ref: t.reason for t in p.plan.tasks}


def kinds(requests: list[Request]) -> Counter[tuple[str, str]]:
    """Count requests by (method, kind)."""
    return Counter((r.method, r.kind) for r in requests)


async def test_reasons_moves_and_missing_only(
    registry_pair: tuple[LocalRegistry, LocalRegistry], tmp_path: Path, skopeo: Skopeo
) -> None:
    src, dst = registry_pair
    tags = ["1.0.0", "1.1.0", "latest"]
    await seed(src, "lib/app", [(t, make_image(layer_size=2000, seed=t)) for t in tags])
    config = config_for(src, dst)
    async with StateDB(f"sqlite:///{tmp_path}/state.db") as state:
        (dry,) = await sync_pass(config, state=state, mode="dry-run")
        assert reasons(dry) == dict.fromkeys(tags, "new")
        assert dst.tags("mirror/app") == []  # a dry run writes nothing
        (first,) = await sync_pass(config, state=state)
        assert first.status == "ok"
        assert first.copied == 3
        assert dst.tags("mirror/app") == sorted(tags)
        # Move `latest` at the source: the next pass says `changed` and copies it.
        moved = make_image(layer_size=2000, seed="moved")
        await seed(src, "lib/app", [("latest", moved)])
        (dry,) = await sync_pass(config, state=state, mode="dry-run")
        assert reasons(dry) == {"1.0.0": "unchanged", "1.1.0": "unchanged", "latest": "changed"}
        (skip,) = await sync_pass(config, state=state, mode="missing-only")
        assert skip.copied == 0
        assert skopeo.manifest(dst.ref("mirror/app:latest"), registry=dst) != moved.manifest.raw
        (again,) = await sync_pass(config, state=state)
        assert again.copied == 1
        assert skopeo.manifest(dst.ref("mirror/app:latest"), registry=dst) == moved.manifest.raw
        runs = await state.runs("app")
        assert [r.status for r in runs][:3] == ["ok", "ok", "ok"]
        synced = await state.synced("app")
        assert synced[f"{dst.host}/mirror/app:latest"].source_digest == moved.digest


async def test_warm_pass_is_heads_only_and_immutable_tags_cost_nothing(
    registry_factory: RegistryFactory, tmp_path: Path
) -> None:
    make = registry_factory
    src, dst = make("src"), make("dst")
    tags = [f"1.{i}.0" for i in range(12)] + ["latest", "edge"]
    await seed(src, "lib/app", [(t, make_image(layer_size=500, seed=t)) for t in tags])
    url = f"sqlite:///{tmp_path}/state.db"
    # Referrers off: this is the cost of the images alone (test_referrers has theirs).
    off = "    referrers: {enabled: false}\n"
    plain = config_for(src, dst, off)
    immutable = config_for(src, dst, off + '    immutable_tags: ["*.*.*"]\n')
    async with StateDB(url) as state:
        (cold,) = await sync_pass(plain, state=state)
        assert cold.copied == len(tags)
        # Warm, nothing immutable: a HEAD per tag at each end plus one tags list each.
        m1, m2 = src.mark(), dst.mark()
        (warm,) = await sync_pass(plain, state=state)
        seen_src, seen_dst = kinds(src.requests(since=m1)), kinds(dst.requests(since=m2))
        assert warm.copied == 0
        assert set(reasons(warm).values()) == {"unchanged"}
        assert seen_src == {("HEAD", "manifest"): len(tags), ("GET", "tags"): 1}
        assert seen_dst == {("HEAD", "manifest"): len(tags), ("GET", "tags"): 1}
        total = sum(seen_src.values()) + sum(seen_dst.values())
        assert total / len(tags) < 2.2
        # Immutable tags, once mirrored, are not asked about at all.
        m1, m2 = src.mark(), dst.mark()
        (imm,) = await sync_pass(immutable, state=state)
        seen_src, seen_dst = kinds(src.requests(since=m1)), kinds(dst.requests(since=m2))
        assert Counter(reasons(imm).values()) == {"immutable": 12, "unchanged": 2}
        assert seen_src[("HEAD", "manifest")] == 2
        assert seen_dst[("HEAD", "manifest")] == 2
        assert not any(m in WRITES for m, _ in seen_dst)
    # The state outlives the process: a new StateDB on the same file remembers.
    async with StateDB(url) as state:
        (imm,) = await sync_pass(immutable, state=state, mode="dry-run")
        assert Counter(reasons(imm).values()) == {"immutable": 12, "unchanged": 2}


async def test_missing_at_target_and_filtered_indexes(
    registry_factory: RegistryFactory, tmp_path: Path
) -> None:
    make = registry_factory
    src, dst = make("src"), make("dst")
    index = make_index(("linux/amd64", "linux/arm64", "windows/amd64"), layer_size=500)
    await seed(src, "lib/app", [("v1", index)])
    extra = "    platforms: [linux/*]\n"
    async with StateDB(f"sqlite:///{tmp_path}/state.db") as state:
        (first,) = await sync_pass(config_for(src, dst, extra), state=state)
        assert first.copied == 1
        # A filtered index has its own digest; the state recognises it next time.
        (warm,) = await sync_pass(config_for(src, dst, extra), state=state, mode="dry-run")
        assert reasons(warm) == {"v1": "unchanged"}
        # The target lost everything (a new, empty registry at the same name).
        other = make("other")
        (plan,) = await sync_pass(config_for(src, other, extra), state=state, mode="dry-run")
        assert reasons(plan) == {"v1": "new"}  # never mirrored to this target
    # Same target, the state says mirrored, the registry lost it: missing-at-target.
    dst.stop()
    shutil.rmtree(dst.storage)
    dst.start()
    async with StateDB(f"sqlite:///{tmp_path}/state.db") as state:
        (plan,) = await sync_pass(config_for(src, dst, extra), state=state, mode="dry-run")
        assert reasons(plan) == {"v1": "missing-at-target"}
        (fix,) = await sync_pass(config_for(src, dst, extra), state=state)
        assert fix.copied == 1


def test_sync_command_and_status(registry_pair: tuple[LocalRegistry, LocalRegistry]) -> None:
    src, dst = registry_pair
    image = make_image(layer_size=500, seed="cli")
    asyncio.run(seed(src, "lib/app", [("1.0", image)]))
    work = Path(dst.directory)
    cfg = work / "mirror.yaml"
    cfg.write_text(
        f"mirrors:\n  - name: app\n    source: {src.host}/lib/app\n"
        f"    targets: [{dst.host}/mirror/app]\n    schedule: 6h\n"
    )
    out = run_ocimirror("sync", "-c", str(cfg), "--dry-run")
    assert out.returncode == 0, out.stderr
    assert "+ 1.0" in out.stderr
    assert "1 to copy" in out.stderr
    out = run_ocimirror("sync", "-c", str(cfg))
    assert out.returncode == 0, out.stderr
    assert "ok app: 1 copied" in out.stderr
    assert (work / "mirror.state.db").exists()
    out = run_ocimirror("status", "-c", str(cfg))
    assert out.returncode == 0, out.stderr
    row = next(line for line in out.stdout.splitlines() if "mirror/app" in line)
    assert "app" in row
    assert " ok " in row
    assert image.digest[:19] in row  # one tag mirrored: its digest
    # docker-sync's one-off form.
    out = run_ocimirror(
        "sync", "--source", f"{src.host}/lib/app", "--target", f"{dst.host}/oneoff/app"
    )
    assert out.returncode == 0, out.stderr
    assert dst.tags("oneoff/app") == ["1.0"]
    # A failing mirror: exit 1 and the reason.
    cfg.write_text(
        f"mirrors:\n  - name: gone\n    source: {src.host}/lib/app:nope\n"
        f"    targets: [{dst.host}/mirror/gone]\n"
    )
    out = run_ocimirror("sync", "-c", str(cfg))
    assert out.returncode == 1
    assert "nope" in out.stderr
    assert "manifest unknown" in out.stderr


async def test_docker_sync_and_ini_configs_plan_against_real_registries(
    src_registry: LocalRegistry,
    htpasswd_registry: LocalRegistry,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Both foreign formats, read as they are, drive the planner and the copy."""
    from ocimirror.settings.loading import load_config

    src, dst = src_registry, htpasswd_registry
    user, password = dst.creds or ("", "")
    await seed(src, "lib/app", [(t, make_image(layer_size=300, seed=t)) for t in ("1", "2")])
    await seed(src, "tools/jq", [("1.7", make_image(layer_size=300, seed="jq"))])
    docker_sync = tmp_path / "docker-sync.yaml"
    docker_sync.write_text(
        "sync:\n"
        "  interval: 30m\n"
        "  registries:\n"
        f"    - url: {dst.host}\n"
        f"      auth: {{username: {user}, password: {password}}}\n"
        "  images:\n"
        f"    - source: {src.host}/lib/app\n"
        f"      targets: [{dst.host}/ds/app]\n"
    )
    loaded = load_config(docker_sync)
    assert loaded.format == "docker-sync"
    (plan,) = await sync_pass(loaded.config, state=None, mode="dry-run")
    assert reasons(plan) == {"1": "new", "2": "new"}
    (done,) = await sync_pass(loaded.config, state=None)
    assert done.status == "ok"
    assert dst.tags("ds/app") == ["1", "2"]
    (warm,) = await sync_pass(loaded.config, state=None, mode="dry-run")
    assert reasons(warm) == {"1": "unchanged", "2": "unchanged"}

    ini = tmp_path / "config.ini"
    ini.write_text(
        "[DEFAULT]\nrefresh = 1d\n\n"
        f"[app]\nimage = lib/app\ntag = 2\nsource-repository = {src.host}\nproject = ini\n\n"
        f"[jq]\nimage = tools/jq\nsource-repository = {src.host}\n"
    )
    loaded = load_config(ini, target_registry=f"{dst.host}/mirror")
    assert loaded.format == "docker-mirror-image-ini"
    # config.ini has no credentials: they come from docker's config.json, as for docker.
    auth = base64.b64encode(f"{user}:{password}".encode()).decode()
    (tmp_path / "config.json").write_text(json.dumps({"auths": {dst.host: {"auth": auth}}}))
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path))
    config = loaded.config
    passes = await sync_pass(config, state=None, mode="dry-run")
    assert {p.mirror: reasons(p) for p in passes} == {"app": {"2": "new"}, "jq": {"1.7": "new"}}
    targets = sorted(str(t.target) for p in passes for t in p.plan.tasks)
    assert targets == [f"{dst.host}/mirror/ini/app:2", f"{dst.host}/mirror/jq:1.7"]
    passes = await sync_pass(config, state=None)
    assert [p.status for p in passes] == ["ok", "ok"]
    assert dst.tags("mirror/ini/app") == ["2"]


def test_an_unreachable_registry_is_one_line_not_a_traceback(tmp_path: Path) -> None:
    config = tmp_path / "mirror.yaml"
    config.write_text(
        "mirrors:\n  - name: gone\n    source: 127.0.0.1:1/lib/app:1\n"
        "    targets: [127.0.0.1:1/mirror/app]\n"
    )
    out = run_ocimirror("sync", "-c", str(config), "--no-state")
    assert out.returncode == 1
    assert "Traceback" not in out.stderr
    assert "127.0.0.1:1: cannot reach the registry: Connect call failed" in out.stderr, out.stderr
