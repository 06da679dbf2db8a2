"""containerd pulling through `ocimirror proxy` as its registry mirror (hosts.toml): one
proxy for two registries, told apart by containerd's `?ns=`, with and without the cache."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from ocimirror.testkit.containerd import LocalContainerd, hosts_toml
from ocimirror.testkit.images import SampleImage, make_image, make_index
from ocimirror.testkit.proxy import ProxyProcess
from ocimirror.testkit.registry import LocalRegistry
from ocimirror.testkit.seeding import seed
from test_proxy_pullthrough import api, metric

RegistryFactory = Callable[..., LocalRegistry]


@pytest.fixture
def containerd(tmp_path: Path) -> Iterator[LocalContainerd]:
    with LocalContainerd(tmp_path / "containerd") as daemon:
        yield daemon


def mirror_through(hosts_dir: Path, registry: LocalRegistry, proxy: ProxyProcess) -> None:
    """Make `proxy` the mirror of `registry` in a containerd hosts directory."""
    where = hosts_dir / registry.host
    where.mkdir(parents=True, exist_ok=True)
    (where / "hosts.toml").write_text(hosts_toml(f"http://{registry.host}", f"http://{proxy.host}"))


def digests_of(image: SampleImage) -> set[str]:
    return {b.digest for b in image.all_blobs()} | {m.digest for m in image.all_manifests()}


def test_containerd_pulls_two_registries_through_one_proxy_by_ns(
    registry_factory: RegistryFactory,
    start_proxy: Callable[..., ProxyProcess],
    containerd: LocalContainerd,
    tmp_path: Path,
) -> None:
    first, second = registry_factory("first"), registry_factory("second")
    index = make_index(["linux/amd64", "linux/arm64"], layer_size=20_000, seed="ctd-index")
    image = make_image(layers=2, layer_size=10_000, seed="ctd-image")
    asyncio.run(seed(first, "team/app", [("1", index)]))
    asyncio.run(seed(second, "team/app", [("1", image)]))  # the same name on both
    config = tmp_path / "proxy.yaml"
    config.write_text(
        f"upstreams:\n  - {{name: one, host: '{first.host}'}}\n"
        f"  - {{name: two, host: '{second.host}'}}\n"
    )
    proxy = start_proxy("--config", str(config), "--cache", str(tmp_path / "cache"))
    hosts = tmp_path / "certs.d"
    mirror_through(hosts, first, proxy)
    mirror_through(hosts, second, proxy)

    got = containerd.fetch("a", f"{first.host}/team/app:1", hosts)
    assert f"?ns={first.host.replace(':', '%3A')}" in got.stderr  # it went to the mirror
    containerd.fetch("a", f"{second.host}/team/app:1", hosts)
    assert digests_of(index) | digests_of(image) <= containerd.digests("a")
    # Each registry served its own image, through the proxy (no default upstream: only
    # ?ns= tells them apart, the path names no upstream).
    assert metric(proxy, "ocimirror_proxy_requests_total", upstream="one", kind="blob") >= 4
    assert metric(proxy, "ocimirror_proxy_requests_total", upstream="two", kind="blob") >= 3
    assert [r for r in api(first.requests()) if r.reference == image.digest] == []

    # Another namespace, the same images: served from the proxy's cache.
    marks = first.mark(), second.mark()
    containerd.fetch("b", f"{first.host}/team/app:1", hosts)
    containerd.fetch("b", f"{second.host}/team/app:1", hosts)
    assert digests_of(index) | digests_of(image) <= containerd.digests("b")
    for reg, mark in zip((first, second), marks, strict=True):
        assert [r for r in api(reg.requests(since=mark)) if r.method == "GET"] == []
