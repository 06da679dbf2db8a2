"""Registry endpoints: a host name served at another URL, on every face.

A local registry is reached under a name that resolves nowhere (`registry.example.test`):
only the endpoint mapping can make these copies work, and credentials kept under that name
must reach it.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from ocimirror.client import HostOptions, RegistryClient, base_url
from ocimirror.errors import ConfigError
from ocimirror.settings.connection import parse_endpoints
from ocimirror.settings.loading import parse_config
from ocimirror.testkit.command import run_ocimirror as ocimirror
from ocimirror.testkit.images import make_image
from ocimirror.testkit.registry import LocalRegistry
from ocimirror.testkit.seeding import seed

FAKE = "registry.example.test"


def test_the_endpoint_takes_the_connection_and_the_host_keeps_the_name() -> None:
    opts = HostOptions(endpoint="http://127.0.0.1:5999/ignored/path")
    assert base_url(FAKE, opts) == "http://127.0.0.1:5999"
    client = RegistryClient(FAKE, options=opts)
    assert client.url("/v2/") == "http://127.0.0.1:5999/v2/"
    assert client.host == FAKE
    # Without an endpoint a non-loopback host is HTTPS at its own name.
    assert base_url(FAKE, HostOptions()) == f"https://{FAKE}"


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("registry.example.test", "HOST=URL"),
        ("registry.example.test=ftp://127.0.0.1:21", "not a ftp: URL"),
        ("registry.example.test=http://u:p@127.0.0.1:5000", "no user"),
        ("=http://127.0.0.1:5000", "HOST=URL"),
    ],
)
def test_bad_endpoints_are_named(value: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_endpoints([value])


def test_a_config_endpoint_is_checked() -> None:
    with pytest.raises(ConfigError, match="not a unix: URL"):
        parse_config(f"registries:\n  {FAKE}:\n    endpoint: unix:///run/x.sock\n")


def test_copy_reaches_a_host_through_its_endpoint_with_its_credentials(
    htpasswd_registry: LocalRegistry, registry: LocalRegistry, tmp_path: Path
) -> None:
    """`--registry-endpoint` moves the connection; the auth file's entry for the name is
    what logs in (a push without it is refused), and skopeo sees the image at the registry."""
    asyncio.run(seed(registry, "lib/app", [("1", make_image(layer_size=300, seed="ep"))]))
    authfile = tmp_path / "auth.json"
    authfile.write_text(
        json.dumps({"auths": {FAKE: {"username": "alice", "password": "wonderland"}}})
    )
    endpoint = f"{FAKE}=http://{htpasswd_registry.host}"
    out = ocimirror(
        "copy",
        "--authfile",
        str(authfile),
        "--registry-endpoint",
        endpoint,
        f"{registry.host}/lib/app:1",
        f"{FAKE}/mirror/app:1",
    )
    assert out.returncode == 0, out.stderr
    assert htpasswd_registry.tags("mirror/app") == ["1"]
    # The same mapping from the environment; without the auth file the push is refused.
    out = ocimirror(
        "copy",
        f"{registry.host}/lib/app:1",
        f"{FAKE}/mirror/other:1",
        env={"OCIMIRROR_REGISTRY_ENDPOINTS": endpoint, "DOCKER_CONFIG": str(tmp_path / "none")},
    )
    assert out.returncode == 1
    assert "401" in out.stderr or "unauthorized" in out.stderr.lower()


def test_sync_config_endpoint_and_env(
    registry: LocalRegistry, dst_registry: LocalRegistry, tmp_path: Path
) -> None:
    """`registries: {HOST: {endpoint}}` in a sync config, and the environment form."""
    asyncio.run(seed(registry, "lib/app", [("1", make_image(layer_size=200, seed="cfg"))]))
    cfg = tmp_path / "mirror.yaml"
    cfg.write_text(
        f"registries:\n  {FAKE}:\n    endpoint: http://{dst_registry.host}\n"
        f"mirrors:\n  - name: app\n    source: source.example.test/lib/app\n"
        f"    targets: [{FAKE}/mirror/app]\n"
    )
    out = ocimirror(
        "sync",
        "--no-state",
        "-c",
        str(cfg),
        env={"OCIMIRROR_REGISTRY_ENDPOINTS": f"source.example.test=http://{registry.host}"},
    )
    assert out.returncode == 0, out.stderr
    assert dst_registry.tags("mirror/app") == ["1"]
    # A malformed environment value is a usage error naming the variable.
    out = ocimirror("sync", "--no-state", "-c", str(cfg), env={"OCIMIRROR_REGISTRY_ENDPOINTS": "x"})
    assert out.returncode != 0
    assert "OCIMIRROR_REGISTRY_ENDPOINTS" in out.stderr
