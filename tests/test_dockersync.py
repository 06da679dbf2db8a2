"""`ocimirror docker-sync`: Altinity docker-sync's command line, config keys and defaults."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import pytest

from ocimirror.settings.compat import from_docker_sync, go_time_layout
from ocimirror.settings.loading import load_config
from ocimirror.sync.dockersync import DEFAULT_CONFIG
from ocimirror.testkit.command import Background, run_ocimirror
from ocimirror.testkit.images import make_image
from ocimirror.testkit.registry import LocalRegistry
from ocimirror.testkit.seeding import seed


def test_write_config_writes_docker_syncs_defaults_and_never_overwrites(tmp_path: Path) -> None:
    out = run_ocimirror("docker-sync", "writeConfig", "-o", str(tmp_path / "config.yaml"))
    assert out.returncode == 0, out.stderr
    assert (tmp_path / "config.yaml").read_text() == DEFAULT_CONFIG
    again = run_ocimirror("docker-sync", "writeConfig", "-o", str(tmp_path / "config.yaml"))
    assert again.returncode == 2
    assert "already exists" in again.stderr
    stdout = run_ocimirror("docker-sync", "writeConfig")
    assert stdout.stdout == DEFAULT_CONFIG
    # Its own default config loads with docker-sync's defaults and not one warning.
    loaded = load_config(tmp_path / "config.yaml")
    assert loaded.format == "docker-sync"
    assert loaded.warnings == ()
    config = loaded.config
    assert config.defaults.schedule == "30m"
    assert (config.max_errors, config.max_errors_counts) == (5, "mirrors")
    assert config.metrics.listen is None  # telemetry.enabled: false
    assert config.logging.time_format == "%H:%M:%S"
    assert config.logging.output == "stdout"


def test_config_keys_that_were_ignored_are_read() -> None:
    text = """\
sync:
  images:
    - source: docker.io/library/ubuntu
      targets: [registry.example/ubuntu]
      tags: [noble, jammy]
      ignoredTags: ["*-rc*"]
      purge: true
      surprise: 1
  registries:
    - url: registry.example
      name: mine
      auth: {token: abc, extra: 1}
  s3: {maxPurgeConcurrency: 4}
logging: {level: TRACE, timeFormat: "2006-01-02T15:04:05.000Z07:00"}
telemetry:
  enabled: true
  metrics: {exporter: stdout, stdout: {interval: 10s}}
"""
    config, warnings = from_docker_sync(text, "c.yaml", env={})
    (m,) = config.mirrors
    assert m.tags is not None
    assert m.tags.exact == ["noble", "jammy"]
    assert m.tags.exclude == [".*\\-rc.*"]
    assert m.purge is True
    assert config.defaults.schedule == "30m"  # docker-sync's default, not ours (6h)
    assert config.logging.level == "trace"
    assert config.logging.time_format == "%Y-%m-%dT%H:%M:%S.%f%z"
    assert config.metrics.listen is None
    assert config.metrics.stdout_interval == "10s"
    assert warnings == [
        "sync.s3: not supported, ignored",
        "sync.registries[0].auth.extra: not supported, ignored",
        "sync.images[0].surprise: not supported, ignored",
    ]


def test_telemetry_enabled_serves_prometheus_where_docker_sync_would() -> None:
    config, _ = from_docker_sync(
        "sync: {images: []}\ntelemetry: {enabled: true}\n", "c.yaml", env={}
    )
    assert (config.metrics.listen, config.metrics.path) == ("127.0.0.1:9090", "/metrics")
    config, _ = from_docker_sync("sync: {images: []}\ntelemetry: {enabled: false}\n", "c", env={})
    assert config.metrics.listen is None


def test_dockersync_environment_overrides_scalar_keys() -> None:
    env = {"DOCKERSYNC_SYNC.INTERVAL": "2m", "DOCKERSYNC_SYNC_MAXERRORS": "9"}
    config, _ = from_docker_sync("sync: {interval: 1h, images: []}\n", "c.yaml", env=env)
    assert (config.defaults.schedule, config.max_errors) == ("2m", 9)


def test_ecr_helper_is_the_native_login_and_bucket_targets_are_buckets() -> None:
    config, _ = from_docker_sync(
        "sync:\n  registries:\n    - {url: 1.dkr.ecr.x.amazonaws.com, auth: {helper: ecr}}\n",
        "c.yaml",
        env={},
    )
    creds = config.registries["1.dkr.ecr.x.amazonaws.com"].credentials
    assert creds is not None
    assert creds.provider == "ecr"
    config, _ = from_docker_sync(
        "sync:\n  images:\n    - {source: a/b, targets: ['r2:e:bucket:img']}\n", "c", env={}
    )
    assert config.mirrors[0].targets == ["r2:e:bucket:img"]


@pytest.mark.parametrize(
    ("layout", "expected"),
    [
        ("15:04:05", "%H:%M:%S"),
        ("2006-01-02 15:04:05 MST", "%Y-%m-%d %H:%M:%S %Z"),
        ("Mon Jan _2 3:04PM", "%a %b %e %I:%M%p"),
        ("[%] 15h", "[%%] %Hh"),
    ],
)
def test_go_time_layouts_become_strftime(layout: str, expected: str) -> None:
    assert go_time_layout(layout) == expected
    datetime(2026, 1, 2, 3, 4, 5).strftime(expected)  # a format Python accepts


async def test_one_off_copy_with_docker_syncs_flags_and_environment(
    src_registry: LocalRegistry, htpasswd_registry: LocalRegistry
) -> None:
    src, dst = src_registry, htpasswd_registry
    user, password = dst.creds or ("", "")
    tags = ["1.0", "1.1", "2.0-rc1", "latest"]
    await seed(src, "lib/app", [(t, make_image(layer_size=200, seed=t)) for t in tags])
    env = {"DOCKER_SYNC_TARGET_PASSWORD": password}
    # The form docker-sync's README shows: at top level, no sub-command.
    out = run_ocimirror(
        "docker-sync",
        "--source",
        f"{src.host}/lib/app",
        "--target",
        f"{dst.host}/top/app",
        "--target-username",
        user,
        "--ignored-tags=*-rc*",
        env=env,
    )
    assert out.returncode == 0, out.stderr
    assert dst.tags("top/app") == ["1.0", "1.1", "latest"]
    assert password not in out.stdout + out.stderr
    # Under `sync`, short flags and comma lists as cobra reads them.
    out = run_ocimirror(
        "docker-sync",
        "sync",
        "-s",
        f"{src.host}/lib/app",
        "-t",
        f"{dst.host}/sub/app",
        "--target-username",
        user,
        "--tags",
        "1.0,2.0-rc1",
        env=env,
    )
    assert out.returncode == 0, out.stderr
    assert dst.tags("sub/app") == ["1.0", "2.0-rc1"]
    # Without the password the target refuses, and says so.
    out = run_ocimirror(
        "docker-sync", "sync", "-s", f"{src.host}/lib/app:1.0", "-t", f"{dst.host}/x/app:1.0"
    )
    assert out.returncode == 1
    assert dst.tags("x/app") == []


async def test_no_arguments_runs_the_daemon_on_config_yaml_here(
    src_registry: LocalRegistry, registry: LocalRegistry, tmp_path: Path
) -> None:
    """docker-sync's daemon: ./config.yaml, its interval, metrics on stdout, and maxErrors
    counted as docker-sync counts them (images failing in one round)."""
    src, dst = src_registry, registry
    await seed(src, "lib/app", [("1", make_image(layer_size=200, seed="1"))])
    (tmp_path / "config.yaml").write_text(
        "sync:\n"
        "  interval: 1h\n"
        "  maxErrors: 2\n"
        "  images:\n"
        f"    - source: {src.host}/lib/app\n"
        f"      targets: [{dst.host}/mirror/app]\n"
        f"    - source: {src.host}/lib/gone1:1\n"
        f"      targets: [{dst.host}/mirror/gone1:1]\n"
        f"    - source: {src.host}/lib/gone2:1\n"
        f"      targets: [{dst.host}/mirror/gone2:1]\n"
        "logging: {format: json}\n"
        "telemetry:\n"
        "  enabled: true\n"
        "  metrics: {exporter: stdout, stdout: {interval: 1s}}\n"
    )
    import os

    old = Path.cwd()
    os.chdir(tmp_path)
    try:
        daemon = Background(["docker-sync"], tmp_path / "daemon.log")
    finally:
        os.chdir(old)
    # Two images fail in the round: maxErrors 2 stops the daemon with exit 1.
    assert daemon.wait() == 1, daemon.text()
    # The stdout exporter's numbers (printed on exit too, as OpenTelemetry's reader does).
    assert 'ocimirror_runs_total{mirror="' + src.host + '/lib/gone1:1",status="failed"} 1.0' in (
        daemon.text()
    )
    assert dst.tags("mirror/app") == ["1"]
    assert "too many mirrors failing" in daemon.text()
    assert (tmp_path / "config.state.db").exists()


async def test_purge_deletes_only_selected_tags_the_source_lost(
    src_registry: LocalRegistry, registry: LocalRegistry, tmp_path: Path
) -> None:
    src, dst = src_registry, registry
    images = {t: make_image(layer_size=200, seed=t) for t in ("1.0", "1.1", "2.0", "latest")}
    await seed(src, "lib/app", list(images.items()))
    # The target also has tags the mirror never selected (3.0-rc: ignored; own: shares
    # nothing) and a mutable one: none of them may be purged.
    await seed(dst, "mirror/app", [("3.0-rc", make_image(layer_size=100, seed="rc"))])
    await seed(dst, "mirror/app", [("own-x", make_image(layer_size=100, seed="own"))])
    await seed(dst, "mirror/app", [("edge", make_image(layer_size=100, seed="edge"))])
    # `old` is selected and gone from the source, but shares 2.0's manifest: a registry
    # that deletes by digest only (this one) would take 2.0 with it, so it stays.
    await seed(dst, "mirror/app", [("old", images["2.0"])])
    cfg = tmp_path / "config.yaml"
    cfg.write_text(
        "sync:\n  images:\n"
        f"    - source: {src.host}/lib/app\n"
        f"      targets: [{dst.host}/mirror/app]\n"
        "      ignoredTags: ['*-rc', 'own-*']\n"
        "      mutableTags: [latest, edge]\n"
        "      purge: true\n"
    )
    args = ("docker-sync", "sync", "--config", str(cfg))
    out = run_ocimirror(*args, "--dry-run")
    assert "- old" in out.stderr
    assert run_ocimirror(*args).returncode == 3  # all copied; `old` refused
    assert "1.0" in dst.tags("mirror/app")
    # The source drops 1.0.
    assert src.http("DELETE", f"/v2/lib/app/manifests/{images['1.0'].digest}").status == 202
    assert "1.0" not in src.tags("lib/app")
    dry = run_ocimirror(*args, "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert "- 1.0" in dry.stderr
    assert "2 to purge" in dry.stderr
    assert "1.0" in dst.tags("mirror/app")  # a dry run deletes nothing
    out = run_ocimirror(*args)
    assert out.returncode == 3, out.stderr
    assert "1 purged" in out.stderr
    assert "tag 2.0 shares the manifest" in out.stderr
    assert dst.tags("mirror/app") == ["1.1", "2.0", "3.0-rc", "edge", "latest", "old", "own-x"]
