"""serverless-registry-proxy as its users run it: its environment and Go-style flags."""

from __future__ import annotations

import asyncio
import base64
import os
from collections.abc import Callable
from pathlib import Path

from ocimirror.testkit.command import Background
from ocimirror.testkit.images import make_image
from ocimirror.testkit.proxy import PROXY_ENV, ProxyProcess, call
from ocimirror.testkit.registry import LocalRegistry, free_port
from ocimirror.testkit.seeding import seed


def test_disable_browser_redirects_set_to_false_disables_them_as_in_the_original(
    registry: LocalRegistry, start_proxy: Callable[..., ProxyProcess]
) -> None:
    # The original tests `os.Getenv("DISABLE_BROWSER_REDIRECTS") == ""`: any value disables.
    for value in ("false", "0", "no"):
        proxy = start_proxy(
            "--registry-host", registry.host, env={"DISABLE_BROWSER_REDIRECTS": value}
        )
        assert proxy.call("GET", "/team/app").status == 404, value
    unset = start_proxy("--registry-host", registry.host, env={"DISABLE_BROWSER_REDIRECTS": ""})
    assert unset.call("GET", "/team/app").status == 307


def test_go_style_flags_as_its_readme_writes_them(registry: LocalRegistry, tmp_path: Path) -> None:
    asyncio.run(seed(registry, "team/app", [("1", make_image(seed="go"))]))
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k not in PROXY_ENV}
    env["PORT"] = "not-a-port"  # the flag wins over the environment
    proxy = Background(
        [
            "proxy",
            "--host",
            "127.0.0.1",
            f"-port={port}",
            f"-registeryHost={registry.host}",
            "-repoPrefix=team",
        ],
        tmp_path / "proxy.log",
        env,
    )
    try:
        proxy.wait_ready(lambda: call(port, "GET", "/healthz").status == 200, "the proxy")
        answer = call(port, "GET", "/v2/app/tags/list")
        assert answer.status == 200
        assert answer.json()["tags"] == ["1"]
    finally:
        proxy.stop()


def test_auth_header_is_sent_on_every_upstream_request(
    htpasswd_registry: LocalRegistry, start_proxy: Callable[..., ProxyProcess]
) -> None:
    registry = htpasswd_registry
    user, password = registry.creds or ("", "")
    image = make_image(seed="auth")
    asyncio.run(seed(registry, "app", [("1", image)]))
    header = "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()
    proxy = start_proxy("--registry-host", registry.host, env={"AUTH_HEADER": header})
    mark = registry.mark()
    accept = {"Accept": image.manifest.media_type}
    assert proxy.call("GET", "/v2/app/manifests/1", headers=accept).status == 200
    assert proxy.call("GET", f"/v2/app/blobs/{image.blobs[0].digest}").status == 200
    sent = registry.requests(since=mark)
    assert [r.kind for r in sent if r.kind in ("manifest", "blob")] == ["manifest", "blob"]
    # No request went without it: the registry never had to ask (no 401 at all).
    assert [str(r) for r in sent if r.status == 401] == []
