"""docs/migrating.md, run: every `example=` block against local registries.

The extractor reads the fenced blocks whose info string says `example=NAME` (and
`original` for the replaced tool's own line). Each NAME has one test below; a block
without a test, or a test without a block, fails `test_every_example_is_tested`.
Host names are replaced by loopback registries; nothing else in a command changes.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from ocimirror.settings.loading import parse_config
from ocimirror.testkit.command import Background, run_ocimirror
from ocimirror.testkit.images import make_image
from ocimirror.testkit.polling import wait_for
from ocimirror.testkit.proxy import PROXY_ENV, call
from ocimirror.testkit.registry import LocalRegistry, free_port
from ocimirror.testkit.seeding import seed, seed_sync

DOC = Path(__file__).parent.parent / "docs" / "migrating.md"
_BLOCK = re.compile(
    r"^```(?P<lang>\w+) example=(?P<name>\S+)(?P<original> original)?\n(?P<body>.*?)^```$",
    re.MULTILINE | re.DOTALL,
)


def examples() -> dict[tuple[str, bool], str]:
    """(name, is the original) → the block's text."""
    found: dict[tuple[str, bool], str] = {}
    for m in _BLOCK.finditer(DOC.read_text()):
        key = (m["name"], bool(m["original"]))
        assert key not in found, f"two blocks {key} in {DOC.name}"
        found[key] = m["body"]
    return found


def ours(name: str) -> str:
    return examples()[(name, False)]


def original(name: str) -> str:
    return examples()[(name, True)]


def words(text: str, replace: dict[str, str] | None = None) -> list[str]:
    """A command line as the shell splits it (continuations joined), hosts replaced."""
    for old, new in (replace or {}).items():
        text = text.replace(old, new)
    return shlex.split(text.replace("\\\n", " "))


def command(line: list[str]) -> tuple[dict[str, str], list[str]]:
    """Split `VAR=value ... ocimirror ARGS` into the variables and ARGS."""
    env = {}
    while "=" in line[0] and not line[0].startswith("-"):
        name, _, value = line.pop(0).partition("=")
        env[name] = value
    assert line[0] == "ocimirror", line
    return env, line[1:]


TESTED = {
    "docker-sync/one-off",
    "docker-sync/daemon",
    "dmi/config",
    "dmi/run",
    "cloud-run/invoke",
    "cloud-run/oidc",
    "proxy/flags",
    "docker-mirror/prefix",
}


def test_every_example_is_tested() -> None:
    names = {name for name, _ in examples()}
    assert names == TESTED


# -- Altinity docker-sync ------------------------------------------------------------------


async def test_docker_sync_one_off(
    src_registry: LocalRegistry, registry_factory: Callable[..., LocalRegistry]
) -> None:
    assert ours("docker-sync/one-off") == original("docker-sync/one-off").replace(
        "dist/docker-sync", "ocimirror docker-sync"
    ).replace("r2:blablabla:docker-sync-test:ubuntu", "registry.example.com/mirror/ubuntu")
    src = src_registry
    dst = registry_factory("dst", auth="htpasswd", users={"foo": "bar"})
    await seed(src, "library/ubuntu", [("noble", make_image(layer_size=200, seed="u"))])
    line = words(
        ours("docker-sync/one-off"), {"docker.io": src.host, "registry.example.com": dst.host}
    )
    _env, args = command(line)
    out = run_ocimirror(*args)
    assert out.returncode == 0, out.stderr
    assert dst.tags("mirror/ubuntu") == ["noble"]


async def test_docker_sync_daemon(
    src_registry: LocalRegistry, registry: LocalRegistry, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    assert ours("docker-sync/daemon") == original("docker-sync/daemon").replace(
        "dist/docker-sync", "ocimirror docker-sync"
    )
    src, dst = src_registry, registry
    await seed(src, "library/ubuntu", [("noble", make_image(layer_size=200, seed="d"))])
    monkeypatch.chdir(tmp_path)
    write, daemon = (command(words(line))[1] for line in ours("docker-sync/daemon").splitlines())
    out = run_ocimirror(*write)
    assert out.returncode == 0, out.stderr
    # "Edit the config file accordingly": its one image, onto our registries.
    config = tmp_path / "config.yaml"
    text = config.read_text()
    text = text.replace(
        "- source: docker.io/library/ubuntu", f"- source: {src.host}/library/ubuntu"
    )
    text = text.replace("- docker.io/library/ubuntu", f"- {dst.host}/mirror/ubuntu")
    config.write_text(text)
    proc = Background(daemon, tmp_path / "daemon.log")
    try:
        wait_for(lambda: "run finished" in proc.text(), "the first pass")
        assert dst.tags("mirror/ubuntu") == ["noble"]
        assert "every 30m" in proc.text()  # docker-sync's default interval
    finally:
        assert proc.stop() == 0


# -- Docker Mirror Image -------------------------------------------------------------------


async def test_dmi_config_and_run(
    src_registry: LocalRegistry, registry: LocalRegistry, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    src, dst = src_registry, registry
    for name in ("proxyv2", "mixer"):
        await seed(src, f"istio/{name}", [("1.7.0", make_image(layer_size=200, seed=name))])
    ini = original("dmi/config").replace(
        "source-repository = istio", f"source-repository = {src.host}/istio"
    )
    (tmp_path / "config.ini").write_text(ini)
    (tmp_path / "db").mkdir()  # the original's `-v …/db:/db`
    env, args = command(words(ours("dmi/run"), {"registry.example.com": dst.host}))
    monkeypatch.chdir(tmp_path)
    proc = Background(args, tmp_path / "run.log", {**os.environ, **env})
    try:
        wait_for(lambda: proc.text().count("run finished") == 2, "both sections mirrored")
    finally:
        assert proc.stop() == 0
    assert dst.tags("istio/proxyv2") == ["1.7.0"]
    assert dst.tags("istio/mixer") == ["1.7.0"]
    assert (tmp_path / "db" / "repository.db").is_file()


# -- Cloud Run Docker Mirror ---------------------------------------------------------------


def test_cloud_run_invoke(
    src_registry: LocalRegistry, registry: LocalRegistry, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    src, dst = src_registry, registry
    seed_sync(src, "library/postgres", [("latest", make_image(layer_size=200, seed="pg"))])
    start, invoke = ours("cloud-run/invoke").splitlines()
    assert invoke == original("cloud-run/invoke").strip()
    env, args = command(words(start.removesuffix("&")))
    port = free_port()
    environ = {k: v for k, v in os.environ.items() if k != "OCIMIRROR_API_TOKENS"}
    # Cloud Run gives PORT; the loopback test registries must be allowed explicitly.
    environ |= {**env, "PORT": str(port), "OCIMIRROR_ALLOWED_REGISTRIES": "127.0.0.1"}
    monkeypatch.chdir(tmp_path)
    proc = Background(args, tmp_path / "serve.log", environ)
    try:
        proc.wait_ready(lambda: call(port, "GET", "/readyz").status == 200, "serve")
        local = invoke.replace('"postgres"', f'"{src.host}/library/postgres"').replace(
            "us-docker.pkg.dev/my-project/my-repo", f"{dst.host}/my-repo"
        )
        done = subprocess.run(
            ["sh", "-c", local], env={**os.environ, "URL": f"http://127.0.0.1:{port}"},
            capture_output=True, text=True, timeout=120, check=False,
        )  # fmt: skip
        assert done.stdout == '{"ok":true}\n', (done.stdout, done.stderr, proc.text())
    finally:
        proc.stop()
    assert dst.tags("my-repo/postgres") == ["latest"]
    assert "access is left to the platform's IAM" in proc.text()


def test_cloud_run_oidc() -> None:
    config = parse_config(ours("cloud-run/oidc"))
    assert config.api.oidc is not None
    assert config.api.oidc.emails == ["docker-mirror-invoker@my-project.iam.gserviceaccount.com"]
    assert config.api.oidc.jwks_url == "https://www.googleapis.com/oauth2/v3/certs"


# -- serverless-registry-proxy -------------------------------------------------------------


async def test_proxy_flags(registry: LocalRegistry, tmp_path: Path) -> None:
    assert ours("proxy/flags") == original("proxy/flags").replace("./app", "ocimirror proxy")
    await seed(registry, "ahmet/example", [("1", make_image(layer_size=200, seed="p"))])
    port = free_port()
    line = words(ours("proxy/flags"), {"index.docker.io": registry.host, "8080": str(port)})
    _env, args = command(line)
    environ = {k: v for k, v in os.environ.items() if k not in PROXY_ENV}
    proc = Background(args, tmp_path / "proxy.log", environ)
    try:
        proc.wait_ready(lambda: call(port, "GET", "/healthz").status == 200, "the proxy")
        answer = call(port, "GET", "/v2/example/tags/list")
        assert (answer.status, answer.json()["tags"]) == (200, ["1"])
    finally:
        proc.stop()


# -- area51 docker-mirror ------------------------------------------------------------------


async def test_docker_mirror_prefix(src_registry: LocalRegistry, registry: LocalRegistry) -> None:
    assert ours("docker-mirror/prefix") == "ocimirror " + original("docker-mirror/prefix")
    src, dst = src_registry, registry
    await seed(src, "library/hello-world", [("latest", make_image(layer_size=100, seed="h"))])
    await seed(src, "area51/jenkins", [("latest", make_image(layer_size=100, seed="j"))])
    images = {
        "hello-world": f"{src.host}/library/hello-world",
        "area51/jenkins": f"{src.host}/area51/jenkins",
    }
    line = [
        images.get(w, w)
        for w in words(ours("docker-mirror/prefix"), {"docker.example.com": dst.host})
    ]
    _env, args = command(line)
    out = run_ocimirror(*args)
    assert out.returncode == 0, out.stderr
    assert dst.tags("mirror/library/hello-world") == ["latest"]
    assert dst.tags("mirror/area51/jenkins") == ["latest"]
