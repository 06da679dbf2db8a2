"""The `ocimirror` command, run as a user runs it, against real registries."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from ocimirror import __version__
from ocimirror.cli import app
from ocimirror.testkit.command import run_ocimirror as ocimirror
from ocimirror.testkit.images import make_image, make_index
from ocimirror.testkit.registry import LocalRegistry
from ocimirror.testkit.seeding import seed
from ocimirror.testkit.skopeo import Skopeo


def test_help_lists_the_commands_and_flags() -> None:
    out = ocimirror("--help")
    assert out.returncode == 0
    for word in ("copy", "mirror", "version"):
        assert word in out.stdout
    out = ocimirror("copy", "--help")
    for flag in ("--all-tags", "--platform", "--src-tls-verify", "--dest-creds", "--json"):
        assert flag in out.stdout


#: Imported only by the commands that use them: no help page nor `version` may load them.
HEAVY = frozenset({"aiohttp", "asyncio", "sqlalchemy", "structlog", "yaml", "obstore", "ssl"})


def loaded_after(entry: str, *args: str) -> set[str]:
    """The top-level packages a fresh interpreter has loaded after `ocimirror ARGS` ran."""
    return {m.partition(".")[0] for m in modules_after(entry, *args)}


def modules_after(entry: str, *args: str, cwd: Path | None = None) -> set[str]:
    """Every module a fresh interpreter has loaded after `ocimirror ARGS` ran."""
    probe = (
        "import contextlib, io, json, os, sys\n"
        "def no_exit(code):\n"
        "    raise SystemExit(code)\n"
        "os._exit = no_exit  # the console script ends with os._exit: go on to report\n"
        f"sys.argv = ['ocimirror', *{list(args)!r}]\n"
        f"from {entry} import main\n"
        "with contextlib.redirect_stdout(io.StringIO()), contextlib.suppress(SystemExit):\n"
        "    main()\n"
        "print(json.dumps(sorted(sys.modules)))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
        cwd=cwd,
    )
    return set(json.loads(done.stdout.splitlines()[-1]))


@pytest.mark.parametrize(
    "args",
    [
        ["--help"],
        ["copy", "--help"],
        ["mirror", "--help"],
        ["sync", "--help"],
        ["run", "--help"],
        ["status", "--help"],
        ["serve", "--help"],
        ["proxy", "--help"],
        ["config", "validate", "--help"],
        ["version"],
    ],
)
def test_help_and_version_import_nothing_heavy(args: list[str]) -> None:
    """Help pages and `version` start without the engine, the servers or the config models."""
    loaded = loaded_after("ocimirror.cli", *args)
    assert "ocimirror" in loaded
    assert not loaded & HEAVY
    if args == ["--help"]:
        # typer builds pydantic validators for the options of the command it runs; the
        # top-level help runs none, so pydantic is not needed there.
        assert "pydantic" not in loaded


def test_the_probe_sees_what_a_command_imports() -> None:
    """The check above can fail: a command that prints the config's schema loads pydantic
    (and, reading no file, not yaml)."""
    loaded = loaded_after("ocimirror.cli", "config", "schema")
    assert "pydantic" in loaded
    assert "yaml" not in loaded


#: What `ocimirror status` has no use for on a database already at the newest schema: the
#: migrations, an HTTP client, the logging set-up, the dialect of another database, and
#: (for a mirror with no cron schedule) the cron library.
NOT_FOR_STATUS = ("alembic", "aiohttp", "structlog", "sqlalchemy.dialects.postgresql", "croniter")


def test_status_on_an_up_to_date_database_imports_no_migrations(tmp_path: Path) -> None:
    """`status` reads the config and two queries' worth of the state database, nothing more.

    On a database written by an older ocimirror (here: none yet) the same command does
    load Alembic to migrate it, so the check can fail.
    """
    config = tmp_path / "mirrors.yaml"
    config.write_text(
        "mirrors:\n"
        "  - name: m\n"
        "    source: 127.0.0.1:9/src/a\n"
        "    targets: [127.0.0.1:9/dst]\n"
        "    schedule: 0\n"
    )
    first = modules_after("ocimirror.__main__", "status", "-c", str(config))
    assert (tmp_path / "mirrors.state.db").exists()
    assert "alembic" in first  # the database was created, by migrating it to the head
    loaded = modules_after("ocimirror.__main__", "status", "-c", str(config))
    assert "ocimirror.state.connection" in loaded
    assert "sqlalchemy" in loaded
    unneeded = {m for m in loaded for n in NOT_FOR_STATUS if m == n or m.startswith(f"{n}.")}
    assert not unneeded
    out = ocimirror("status", "-c", str(config))
    assert out.returncode == 0, out.stderr
    assert "never" in out.stdout
    assert "on demand" in out.stdout


def test_version_is_answered_without_typer() -> None:
    """`ocimirror version` skips the command line and prints what its command prints."""
    assert "typer" not in loaded_after("ocimirror.__main__", "version")
    assert "typer" in loaded_after("ocimirror.__main__", "version", "--help")
    out = ocimirror("version")
    assert out.returncode == 0
    assert out.stdout == f"ocimirror {__version__}\n"
    assert CliRunner().invoke(app, ["version"]).stdout == out.stdout


async def test_copy_json_summary_and_exit_codes(
    registry_pair: tuple[LocalRegistry, LocalRegistry], skopeo: Skopeo
) -> None:
    src, dst = registry_pair
    image = make_image(layers=2, layer_size=10_000, seed="cli")
    index = make_index(("linux/amd64", "linux/arm64"), layer_size=5000, seed="cli-index")
    await seed(src, "team/app", [("1.2", image), ("multi", index)])

    out = ocimirror("copy", "--json", f"{src.host}/team/app:1.2", f"{dst.host}/mirror/app:1.2")
    assert out.returncode == 0, out.stderr
    summary = json.loads(out.stdout)
    assert summary["ok"] is True
    (entry,) = summary["images"]
    assert entry["status"] == "copied"
    assert entry["source_digest"] == entry["destination_digest"] == image.digest
    assert summary["counts"] == {"copied": 1, "unchanged": 0, "failed": 0}
    assert skopeo.manifest(dst.ref("mirror/app:1.2"), registry=dst) == image.manifest.raw

    # Not a terminal: one plain log line per image, and the summary line.
    out = ocimirror("copy", f"{src.host}/team/app:1.2", f"{dst.host}/mirror/app:1.2")
    assert out.returncode == 0
    assert "unchanged" in out.stderr
    assert "\x1b[" not in out.stderr or "TERM" in os.environ

    # --platform reports the source → destination digest of the filtered index.
    out = ocimirror(
        "copy",
        "--json",
        "--platform",
        "linux/arm64",
        f"{src.host}/team/app:multi",
        f"{dst.host}/mirror/app:arm",
    )
    assert out.returncode == 0, out.stderr
    entry = json.loads(out.stdout)["images"][0]
    assert entry["source_digest"] == index.digest
    assert entry["destination_digest"] != index.digest
    assert entry["platforms"] == ["linux/arm64"]

    # Partial failure: exit 3, the summary names the failed tag and why.
    out = ocimirror(
        "copy",
        "--all-tags",
        "--include",
        "1.2|nope",
        f"{src.host}/team/app",
        f"{dst.host}/all/app",
    )
    assert out.returncode == 0, out.stderr  # only existing tags are listed: nothing fails
    assert dst.tags("all/app") == ["1.2"]
    out = ocimirror(
        "mirror",
        "--json",
        "-d",
        f"{dst.host}/m",
        f"{src.host}/team/app:1.2",
        f"{src.host}/team/app:gone",
    )
    assert out.returncode == 3, out.stderr
    summary = json.loads(out.stdout)
    failed = [i for i in summary["images"] if i["status"] == "failed"]
    assert len(failed) == 1
    assert "gone" in failed[0]["source"]
    assert "manifest unknown" in failed[0]["error"].lower() or "not found" in failed[0]["error"]
    assert "gone" in out.stderr
    assert dst.tags("m/team/app") == ["1.2"]

    # Everything failed: exit 1.
    out = ocimirror("copy", f"{src.host}/team/app:gone", f"{dst.host}/x/app:gone")
    assert out.returncode == 1
    assert "gone" in out.stderr


def test_mirror_keeps_docker_paths_under_the_prefix(
    registry_pair: tuple[LocalRegistry, LocalRegistry],
) -> None:
    import asyncio

    src, dst = registry_pair
    hello = make_image(layers=1, layer_size=1000, seed="hello")
    jenkins = make_image(layers=1, layer_size=1000, seed="jenkins")
    asyncio.run(seed(src, "library/hello-world", [("latest", hello)]))
    asyncio.run(seed(src, "area51/jenkins", [("latest", jenkins), ("2", jenkins)]))
    out = ocimirror(
        "mirror",
        "-d",
        f"{dst.host}/mirror",
        f"{src.host}/library/hello-world",
        f"{src.host}/area51/jenkins:2",
    )
    assert out.returncode == 0, out.stderr
    assert dst.tags("mirror/library/hello-world") == ["latest"]
    assert dst.tags("mirror/area51/jenkins") == ["2"]
    out = ocimirror("mirror", "--all-tags", "-d", f"{dst.host}/all", f"{src.host}/area51/jenkins")
    assert out.returncode == 0, out.stderr
    assert dst.tags("all/area51/jenkins") == ["2", "latest"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["copy", "Bad/Name", "localhost:1/x"], "must be lowercase"),
        (["copy", "alpine@sha256:123", "localhost:1/x"], "invalid digest"),
        (["copy", "alpine", "localhost:1/x", "--platform", "linux"], "os/arch"),
        (["copy", "alpine", "localhost:1/x", "--include", "x"], "need --all-tags"),
        (["copy", "alpine", "localhost:1/x", "--src-creds", "nopassword"], "USER:PASSWORD"),
        (["copy", "-a", "alpine", "localhost:1/x", "--semver", ">>1"], "semver"),
        (["copy", "-a", "alpine", "localhost:1/x", "--include", "("], "regex"),
        (["mirror", "-d", "reg.example/m:tag", "alpine"], "without tag or digest"),
    ],
)
def test_usage_errors_name_the_problem(args: list[str], message: str) -> None:
    out = ocimirror(*args)
    assert out.returncode == 2, (out.stdout, out.stderr)
    assert message.lower() in out.stderr.lower()
    assert "Traceback" not in out.stderr
    assert len(out.stderr.strip().splitlines()) <= 3


def test_unreachable_registry_and_bad_credentials(
    htpasswd_registry: LocalRegistry, registry: LocalRegistry
) -> None:
    out = ocimirror("copy", "127.0.0.1:9/app:1", f"{registry.host}/app:1")
    assert out.returncode == 1
    assert "127.0.0.1:9" in out.stderr
    assert "Traceback" not in out.stderr
    out = ocimirror(
        "copy",
        "--src-creds",
        "alice:sekrit-wrong",
        f"{htpasswd_registry.host}/app:1",
        f"{registry.host}/app:1",
    )
    assert out.returncode == 1
    assert "401" in out.stderr or "unauthorized" in out.stderr.lower()
    assert "sekrit-wrong" not in out.stderr + out.stdout


async def test_layout_round_trip_from_the_command_line(
    registry_pair: tuple[LocalRegistry, LocalRegistry], tmp_path: Path, skopeo: Skopeo
) -> None:
    src, dst = registry_pair
    index = make_index(("linux/amd64", "windows/amd64"), layer_size=4000, seed="cli-oci")
    await seed(src, "app", [("1.2", index)])
    bundle = tmp_path / "bundle"
    out = ocimirror("copy", f"{src.host}/app:1.2", f"oci:{bundle}")
    assert out.returncode == 0, out.stderr
    assert skopeo.run("inspect", "--raw", f"oci:{bundle}:1.2").stdout.encode() == (
        index.manifest.raw
    )
    out = ocimirror("copy", f"oci:{bundle}:1.2", f"{dst.host}/back/app")
    assert out.returncode == 0, out.stderr
    assert skopeo.manifest(dst.ref("back/app:1.2"), registry=dst) == index.manifest.raw
    out = ocimirror("copy", f"oci:{tmp_path}/nowhere:1", f"{dst.host}/back/app:2")
    assert out.returncode == 1
    assert "nowhere" in out.stderr


def test_credentials_from_docker_config_and_helpers(
    htpasswd_registry: LocalRegistry, registry: LocalRegistry, tmp_path: Path
) -> None:
    """`--authfile` auths entries and credHelpers executables, as docker reads them."""
    import asyncio
    import base64

    asyncio.run(seed(htpasswd_registry, "app", [("1", make_image(layer_size=500, seed="c"))]))
    auth = base64.b64encode(b"alice:wonderland").decode()
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"auths": {htpasswd_registry.host: {"auth": auth}}}))
    out = ocimirror(
        "copy", "--authfile", str(config), f"{htpasswd_registry.host}/app:1", f"{registry.host}/a:1"
    )
    assert out.returncode == 0, out.stderr
    # A credential helper on PATH answers `get` with the secret for the host it is asked.
    bindir = tmp_path / "bin"
    bindir.mkdir()
    helper = bindir / "docker-credential-testkit"
    helper.write_text(
        "#!/bin/sh\n"
        "read host\n"
        f'[ "$host" = "{htpasswd_registry.host}" ] || {{ echo "credentials not found"; exit 1; }}\n'
        'echo \'{"ServerURL":"\'$host\'","Username":"alice","Secret":"wonderland"}\'\n'
    )
    helper.chmod(0o755)
    config.write_text(json.dumps({"credHelpers": {htpasswd_registry.host: "testkit"}}))
    env = {"PATH": f"{bindir}:{os.environ['PATH']}"}
    out = ocimirror(
        "copy",
        "--authfile",
        str(config),
        f"{htpasswd_registry.host}/app:1",
        f"{registry.host}/b:1",
        env=env,
    )
    assert out.returncode == 0, out.stderr
    assert registry.tags("b") == ["1"]
    # Without any credential: a clear 401 naming the registry.
    config.write_text("{}")
    out = ocimirror(
        "copy", "--authfile", str(config), f"{htpasswd_registry.host}/app:1", f"{registry.host}/c:1"
    )
    assert out.returncode == 1
    assert htpasswd_registry.host in out.stderr


def test_registry_token_flag(token_registry: LocalRegistry, registry: LocalRegistry) -> None:
    """`--src-token` is sent as the bearer token as-is (no token server round trip)."""
    import asyncio

    from ocimirror.testkit.tokenserver import Access

    asyncio.run(seed(token_registry, "priv/app", [("1", make_image(layer_size=500, seed="t"))]))
    server = token_registry.token_server
    assert server is not None
    token = server.issue(
        token_registry.service, [Access.parse("repository:priv/app:pull")], subject="bob"
    )
    before = server.tokens_issued()
    out = ocimirror(
        "copy", "--src-token", token, f"{token_registry.host}/priv/app:1", f"{registry.host}/t:1"
    )
    assert out.returncode == 0, out.stderr
    assert server.tokens_issued() == before
    assert registry.tags("t") == ["1"]
    assert token not in out.stderr


def test_tls_flags_as_skopeo_spells_them(
    registry: LocalRegistry, tls_registry: LocalRegistry, ca_cert: Path
) -> None:
    """`--dest-tls-verify=false` (skopeo's spelling), `--dest-ca-file`, and the default."""
    import asyncio

    asyncio.run(seed(registry, "app", [("1", make_image(layer_size=500, seed="tls"))]))
    src, dst = f"{registry.host}/app:1", f"{tls_registry.host}/app"
    out = ocimirror("copy", src, f"{dst}:verified")
    assert out.returncode == 1
    assert "certificate" in out.stderr.lower()
    out = ocimirror("copy", "--dest-tls-verify=false", src, f"{dst}:unverified")
    assert out.returncode == 0, out.stderr
    out = ocimirror("copy", "--dest-ca-file", str(ca_cert), "--dest-tls-verify", src, f"{dst}:ca")
    assert out.returncode == 0, out.stderr
    assert tls_registry.tags("app") == ["ca", "unverified"]
    out = ocimirror("copy", "--dest-tls-verify=maybe", src, f"{dst}:x")
    assert out.returncode == 2
    assert "true or false" in out.stderr


def test_terminal_gets_a_progress_display(
    registry_pair: tuple[LocalRegistry, LocalRegistry],
) -> None:
    """On a terminal: per-image outcome lines with a byte bar, not structured log lines."""
    import asyncio
    import pty
    import subprocess

    from ocimirror.testkit.command import ocimirror_command

    src, dst = registry_pair
    images = [(f"v{i}", make_image(layers=2, layer_size=300_000, seed=f"tty{i}")) for i in range(3)]
    asyncio.run(seed(src, "app", images))
    master, slave = pty.openpty()
    env = {**os.environ, "COLUMNS": "120", "TERM": "xterm"}
    proc = subprocess.Popen(
        ocimirror_command("copy", "--all-tags", f"{src.host}/app", f"{dst.host}/app"),
        stdin=slave,
        stdout=slave,
        stderr=slave,
        env=env,
    )
    os.close(slave)
    chunks: list[bytes] = []
    while True:
        try:
            data = os.read(master, 65536)
        except OSError:
            break
        if not data:
            break
        chunks.append(data)
    assert proc.wait(timeout=60) == 0
    os.close(master)
    screen = b"".join(chunks).decode(errors="replace")
    assert "\x1b[" in screen  # drawn, not logged
    assert "images" in screen  # the overall bar: "N/3 images"
    assert screen.count("✓") == 3  # one outcome line per image
    assert "[info" not in screen
    assert "3 copied, 0 unchanged, 0 failed" in screen
    assert dst.tags("app") == ["v0", "v1", "v2"]


@pytest.mark.parametrize("command", ["copy", "mirror"])
def test_every_copy_flag_is_a_field_of_the_typed_options(command: str) -> None:
    """`copy` and `mirror` hand all their flags on as CopyFlags: none is dropped on the way."""
    import dataclasses
    import inspect

    from ocimirror import cli

    flags = {f.name for f in dataclasses.fields(cli.CopyFlags)}
    params = set(inspect.signature(getattr(cli, command)).parameters)
    assert params - {"source", "destination", "images"} == flags
    defaults = cli.CopyFlags()
    for name, param in inspect.signature(cli.copy).parameters.items():
        if name in flags:  # the same defaults as the command line's
            default = param.default
            # A repeatable flag's None is the empty tuple CopyFlags keeps.
            repeatable = isinstance(getattr(defaults, name), tuple)
            assert getattr(defaults, name) == (() if default is None and repeatable else default), (
                name
            )
