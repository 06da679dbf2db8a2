"""Tests of credential lookup: Credentials, parse_user_pass and Keychain.

Auth files are real files under tmp_path and credential helpers are real executables
(`docker-credential-NAME` scripts) found through PATH, as docker finds them.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import stat
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ocimirror.auth.credentials import (
    DOCKER_HUB_SERVER,
    Credentials,
    Keychain,
    normalize_host,
    parse_user_pass,
    server_url,
)
from ocimirror.errors import AuthError, ConfigError

SECRET = "s3cr3t:with:colons"

MakeHelper = Callable[..., Path]


def b64(text: str) -> str:
    """Return base64 of `text`, as docker writes the `auth` field."""
    return base64.b64encode(text.encode()).decode()


def write_config(path: Path, data: dict[str, Any]) -> Path:
    """Write `data` as JSON to `path` (creating parents) and return the path."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))
    return path


@pytest.fixture(autouse=True)
def clean_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Point HOME at an empty dir and drop every variable that moves the auth files."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    for name in ("DOCKER_CONFIG", "REGISTRY_AUTH_FILE", "XDG_RUNTIME_DIR", "XDG_CONFIG_HOME"):
        monkeypatch.delenv(name, raising=False)
    return home


@pytest.fixture
def helper_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A directory put first on PATH for docker-credential-* helpers."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}")
    return bin_dir


@pytest.fixture
def make_helper(helper_dir: Path) -> MakeHelper:
    """Write a Python `docker-credential-NAME` helper.

    `answers` maps server URLs to (Username, Secret); others get docker's "credentials not
    found" message and exit status 1. `script` replaces the answering code entirely. Every
    call appends "ARGS|STDIN" to NAME.calls next to the helper.
    """

    def make(
        name: str,
        answers: dict[str, tuple[str, str]] | None = None,
        *,
        script: str | None = None,
    ) -> Path:
        log = helper_dir / f"{name}.calls"
        body = script or (
            f"answers = {answers or {}!r}\n"
            "if server in answers:\n"
            "    user, secret = answers[server]\n"
            "    print(json.dumps({'ServerURL': server, 'Username': user, 'Secret': secret}))\n"
            "else:\n"
            "    print('credentials not found in native keychain')\n"
            "    sys.exit(1)\n"
        )
        path = helper_dir / f"docker-credential-{name}"
        path.write_text(
            f"#!{sys.executable}\n"
            "import json, sys\n"
            "server = sys.stdin.read()\n"
            f"with open({str(log)!r}, 'a') as f:\n"
            "    f.write(' '.join(sys.argv[1:]) + '|' + server + '\\n')\n" + body
        )
        path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
        return path

    return make


def calls(helper_dir: Path, name: str) -> list[str]:
    """Return the "ARGS|STDIN" lines a helper recorded."""
    log = helper_dir / f"{name}.calls"
    return log.read_text().splitlines() if log.exists() else []


def process_gone(pid: int) -> bool:
    """Tell whether process `pid` has ended (a zombie not yet reaped counts as ended)."""
    try:
        return "State:\tZ" in Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return True


# --------------------------------------------------------------------------- Credentials


def test_anonymous() -> None:
    assert Credentials().anonymous
    assert not Credentials(username="bob").anonymous
    assert not Credentials(password="x").anonymous
    assert not Credentials(identity_token="x").anonymous
    assert not Credentials(registry_token="x").anonymous


def test_repr_shows_username_and_kinds_only() -> None:
    creds = Credentials("bob", SECRET, identity_token="idtok", registry_token="regtok")
    text = repr(creds)
    assert text == (
        "Credentials(username='bob', password=***, identity_token=***, registry_token=***)"
    )
    assert str(creds) == text
    assert repr(Credentials("bob", SECRET)) == "Credentials(username='bob', password=***)"
    assert repr(Credentials(registry_token="t")) == "Credentials(registry_token=***)"
    assert repr(Credentials()) == "Credentials()"
    assert SECRET not in f"{creds} {creds!r} {[creds]} { ({'c': creds}) }"


secrets = st.text(min_size=1)


@given(
    username=st.text(),
    first=st.tuples(secrets, secrets, secrets),
    second=st.tuples(secrets, secrets, secrets),
)
def test_repr_does_not_depend_on_secrets(
    username: str, first: tuple[str, str, str], second: tuple[str, str, str]
) -> None:
    """repr()/str() are the same whatever the secrets: they cannot leak any part of them."""
    one = Credentials(username, *first)
    two = Credentials(username, *second)
    assert repr(one) == repr(two) == str(one) == str(two)
    assert repr(one).count("***") == 3


@given(st.text(alphabet="abcdef", min_size=1), st.text(alphabet="XYZ:", min_size=4))
def test_repr_never_contains_the_secret(username: str, secret: str) -> None:
    for creds in (
        Credentials(username, secret),
        Credentials(username, identity_token=secret),
        Credentials(registry_token=secret),
    ):
        assert secret not in repr(creds)
        assert secret not in str(creds)


def test_credentials_are_hashable_and_frozen() -> None:
    assert {Credentials("a", "b"): 1}[Credentials("a", "b")] == 1
    with pytest.raises(AttributeError):
        Credentials().username = "x"  # type: ignore[misc]


# --------------------------------------------------------------------------- parse_user_pass


@pytest.mark.parametrize(
    ("text", "username", "password"),
    [
        ("bob:builder", "bob", "builder"),
        ("bob:pa:ss:word", "bob", "pa:ss:word"),
        ("bob::", "bob", ":"),
        ("bob:", "bob", ""),
        ("bob: spaced pass ", "bob", " spaced pass "),
    ],
)
def test_parse_user_pass(text: str, username: str, password: str) -> None:
    assert parse_user_pass(text) == Credentials(username=username, password=password)


@given(st.text(alphabet=st.characters(blacklist_characters=":"), min_size=1), st.text())
def test_parse_user_pass_splits_at_first_colon(username: str, password: str) -> None:
    assert parse_user_pass(f"{username}:{password}") == Credentials(username, password)


@pytest.mark.parametrize("text", ["justapassword", "", ":password"])
def test_parse_user_pass_rejects_without_echoing(text: str) -> None:
    with pytest.raises(ConfigError, match="USER:PASSWORD") as info:
        parse_user_pass(text)
    if text:
        assert text.lstrip(":") not in str(info.value)


# --------------------------------------------------------------------------- host names


@pytest.mark.parametrize(
    ("server", "host"),
    [
        ("docker.io", "docker.io"),
        ("index.docker.io", "docker.io"),
        ("registry-1.docker.io", "docker.io"),
        ("https://index.docker.io/v1/", "docker.io"),
        ("https://registry-1.docker.io/v2/", "docker.io"),
        ("ghcr.io", "ghcr.io"),
        ("https://ghcr.io", "ghcr.io"),
        ("http://localhost:5000/v2/", "localhost:5000"),
        ("HTTPS://Registry.Example.com:443/", "registry.example.com:443"),
        ("[::1]:5000", "[::1]:5000"),
    ],
)
def test_normalize_host(server: str, host: str) -> None:
    assert normalize_host(server) == host


def test_server_url() -> None:
    assert server_url("docker.io") == DOCKER_HUB_SERVER
    assert server_url("index.docker.io") == DOCKER_HUB_SERVER
    assert server_url("https://ghcr.io/") == "ghcr.io"
    assert server_url("localhost:5000") == "localhost:5000"


# --------------------------------------------------------------------------- auths entries


async def test_auth_base64(tmp_path: Path) -> None:
    config = write_config(
        tmp_path / "config.json", {"auths": {"ghcr.io": {"auth": b64(f"bob:{SECRET}")}}}
    )
    keychain = Keychain(config_path=config)
    assert await keychain.resolve("ghcr.io") == Credentials("bob", SECRET)
    assert (await keychain.resolve("quay.io")).anonymous


async def test_auth_base64_without_padding(tmp_path: Path) -> None:
    config = write_config(
        tmp_path / "config.json", {"auths": {"ghcr.io": {"auth": b64("bo:pw").rstrip("=")}}}
    )
    assert await Keychain(config_path=config).resolve("ghcr.io") == Credentials("bo", "pw")


async def test_username_password_fields(tmp_path: Path) -> None:
    config = write_config(
        tmp_path / "config.json",
        {"auths": {"ghcr.io": {"username": "bob", "password": SECRET, "email": "b@x"}}},
    )
    assert await Keychain(config_path=config).resolve("ghcr.io") == Credentials("bob", SECRET)


async def test_auth_field_wins_over_username_password(tmp_path: Path) -> None:
    entry = {"auth": b64("alice:one"), "username": "bob", "password": "two"}
    config = write_config(tmp_path / "config.json", {"auths": {"ghcr.io": entry}})
    assert await Keychain(config_path=config).resolve("ghcr.io") == Credentials("alice", "one")


async def test_identity_token(tmp_path: Path) -> None:
    # As `az acr login` writes it: a placeholder user with no password and a refresh token.
    entry = {"auth": b64("00000000-0000-0000-0000-000000000000:"), "identitytoken": "refresh"}
    config = write_config(tmp_path / "config.json", {"auths": {"x.azurecr.io": entry}})
    creds = await Keychain(config_path=config).resolve("x.azurecr.io")
    assert creds == Credentials(
        username="00000000-0000-0000-0000-000000000000", identity_token="refresh"
    )


async def test_identity_token_alone(tmp_path: Path) -> None:
    config = write_config(
        tmp_path / "config.json", {"auths": {"ghcr.io": {"identitytoken": "refresh"}}}
    )
    creds = await Keychain(config_path=config).resolve("ghcr.io")
    assert creds == Credentials(identity_token="refresh")


async def test_registry_token(tmp_path: Path) -> None:
    config = write_config(
        tmp_path / "config.json", {"auths": {"ghcr.io": {"registrytoken": "bearer"}}}
    )
    creds = await Keychain(config_path=config).resolve("ghcr.io")
    assert creds == Credentials(registry_token="bearer")


HUB_NAMES = [
    "docker.io",
    "index.docker.io",
    "registry-1.docker.io",
    "registry.hub.docker.com",
    "https://index.docker.io/v1/",
]


@pytest.mark.parametrize("stored", HUB_NAMES)
@pytest.mark.parametrize("asked", HUB_NAMES)
async def test_docker_hub_aliases(tmp_path: Path, stored: str, asked: str) -> None:
    config = write_config(tmp_path / "config.json", {"auths": {stored: {"auth": b64("bob:pw")}}})
    assert await Keychain(config_path=config).resolve(asked) == Credentials("bob", "pw")


async def test_docker_hub_prefers_dockers_own_key(tmp_path: Path) -> None:
    auths = {"docker.io": {"auth": b64("podman:a")}, DOCKER_HUB_SERVER: {"auth": b64("dckr:b")}}
    config = write_config(tmp_path / "config.json", {"auths": auths})
    assert await Keychain(config_path=config).resolve("docker.io") == Credentials("dckr", "b")


@pytest.mark.parametrize(
    ("key", "asked"),
    [
        ("https://registry.example.com:5000", "registry.example.com:5000"),
        ("http://registry.example.com/v2/", "registry.example.com"),
        ("https://registry.example.com/v1/", "registry.example.com"),
        ("registry.example.com/v2/", "registry.example.com"),
        ("Registry.Example.com", "registry.example.com"),
        ("registry.example.com:5000", "https://registry.example.com:5000/v2/"),
    ],
)
async def test_url_form_keys(tmp_path: Path, key: str, asked: str) -> None:
    config = write_config(tmp_path / "config.json", {"auths": {key: {"auth": b64("u:p")}}})
    assert await Keychain(config_path=config).resolve(asked) == Credentials("u", "p")


async def test_port_is_part_of_the_host(tmp_path: Path) -> None:
    config = write_config(
        tmp_path / "config.json", {"auths": {"registry.example.com:5000": {"auth": b64("u:p")}}}
    )
    assert (await Keychain(config_path=config).resolve("registry.example.com")).anonymous


async def test_exact_key_wins_over_url_form(tmp_path: Path) -> None:
    auths = {"https://ghcr.io/v1/": {"auth": b64("old:a")}, "ghcr.io": {"auth": b64("new:b")}}
    config = write_config(tmp_path / "config.json", {"auths": auths})
    assert await Keychain(config_path=config).resolve("ghcr.io") == Credentials("new", "b")


async def test_namespace_scoped_keys_are_ignored(tmp_path: Path) -> None:
    config = write_config(
        tmp_path / "auth.json", {"auths": {"quay.io/org": {"auth": b64("robot:p")}}}
    )
    assert (await Keychain(config_path=config).resolve("quay.io")).anonymous


async def test_bad_auth_field_is_a_config_error_without_the_secret(tmp_path: Path) -> None:
    config = write_config(
        tmp_path / "config.json", {"auths": {"ghcr.io": {"auth": b64(SECRET.replace(":", ""))}}}
    )
    with pytest.raises(ConfigError, match=r"'auth' of 'ghcr.io'") as info:
        await Keychain(config_path=config).resolve("ghcr.io")
    assert str(config) in str(info.value)
    assert SECRET.replace(":", "") not in str(info.value)
    assert b64(SECRET.replace(":", "")) not in str(info.value)


async def test_non_string_field_is_a_config_error(tmp_path: Path) -> None:
    config = write_config(tmp_path / "config.json", {"auths": {"ghcr.io": {"password": 0}}})
    with pytest.raises(ConfigError, match=r"'password' of 'ghcr\.io' must be a string"):
        await Keychain(config_path=config).resolve("ghcr.io")


# --------------------------------------------------------------------------- helpers


async def test_cred_helpers_win_over_auths(
    tmp_path: Path, make_helper: MakeHelper, helper_dir: Path
) -> None:
    make_helper("ecr", {"123.dkr.ecr.example.com": ("AWS", SECRET)})
    config = write_config(
        tmp_path / "config.json",
        {
            "auths": {"123.dkr.ecr.example.com": {"auth": b64("stale:pw")}},
            "credHelpers": {"123.dkr.ecr.example.com": "ecr"},
        },
    )
    creds = await Keychain(config_path=config).resolve("123.dkr.ecr.example.com")
    assert creds == Credentials("AWS", SECRET)
    assert calls(helper_dir, "ecr") == ["get|123.dkr.ecr.example.com"]


async def test_helpers_argument_wins_over_the_files(
    tmp_path: Path, make_helper: MakeHelper, helper_dir: Path
) -> None:
    make_helper("vault", {"reg.example": ("robot", SECRET)})
    config = write_config(
        tmp_path / "config.json", {"auths": {"reg.example": {"auth": b64("stale:pw")}}}
    )
    keychain = Keychain(config_path=config, helpers={"https://reg.example/": "vault"})
    assert await keychain.resolve("reg.example") == Credentials("robot", SECRET)
    assert await keychain.resolve("other.example") == Credentials()
    assert calls(helper_dir, "vault") == ["get|reg.example"]


async def test_cred_helper_not_found_is_anonymous_not_auths(
    tmp_path: Path, make_helper: MakeHelper
) -> None:
    # As in docker, credHelpers[host] picks the store: its "not found" is the answer.
    make_helper("ecr", {})
    config = write_config(
        tmp_path / "config.json",
        {"auths": {"ghcr.io": {"auth": b64("u:p")}}, "credHelpers": {"ghcr.io": "ecr"}},
    )
    assert (await Keychain(config_path=config).resolve("ghcr.io")).anonymous


async def test_cred_helper_gets_hub_server_url(
    tmp_path: Path, make_helper: MakeHelper, helper_dir: Path
) -> None:
    make_helper("hub", {DOCKER_HUB_SERVER: ("bob", SECRET)})
    config = write_config(tmp_path / "config.json", {"credHelpers": {"docker.io": "hub"}})
    creds = await Keychain(config_path=config).resolve("index.docker.io")
    assert creds == Credentials("bob", SECRET)
    assert calls(helper_dir, "hub") == [f"get|{DOCKER_HUB_SERVER}"]


async def test_empty_cred_helper_name_means_none(tmp_path: Path) -> None:
    config = write_config(
        tmp_path / "config.json",
        {"auths": {"ghcr.io": {"auth": b64("u:p")}}, "credHelpers": {"ghcr.io": ""}},
    )
    assert await Keychain(config_path=config).resolve("ghcr.io") == Credentials("u", "p")


async def test_token_username_means_identity_token(tmp_path: Path, make_helper: MakeHelper) -> None:
    make_helper("acr", {"x.azurecr.io": ("<token>", "refresh-token")})
    config = write_config(tmp_path / "config.json", {"credHelpers": {"x.azurecr.io": "acr"}})
    creds = await Keychain(config_path=config).resolve("x.azurecr.io")
    assert creds == Credentials(identity_token="refresh-token")


async def test_creds_store_fallback(
    tmp_path: Path, make_helper: MakeHelper, helper_dir: Path
) -> None:
    make_helper("desktop", {"ghcr.io": ("bob", SECRET)})
    config = write_config(
        tmp_path / "config.json",
        {"auths": {"quay.io": {"auth": b64("q:p")}}, "credsStore": "desktop"},
    )
    keychain = Keychain(config_path=config)
    assert await keychain.resolve("ghcr.io") == Credentials("bob", SECRET)
    assert await keychain.resolve("quay.io") == Credentials("q", "p")  # auths first
    assert (await keychain.resolve("other.example.com")).anonymous  # not found
    assert calls(helper_dir, "desktop") == ["get|ghcr.io", "get|other.example.com"]


async def test_docker_desktop_layout(tmp_path: Path, make_helper: MakeHelper) -> None:
    # Docker Desktop leaves an empty auths entry and keeps the secret in credsStore.
    make_helper("desktop", {DOCKER_HUB_SERVER: ("bob", SECRET)})
    config = write_config(
        tmp_path / "config.json",
        {"auths": {DOCKER_HUB_SERVER: {}}, "credsStore": "desktop"},
    )
    assert await Keychain(config_path=config).resolve("docker.io") == Credentials("bob", SECRET)


async def test_shell_script_helper(tmp_path: Path, helper_dir: Path) -> None:
    helper = helper_dir / "docker-credential-sh"
    helper.write_text(
        "#!/bin/sh\n"
        '[ "$1" = get ] || exit 2\n'
        'read -r server || [ -n "$server" ] || exit 3\n'
        'printf \'{"ServerURL":"%s","Username":"shuser","Secret":"shpass"}\\n\' "$server"\n'
    )
    helper.chmod(0o755)
    config = write_config(tmp_path / "config.json", {"credsStore": "sh"})
    creds = await Keychain(config_path=config).resolve("ghcr.io")
    assert creds == Credentials("shuser", "shpass")


async def test_helper_silent_failure_is_anonymous(tmp_path: Path, make_helper: MakeHelper) -> None:
    make_helper("quiet", script="sys.exit(1)\n")
    config = write_config(tmp_path / "config.json", {"credsStore": "quiet"})
    assert (await Keychain(config_path=config).resolve("ghcr.io")).anonymous


async def test_helper_not_found_on_stderr_is_anonymous(
    tmp_path: Path, make_helper: MakeHelper
) -> None:
    make_helper("err", script="sys.stderr.write('Credentials not found\\n'); sys.exit(1)\n")
    config = write_config(tmp_path / "config.json", {"credsStore": "err"})
    assert (await Keychain(config_path=config).resolve("ghcr.io")).anonymous


async def test_missing_helper(tmp_path: Path, helper_dir: Path) -> None:
    config = write_config(tmp_path / "config.json", {"credHelpers": {"ghcr.io": "nosuch"}})
    with pytest.raises(AuthError, match="docker-credential-nosuch") as info:
        await Keychain(config_path=config).resolve("ghcr.io")
    assert "ghcr.io" in str(info.value)
    assert "not installed or not on PATH" in str(info.value)


async def test_garbage_output(tmp_path: Path, make_helper: MakeHelper) -> None:
    make_helper("junk", script=f"print('Username=bob Secret={SECRET}')\n")
    config = write_config(tmp_path / "config.json", {"credsStore": "junk"})
    with pytest.raises(AuthError, match="docker-credential-junk") as info:
        await Keychain(config_path=config).resolve("ghcr.io")
    assert "ghcr.io" in str(info.value)
    assert "not JSON" in str(info.value)
    assert SECRET not in str(info.value)


@pytest.mark.parametrize(
    ("output", "reason"),
    [
        ("[1, 2]", "not a JSON object"),
        ('{"Username": "bob", "Secret": 12345}', "not a string"),
    ],
)
async def test_malformed_json_answer(
    tmp_path: Path, make_helper: MakeHelper, output: str, reason: str
) -> None:
    make_helper("odd", script=f"print({output!r})\n")
    config = write_config(tmp_path / "config.json", {"credsStore": "odd"})
    with pytest.raises(AuthError, match=reason):
        await Keychain(config_path=config).resolve("ghcr.io")


async def test_helper_failure_names_helper_and_host(
    tmp_path: Path, make_helper: MakeHelper
) -> None:
    make_helper("locked", script="print('error: the keychain is locked'); sys.exit(1)\n")
    config = write_config(tmp_path / "config.json", {"credsStore": "locked"})
    with pytest.raises(AuthError) as info:
        await Keychain(config_path=config).resolve("ghcr.io")
    message = str(info.value)
    assert "docker-credential-locked" in message
    assert "ghcr.io" in message
    assert "exit status 1" in message
    assert "the keychain is locked" in message


async def test_helper_failure_withholds_output_that_may_hold_a_secret(
    tmp_path: Path, make_helper: MakeHelper
) -> None:
    script = f"print(json.dumps({{'Username': 'bob', 'Secret': {SECRET!r}}})); sys.exit(2)\n"
    make_helper("leaky", script=script)
    config = write_config(tmp_path / "config.json", {"credsStore": "leaky"})
    with pytest.raises(AuthError, match="withheld") as info:
        await Keychain(config_path=config).resolve("ghcr.io")
    assert SECRET not in str(info.value)


async def test_helper_timeout(tmp_path: Path, make_helper: MakeHelper) -> None:
    make_helper("slow", script="import time; time.sleep(30)\n")
    config = write_config(tmp_path / "config.json", {"credsStore": "slow"})
    keychain = Keychain(config_path=config, helper_timeout=0.5)
    with pytest.raises(AuthError, match=r"docker-credential-slow did not answer for ghcr.io"):
        await keychain.resolve("ghcr.io")


async def test_cancelled_resolve_leaves_no_helper_behind(
    tmp_path: Path, make_helper: MakeHelper
) -> None:
    pid_file = tmp_path / "helper.pid"
    make_helper(
        "hang",
        script=f"import os, time\nopen({str(pid_file)!r}, 'w').write(str(os.getpid()))\n"
        "time.sleep(30)\n",
    )
    config = write_config(tmp_path / "config.json", {"credsStore": "hang"})
    task = asyncio.create_task(Keychain(config_path=config).resolve("ghcr.io"))
    for _ in range(200):
        if pid_file.exists() and pid_file.read_text():
            break
        await asyncio.sleep(0.025)
    pid = int(pid_file.read_text())
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    for _ in range(200):
        if process_gone(pid):
            break
        await asyncio.sleep(0.025)
    else:
        pytest.fail(f"helper {pid} still runs after the resolve was cancelled")


async def test_helper_not_executable(tmp_path: Path, helper_dir: Path) -> None:
    (helper_dir / "docker-credential-noexec").write_text("#!/bin/sh\n")
    config = write_config(tmp_path / "config.json", {"credsStore": "noexec"})
    with pytest.raises(AuthError, match=r"docker-credential-noexec.*ghcr\.io"):
        await Keychain(config_path=config).resolve("ghcr.io")


@pytest.mark.parametrize("name", ["../../bin/sh", "a b", 7])
def test_bad_helper_name(tmp_path: Path, name: object) -> None:
    config = write_config(tmp_path / "config.json", {"credHelpers": {"ghcr.io": name}})
    with pytest.raises(ConfigError, match="credential helper name"):
        Keychain(config_path=config)


# --------------------------------------------------------------------------- caching


async def test_results_are_cached_per_host(
    tmp_path: Path, make_helper: MakeHelper, helper_dir: Path
) -> None:
    make_helper("store", {DOCKER_HUB_SERVER: ("bob", "pw")})
    config = write_config(tmp_path / "config.json", {"credsStore": "store"})
    keychain = Keychain(config_path=config)
    results = await asyncio.gather(
        *(keychain.resolve(name) for name in [*HUB_NAMES, *HUB_NAMES, "ghcr.io", "ghcr.io"])
    )
    hub = 2 * len(HUB_NAMES)
    assert results[:hub] == [Credentials("bob", "pw")] * hub
    assert results[hub].anonymous
    assert results[hub + 1].anonymous
    assert sorted(calls(helper_dir, "store")) == sorted([f"get|{DOCKER_HUB_SERVER}", "get|ghcr.io"])
    await keychain.resolve("docker.io")
    assert len(calls(helper_dir, "store")) == 2
    # Another keychain asks again.
    await Keychain(config_path=config).resolve("docker.io")
    assert len(calls(helper_dir, "store")) == 3


async def test_errors_are_not_cached(
    tmp_path: Path, helper_dir: Path, make_helper: MakeHelper
) -> None:
    config = write_config(tmp_path / "config.json", {"credsStore": "later"})
    keychain = Keychain(config_path=config)
    with pytest.raises(AuthError):
        await keychain.resolve("ghcr.io")
    make_helper("later", {"ghcr.io": ("u", "p")})
    assert await keychain.resolve("ghcr.io") == Credentials("u", "p")


# --------------------------------------------------------------------------- overrides


async def test_overrides_win(tmp_path: Path, make_helper: MakeHelper, helper_dir: Path) -> None:
    make_helper("store", {"ghcr.io": ("helper", "pw")})
    config = write_config(
        tmp_path / "config.json",
        {
            "auths": {DOCKER_HUB_SERVER: {"auth": b64("file:pw")}},
            "credHelpers": {"ghcr.io": "store"},
        },
    )
    keychain = Keychain(
        config_path=config,
        overrides={
            "https://ghcr.io/": Credentials(registry_token="flag-token"),
            "index.docker.io": Credentials("flag", "pw"),
            "quay.io": Credentials(),
        },
    )
    assert await keychain.resolve("ghcr.io") == Credentials(registry_token="flag-token")
    assert await keychain.resolve("docker.io") == Credentials("flag", "pw")
    assert (await keychain.resolve("quay.io")).anonymous
    assert calls(helper_dir, "store") == []


# --------------------------------------------------------------------------- which files


async def test_default_is_home_docker_config(clean_env: Path) -> None:
    write_config(
        clean_env / ".docker" / "config.json", {"auths": {"ghcr.io": {"auth": b64("h:p")}}}
    )
    keychain = Keychain()
    assert keychain.paths == [clean_env / ".docker" / "config.json"]
    assert await keychain.resolve("ghcr.io") == Credentials("h", "p")


async def test_docker_config_env(
    tmp_path: Path, clean_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_config(
        clean_env / ".docker" / "config.json", {"auths": {"ghcr.io": {"auth": b64("h:p")}}}
    )
    write_config(tmp_path / "dc" / "config.json", {"auths": {"ghcr.io": {"auth": b64("d:p")}}})
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path / "dc"))
    keychain = Keychain()
    assert keychain.paths == [tmp_path / "dc" / "config.json"]  # ~/.docker is not read
    assert await keychain.resolve("ghcr.io") == Credentials("d", "p")


async def test_registry_auth_file_env(
    tmp_path: Path, clean_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_config(
        clean_env / ".docker" / "config.json",
        {"auths": {"ghcr.io": {"auth": b64("docker:p")}, "quay.io": {"auth": b64("dq:p")}}},
    )
    auth = write_config(tmp_path / "auth.json", {"auths": {"ghcr.io": {"auth": b64("podman:p")}}})
    monkeypatch.setenv("REGISTRY_AUTH_FILE", str(auth))
    keychain = Keychain()
    assert keychain.paths == [auth, clean_env / ".docker" / "config.json"]
    assert await keychain.resolve("ghcr.io") == Credentials("podman", "p")
    assert await keychain.resolve("quay.io") == Credentials("dq", "p")  # falls back to docker's


async def test_registry_auth_file_missing_is_skipped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("REGISTRY_AUTH_FILE", str(tmp_path / "not-yet.json"))
    keychain = Keychain()
    assert keychain.paths == []
    assert (await keychain.resolve("ghcr.io")).anonymous


async def test_xdg_auth_files_come_after_docker(
    tmp_path: Path, clean_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    docker = write_config(
        clean_env / ".docker" / "config.json", {"auths": {"ghcr.io": {"auth": b64("docker:p")}}}
    )
    runtime = write_config(
        tmp_path / "run" / "containers" / "auth.json",
        {"auths": {"ghcr.io": {"auth": b64("run:p")}, "quay.io": {"auth": b64("run:q")}}},
    )
    config_home = write_config(
        tmp_path / "cfg" / "containers" / "auth.json",
        {"auths": {"quay.io": {"auth": b64("cfg:q")}, "gcr.io": {"auth": b64("cfg:g")}}},
    )
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path / "run"))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "cfg"))
    keychain = Keychain()
    assert keychain.paths == [docker, runtime, config_home]
    assert await keychain.resolve("ghcr.io") == Credentials("docker", "p")
    assert await keychain.resolve("quay.io") == Credentials("run", "q")
    assert await keychain.resolve("gcr.io") == Credentials("cfg", "g")


async def test_default_xdg_config_home(clean_env: Path) -> None:
    path = write_config(
        clean_env / ".config" / "containers" / "auth.json",
        {"auths": {"ghcr.io": {"auth": b64("c:p")}}},
    )
    keychain = Keychain()
    assert keychain.paths == [path]
    assert await keychain.resolve("ghcr.io") == Credentials("c", "p")


async def test_not_found_in_one_file_goes_on_to_the_next(
    tmp_path: Path, clean_env: Path, make_helper: MakeHelper, monkeypatch: pytest.MonkeyPatch
) -> None:
    make_helper("desktop", {})
    write_config(clean_env / ".docker" / "config.json", {"credsStore": "desktop"})
    write_config(
        tmp_path / "run" / "containers" / "auth.json", {"auths": {"ghcr.io": {"auth": b64("r:p")}}}
    )
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path / "run"))
    assert await Keychain().resolve("ghcr.io") == Credentials("r", "p")


async def test_explicit_config_path_alone(
    tmp_path: Path, clean_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_config(
        clean_env / ".docker" / "config.json", {"auths": {"quay.io": {"auth": b64("h:p")}}}
    )
    auth = write_config(tmp_path / "auth.json", {"auths": {"ghcr.io": {"auth": b64("e:p")}}})
    monkeypatch.setenv("REGISTRY_AUTH_FILE", str(auth))
    keychain = Keychain(config_path=str(auth))
    assert keychain.paths == [auth]
    assert await keychain.resolve("ghcr.io") == Credentials("e", "p")
    assert (await keychain.resolve("quay.io")).anonymous


def test_explicit_config_path_must_exist(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist") as info:
        Keychain(config_path=tmp_path / "missing.json")
    assert "missing.json" in str(info.value)


async def test_config_path_may_be_a_directory(tmp_path: Path) -> None:
    write_config(tmp_path / "dc" / "config.json", {"auths": {"ghcr.io": {"auth": b64("d:p")}}})
    keychain = Keychain(config_path=tmp_path / "dc")
    assert await keychain.resolve("ghcr.io") == Credentials("d", "p")


async def test_no_files_at_all_is_anonymous() -> None:
    keychain = Keychain()
    assert keychain.paths == []
    assert await keychain.resolve("docker.io") == Credentials()


# --------------------------------------------------------------------------- malformed files


def test_malformed_json(tmp_path: Path) -> None:
    config = tmp_path / "config.json"
    config.write_text('{\n  "auths": {\n    "ghcr.io": {"auth": "' + b64(SECRET) + '"},,\n  }\n}\n')
    with pytest.raises(ConfigError) as info:
        Keychain(config_path=config)
    message = str(info.value)
    assert str(config) in message
    assert "line 3, column" in message
    assert b64(SECRET) not in message


def test_malformed_default_file(clean_env: Path) -> None:
    path = clean_env / ".docker" / "config.json"
    path.parent.mkdir()
    path.write_text('{"auths": ')
    with pytest.raises(ConfigError, match=r"config\.json is not valid JSON.*line 1, column 11"):
        Keychain()


@pytest.mark.parametrize(
    ("data", "match"),
    [
        ("[]", "must hold a JSON object"),
        ('{"auths": []}', "'auths' must be an object"),
        ('{"auths": {"ghcr.io": "x"}}', "auths entry 'ghcr.io' must be an object"),
        ('{"credHelpers": ["ecr"]}', "'credHelpers' must be an object"),
        ('{"credsStore": {"x": 1}}', "'credsStore' must be a credential helper name"),
    ],
)
def test_wrong_shapes(tmp_path: Path, data: str, match: str) -> None:
    config = tmp_path / "config.json"
    config.write_text(data)
    with pytest.raises(ConfigError, match=match):
        Keychain(config_path=config)


@pytest.mark.parametrize("text", ["", "  \n", '\ufeff{"auths": {}}', '{"auths": null}'])
async def test_empty_files_are_accepted(tmp_path: Path, text: str) -> None:
    config = tmp_path / "config.json"
    config.write_text(text, encoding="utf-8")
    assert (await Keychain(config_path=config).resolve("ghcr.io")).anonymous


def test_unreadable_file(tmp_path: Path) -> None:
    config = tmp_path / "config.json"
    config.write_bytes(b'{"auths": {"\xff": {}}}')
    with pytest.raises(ConfigError, match="not UTF-8"):
        Keychain(config_path=config)
