"""The mirror config: validation errors with file:line:column and path, defaults, formats."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from ocimirror.errors import ConfigError
from ocimirror.settings import loading
from ocimirror.settings.compat import TARGET_REGISTRY_ENV
from ocimirror.settings.config import json_schema
from ocimirror.settings.loading import ConfigFileError, detect_format, load_config, parse_config
from ocimirror.settings.secrets import Secret

GOOD = """\
state: sqlite:///tmp/state.db
concurrency: 8
registries:
  registry.example.com:
    credentials:
      username: mirror
      password: ${MIRROR_PASSWORD}
    tls: {verify: true}
    rate_limit_reserve: 10
  docker.io:
    credentials: {docker_config: true}
defaults:
  schedule: 6h
  platforms: [linux/amd64, linux/arm64]
mirrors:
  - name: postgres
    source: postgres
    targets: [registry.example.com/mirror/postgres]
    tags: {semver: ">=16", latest: 3}
    immutable_tags: ["*.*.*"]
  - source: [alpine:3.20, busybox:1.36]
    targets: registry.example.com/mirror
    schedule: "0 3 * * *"
    platforms: [linux/*]
"""


def test_a_good_config_loads_with_defaults_merged(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MIRROR_PASSWORD", "s3cret")
    config = parse_config(GOOD, "mirror.yaml")
    first, second = config.mirrors
    assert first.schedule == "6h"  # inherited
    assert first.platforms == ["linux/amd64", "linux/arm64"]  # inherited
    assert second.schedule == "0 3 * * *"  # its own wins
    assert second.platforms == ["linux/*"]
    assert second.targets == ["registry.example.com/mirror"]  # one string → a list
    assert second.sources == ["alpine:3.20", "busybox:1.36"]
    assert first.tags is not None
    assert first.tags.filter().select(["15.1", "16.0", "16.1", "17.0", "18.0"]) == [
        "18.0",
        "17.0",
        "16.1",
    ]
    creds = config.registries["registry.example.com"].credentials
    assert creds is not None
    assert creds.password is not None
    assert creds.password.reveal() == "s3cret"
    assert "s3cret" not in repr(config)
    assert "s3cret" not in str(creds)


def test_secret_from_a_file(tmp_path: Path) -> None:
    secret = tmp_path / "token"
    secret.write_text("tok-123\n")
    config = parse_config(
        f"registries:\n  ghcr.io:\n    credentials:\n      token: {{file: {secret}}}\n"
    )
    creds = config.registries["ghcr.io"].credentials
    assert creds is not None
    assert creds.token is not None
    assert creds.token.reveal() == "tok-123"
    assert isinstance(creds.token, Secret)
    missing = Secret(file=tmp_path / "nope")
    with pytest.raises(ConfigError, match="cannot read secret file"):
        missing.reveal()


MISTAKES = [
    # (config text, line, column, path, words in the message)
    (
        "registries:\n  docker.io:\n    rate_limit_wait: 0\n",
        3,
        22,
        "registries.docker.io.rate_limit_wait",
        "longer than 0",
    ),
    ("mirrors:\n  - source: alpine\n    targets: []\n", 3, 14, "mirrors[0].targets", "at least 1"),
    ("mirrors:\n  - source: alpine\n", 2, 5, "mirrors[0].targets", "required"),
    (
        "mirrors:\n  - source: Alpine\n    targets: [r.io/a]\n",
        2,
        13,
        "mirrors[0].source",
        "lowercase",
    ),
    (
        "mirrors:\n  - source: alpine\n    targets: [r.io/a]\n    tagz: [1]\n",
        4,
        11,
        "mirrors[0].tagz",
        "unknown field",
    ),
    (
        "mirrors:\n  - source: a\n    targets: [r.io/a]\n    schedule: every day\n",
        4,
        15,
        "mirrors[0].schedule",
        "every day",
    ),
    (
        "mirrors:\n  - source: a\n    targets: [r.io/a]\n    tags: {include: ['(']}\n",
        4,
        11,
        "mirrors[0].tags",
        "regex",
    ),
    (
        "mirrors:\n  - source: a\n    targets: [r.io/a]\n    tags: {semver: '>>1'}\n",
        4,
        11,
        "mirrors[0].tags",
        "semver",
    ),
    (
        "mirrors:\n  - source: a\n    targets: [r.io/a]\n    tags: {latest: 0}\n",
        4,
        20,
        "mirrors[0].tags.latest",
        "greater than or equal to 1",
    ),
    (
        "mirrors:\n  - source: a\n    targets: [r.io/a]\n    platforms: [linux]\n",
        4,
        16,
        "mirrors[0].platforms",
        "os/arch",
    ),
    ("concurrency: 0\n", 1, 14, "concurrency", "greater than or equal to 1"),
    ("concurrency: lots\n", 1, 14, "concurrency", "integer"),
    (
        "registries:\n  r.io/path:\n    tls: {verify: false}\n",
        2,
        3,
        "registries",
        "host names",
    ),
    (
        "registries:\n  r.io:\n    credentials: {username: u}\n",
        3,
        18,
        "registries.r.io.credentials",
        "go together",
    ),
    (
        "registries:\n  r.io:\n    credentials: {token: t, helper: ecr}\n",
        3,
        18,
        "registries.r.io.credentials",
        "not several",
    ),
    (
        "registries:\n  r.io:\n    credentials:\n      password: ${NO_SUCH_VARIABLE_X}\n"
        "      username: u\n",
        4,
        17,
        "registries.r.io.credentials.password",
        "NO_SUCH_VARIABLE_X is not set",
    ),
    ("logging: {level: loud}\n", 1, 18, "logging.level", "debug"),
    ("version: 2\n", 1, 10, "version", "1"),
    (
        "mirrors:\n  - {name: a, source: a, targets: [r.io/a]}\n"
        "  - {name: a, source: b, targets: [r.io/b]}\n",
        1,
        1,
        "(top level)",
        "two mirrors are named 'a'",
    ),
    ("mirrors: [\n", 2, 1, "(syntax)", "invalid YAML"),
    ("- just\n- a list\n", 1, 1, "(top level)", "mapping"),
]


@pytest.mark.parametrize(("text", "line", "col", "path", "words"), MISTAKES)
def test_every_mistake_is_named_with_its_position(
    text: str, line: int, col: int, path: str, words: str
) -> None:
    with pytest.raises(ConfigFileError) as info:
        parse_config(text, "mirror.yaml")
    rendered = str(info.value)
    assert f"mirror.yaml:{line}:{col}: {path}:" in rendered, rendered
    assert words.lower() in rendered.lower(), rendered


@pytest.mark.parametrize(("text", "line", "col", "path", "words"), MISTAKES)
def test_a_config_file_is_parsed_once_and_its_mistakes_positioned(
    text: str,
    line: int,
    col: int,
    path: str,
    words: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """`load_config` detects the format and validates from one YAML parse, with the same
    positioned errors as `parse_config`."""
    parses: list[str] = []
    real = loading._compose

    def counted(text: str) -> loading.Composed:
        parses.append(text)
        return real(text)

    monkeypatch.setattr(loading, "_compose", counted)
    config = tmp_path / "mirror.yaml"
    config.write_text(text)
    with pytest.raises(ConfigFileError) as info:
        load_config(config)
    rendered = str(info.value)
    assert f"{config}:{line}:{col}: {path}:" in rendered, rendered
    assert words.lower() in rendered.lower(), rendered
    # Text that is not YAML is parsed again for its error (detection only learns that).
    assert len(parses) == (2 if path == "(syntax)" else 1), parses


def test_all_problems_are_reported_at_once() -> None:
    text = "concurrency: 0\nmirrors:\n  - source: a\n    targets: []\n    bogus: 1\n"
    with pytest.raises(ConfigFileError) as info:
        parse_config(text, "m.yaml")
    assert len(info.value.problems) == 3
    assert [p[0] for p in info.value.problems] == [1, 4, 5]  # sorted by line


def test_json_schema_describes_the_format() -> None:
    schema = json_schema()
    assert "mirrors" in schema["properties"]
    assert "Mirror" in schema["$defs"]
    assert "targets" in schema["$defs"]["Mirror"]["required"]


DOCKER_SYNC = """\
sync:
  interval: 1h0m0s
  maxErrors: 3
  registries:
    - name: Docker Hub
      url: docker.io
      auth:
        username: hubuser
        password: hubpass
    - name: ECR
      url: 123456789012.dkr.ecr.eu-west-1.amazonaws.com
      auth:
        helper: ecr-login
  images:
    - source: docker.io/library/ubuntu
      targets:
        - 123456789012.dkr.ecr.eu-west-1.amazonaws.com/mirror/ubuntu
      mutableTags: [latest, noble]
    - source: docker.io/library/alpine
      targets: [123456789012.dkr.ecr.eu-west-1.amazonaws.com/mirror/alpine]
logging:
  format: json
  level: WARN
  colors: false
telemetry:
  enabled: true
  metrics:
    prometheus:
      address: 127.0.0.1:9090
"""


def test_docker_sync_yaml_is_read_as_is(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(DOCKER_SYNC)
    loaded = load_config(path)
    assert loaded.format == "docker-sync"
    config = loaded.config
    assert config.max_errors == 3
    assert config.logging.format == "json"
    assert config.logging.level == "warning"
    assert config.metrics.listen == "127.0.0.1:9090"
    hub = config.registries["docker.io"].credentials
    assert hub is not None
    assert hub.username == "hubuser"
    assert hub.password is not None
    assert hub.password.reveal() == "hubpass"
    ecr = config.registries["123456789012.dkr.ecr.eu-west-1.amazonaws.com"].credentials
    assert ecr is not None
    assert ecr.helper == "ecr-login"
    ubuntu, alpine = config.mirrors
    assert ubuntu.sources == ["docker.io/library/ubuntu"]
    assert ubuntu.targets == ["123456789012.dkr.ecr.eu-west-1.amazonaws.com/mirror/ubuntu"]
    assert ubuntu.immutable_tags == ["*"]
    assert ubuntu.mutable_tags == ["latest", "noble"]
    assert alpine.mutable_tags == ["latest"]
    assert ubuntu.schedule == "1h0m0s"
    from ocimirror.settings.schedule import Schedule

    assert Schedule.parse(ubuntu.schedule).describe() == "every 1h"


INI = """\
[DEFAULT]
refresh = 1d

[nginx]
image = nginx
tag = 1.27, stable
project = web

[jenkins]
image = jenkins/jenkins
source-repository = docker.io
project = ci

[pause]
image = pause
tag = 3.9
source-repository = registry.k8s.io
"""


def test_docker_mirror_image_ini_is_read_as_is(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "config.ini"
    path.write_text(INI)
    monkeypatch.delenv(TARGET_REGISTRY_ENV, raising=False)
    with pytest.raises(ConfigFileError, match="target registry"):
        load_config(path)
    monkeypatch.setenv(TARGET_REGISTRY_ENV, "registry.example.com/mirror")
    loaded = load_config(path)
    assert loaded.format == "docker-mirror-image-ini"
    nginx, jenkins, pause = loaded.config.mirrors
    assert nginx.sources == ["nginx"]
    assert nginx.targets == ["registry.example.com/mirror/web/nginx"]
    assert nginx.tags is not None
    assert nginx.tags.exact == ["1.27", "stable"]
    assert nginx.schedule == "1d"
    assert jenkins.sources == ["docker.io/jenkins/jenkins"]
    assert jenkins.targets == ["registry.example.com/mirror/ci/jenkins"]
    assert jenkins.tags is None  # every tag
    assert pause.sources == ["registry.k8s.io/pause"]
    assert pause.targets == ["registry.example.com/mirror/pause"]
    flag = load_config(path, target_registry="other.example.com")
    assert flag.config.mirrors[0].targets == ["other.example.com/web/nginx"]


def test_format_detection() -> None:
    assert detect_format(GOOD) == "ocimirror"
    assert detect_format(DOCKER_SYNC) == "docker-sync"
    assert detect_format(INI) == "docker-mirror-image-ini"
    assert detect_format("# comment\n\n[section]\nimage = x\n") == "docker-mirror-image-ini"
    assert detect_format("") == "ocimirror"


def test_missing_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"nope\.yaml: cannot read"):
        load_config(tmp_path / "nope.yaml")


def test_example_config_is_valid(monkeypatch: pytest.MonkeyPatch) -> None:
    from ocimirror.sync.example import EXAMPLE_CONFIG

    monkeypatch.setenv("MIRROR_PASSWORD", "x")
    config = parse_config(textwrap.dedent(EXAMPLE_CONFIG), "example")
    assert config.mirrors


def test_config_commands(tmp_path: Path) -> None:
    """`config init` writes a config that `config validate` accepts; errors exit 2."""
    import json

    from ocimirror.testkit.command import run_ocimirror

    path = tmp_path / "mirror.yaml"
    out = run_ocimirror("config", "init", "-o", str(path))
    assert out.returncode == 0, out.stderr
    assert "mirrors:" in path.read_text()
    assert run_ocimirror("config", "init", "-o", str(path)).returncode == 2  # exists
    out = run_ocimirror("config", "validate", str(path), env={"MIRROR_PASSWORD": "x"})
    assert out.returncode == 0, out.stderr
    assert "valid (ocimirror format, 2 mirrors)" in out.stderr
    bad = tmp_path / "bad.yaml"
    bad.write_text("mirrors:\n  - source: alpine\n    targets: [r.io/a]\n    tagz: [1]\n")
    out = run_ocimirror("config", "validate", str(bad))
    assert out.returncode == 2
    assert f"{bad}:4:11: mirrors[0].tagz: unknown field" in out.stderr
    ds = tmp_path / "docker-sync.yaml"
    ds.write_text(DOCKER_SYNC)
    out = run_ocimirror("config", "validate", str(ds))
    assert out.returncode == 0, out.stderr
    assert "docker-sync format, 2 mirrors" in out.stderr
    schema = json.loads(run_ocimirror("config", "schema").stdout)
    assert schema["title"] == "Config"


def test_registry_settings_reach_the_client() -> None:
    from ocimirror.client import HostOptions
    from ocimirror.settings.connection import host_options

    config = parse_config(
        "registries:\n"
        "  docker.io:\n"
        "    requests_per_second: 2.5\n"
        "    rate_limit_reserve: 20\n"
        "    rate_limit_wait: 90s\n"
        "    max_concurrency: 4\n"
        "    tls: {ca_file: /etc/ca.pem}\n",
        "m.yaml",
    )
    options = host_options(config, "registry-1.docker.io")  # Docker Hub's API host
    assert options == HostOptions(
        ca_file="/etc/ca.pem",
        max_concurrency=4,
        requests_per_second=2.5,
        rate_limit_reserve=20,
        rate_limit_wait=90.0,
    )
    assert host_options(config, "elsewhere.example") == HostOptions()


def test_hub_settings_under_any_hub_name_reach_the_client() -> None:
    from ocimirror.settings.connection import host_options

    config = parse_config("registries:\n  index.docker.io:\n    max_concurrency: 3\n", "m.yaml")
    assert host_options(config, "registry-1.docker.io").max_concurrency == 3


def test_config_validate_names_a_cloud_login_whose_extra_is_missing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import importlib.util

    from typer.testing import CliRunner

    from ocimirror.cli import app

    ecr = "123456789012.dkr.ecr.eu-west-1.amazonaws.com"
    cfg = tmp_path / "mirror.yaml"
    cfg.write_text(f"mirrors:\n  - source: alpine:3.20\n    targets: [{ecr}/mirror]\n")
    line = f"{ecr}: ecr login: the aws extra is not installed (pip install 'ocimirror[aws]')"
    installed = CliRunner().invoke(app, ["config", "validate", str(cfg)])
    assert installed.exit_code == 0, installed.output
    assert "extra is not installed" not in installed.output
    real = importlib.util.find_spec

    def without_boto3(name: str, package: str | None = None) -> object:
        return None if name == "boto3" else real(name, package)

    monkeypatch.setattr(importlib.util, "find_spec", without_boto3)
    missing = CliRunner().invoke(app, ["config", "validate", str(cfg)])
    assert missing.exit_code == 0, missing.output
    assert line in missing.output
