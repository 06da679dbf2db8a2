"""The shared settings layer: one keychain and one set of client options for every face."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest

from ocimirror.auth.credentials import Credentials
from ocimirror.client import HostOptions
from ocimirror.settings.connection import (
    keychain_for,
    keychain_from,
    static_credentials,
    tls_options,
)
from ocimirror.settings.loading import parse_config
from ocimirror.settings.registries import CredentialsConfig, Tls


def _auth_file(path: Path, host: str, user: str, password: str) -> Path:
    auth = base64.b64encode(f"{user}:{password}".encode()).decode()
    path.write_text(json.dumps({"auths": {host: {"auth": auth}}}))
    return path


@pytest.fixture(autouse=True)
def _no_home_auth(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Keep the user's own docker and podman auth files out of these keychains."""
    for name in ("REGISTRY_AUTH_FILE", "DOCKER_CONFIG", "XDG_RUNTIME_DIR", "XDG_CONFIG_HOME"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))


async def test_config_credentials_become_the_keychain(tmp_path: Path) -> None:
    authfile = _auth_file(tmp_path / "auth.json", "other.example", "carol", "from-file")
    config = parse_config(
        "registries:\n"
        "  a.example: {credentials: {username: alice, password: pw-a}}\n"
        "  b.example: {credentials: {token: tok-b}}\n"
        f"  c.example: {{credentials: {{docker_config: {authfile}}}}}\n",
        "m.yaml",
    )
    keychain = keychain_for(config)
    assert await keychain.resolve("a.example") == Credentials("alice", "pw-a")
    assert await keychain.resolve("b.example") == Credentials(registry_token="tok-b")
    # docker_config: PATH is the auth file for the hosts the config does not name.
    assert await keychain.resolve("other.example") == Credentials("carol", "from-file")
    assert (await keychain.resolve("nobody.example")).anonymous


async def test_an_authfile_alone_is_the_clis_keychain(tmp_path: Path) -> None:
    authfile = _auth_file(tmp_path / "auth.json", "ghcr.io", "dave", "pw")
    keychain = keychain_from({}, authfile=authfile)
    assert keychain.paths == [authfile]
    assert await keychain.resolve("ghcr.io") == Credentials("dave", "pw")


def test_only_values_are_static_credentials() -> None:
    assert static_credentials(CredentialsConfig(token="t")) == Credentials(registry_token="t")
    assert static_credentials(CredentialsConfig(username="u", password="p")) == Credentials(
        "u", "p"
    )
    assert static_credentials(CredentialsConfig(helper="ecr-login")) is None
    assert static_credentials(CredentialsConfig(docker_config=True)) is None


def test_tls_settings_become_client_options(tmp_path: Path) -> None:
    ca = tmp_path / "ca.pem"
    assert tls_options(Tls(verify=False, ca_file=ca, plain_http=True)) == HostOptions(
        tls_verify=False, ca_file=str(ca), plain_http=True
    )
    assert tls_options(Tls()) == HostOptions()
