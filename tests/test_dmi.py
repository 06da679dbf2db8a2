"""Docker Mirror Image as its users run it: config.ini found, DB_PATH, refresh = 0."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from ocimirror.settings.compat import from_ini
from ocimirror.testkit.command import Background, run_ocimirror
from ocimirror.testkit.images import make_image
from ocimirror.testkit.polling import wait_for
from ocimirror.testkit.registry import LocalRegistry
from ocimirror.testkit.seeding import seed


def _ini(src: LocalRegistry, refresh: str = "0") -> str:
    return (
        f"[DEFAULT]\nrefresh = {refresh}\n\n"
        f"[aws/app]\nimage = app\ntag = 1.7.0\nsource-repository = {src.host}/istio\n"
        "project = istio\n"
    )


async def test_refresh_0_mirrors_once_under_the_daemon_with_config_ini_found_and_db_path(
    src_registry: LocalRegistry,
    registry: LocalRegistry,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    src, dst = src_registry, registry
    await seed(src, "istio/app", [("1.7.0", make_image(layer_size=200, seed="dmi"))])
    (tmp_path / "config.ini").write_text(_ini(src))
    db = tmp_path / "db" / "repository.db"
    db.parent.mkdir()
    env = {**os.environ, "OCIMIRROR_TARGET_REGISTRY": dst.host, "DB_PATH": str(db)}
    monkeypatch.chdir(tmp_path)
    daemon = Background(["run"], tmp_path / "run.log", env)  # no -c: ./config.ini
    try:
        wait_for(lambda: "run finished" in daemon.text(), "the one pass")
        assert dst.tags("istio/app") == ["1.7.0"]
        assert "once at start" in daemon.text()
    finally:
        assert daemon.stop() == 0
    assert db.is_file()  # DB_PATH is the state database
    status = run_ocimirror("status", env=env)
    assert status.returncode == 0, status.stderr
    row = next(line for line in status.stdout.splitlines() if "istio/app" in line)
    assert " ok " in row
    assert "once at start" in row  # no next run: refresh = 0 never refreshes


async def test_sync_finds_config_ini_in_src_as_its_readme_puts_it(
    src_registry: LocalRegistry,
    registry: LocalRegistry,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    src, dst = src_registry, registry
    await seed(src, "istio/app", [("1.7.0", make_image(layer_size=200, seed="dmi2"))])
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "config.ini").write_text(_ini(src, "1w"))
    monkeypatch.chdir(tmp_path)
    out = run_ocimirror("sync", env={"OCIMIRROR_TARGET_REGISTRY": f"{dst.host}/mirror"})
    assert out.returncode == 0, out.stderr
    assert dst.tags("mirror/istio/app") == ["1.7.0"]
    monkeypatch.chdir(tmp_path / "src")
    (tmp_path / "src" / "config.ini").unlink()
    missing = run_ocimirror("sync")
    assert missing.returncode == 2
    assert "no config.ini in config.ini, src/config.ini, /app/src/config.ini" in missing.stderr


def test_the_ecr_target_of_aws_account_and_region_creates_its_repositories(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("OCIMIRROR_TARGET_REGISTRY", raising=False)
    monkeypatch.setenv("AWS_ACCOUNT", "123456789012")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "eu-west-1")
    config, warnings = from_ini("[app]\nimage = istio/proxyv2\ntag = 1.7.0\n", "config.ini")
    assert config.mirrors[0].targets == ["123456789012.dkr.ecr.eu-west-1.amazonaws.com/proxyv2"]
    assert config.mirrors[0].schedule == "once"
    assert config.registries["123456789012.dkr.ecr.eu-west-1.amazonaws.com"].create_repositories
    assert warnings == []
