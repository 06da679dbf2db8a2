"""The Containerfile, built with podman from a Debian base made on the spot (no image can be
pulled here), pushed with ocimirror into a local registry, pulled back by podman, and run:
`serve` mirrors a `POST /`, `proxy` serves a pull through its cache, skopeo judges both.

The build is offline (`--network none`): the dependencies come as wheels made on the host
(see ocimirror.testkit.containerimage). The base tarball and the wheels are cached in
~/.cache/ocimirror-tests, so a second run costs the image build (about a minute) only.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from ocimirror.testkit.command import run_ocimirror
from ocimirror.testkit.containerimage import (
    RUN_FLAGS,
    Podman,
    build_context,
    cache_dir,
    debian_python_rootfs,
    host_wheels,
)
from ocimirror.testkit.images import make_image
from ocimirror.testkit.polling import wait_for
from ocimirror.testkit.proxy import call
from ocimirror.testkit.registry import LocalRegistry, free_port
from ocimirror.testkit.seeding import seed_sync
from ocimirror.testkit.skopeo import Skopeo

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
BASE = "localhost/debian-python:test"
LOCAL = "localhost/ocimirror:test"


@dataclass
class Built:
    podman: Podman
    #: The image as podman built it (docker format: it keeps the HEALTHCHECK).
    image: str
    #: The image saved as an OCI layout by podman: `oci:DIR:test`.
    layout: str
    size: int


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Built]:
    for tool in ("podman", "mmdebstrap", "runc"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} is not installed (scripts/bootstrap.sh installs it)")
    cache = cache_dir()
    rootfs = debian_python_rootfs(cache)
    wheels = host_wheels(cache, ROOT)
    podman = Podman()
    try:
        podman.import_rootfs(rootfs, BASE)
        why = podman.can_run(BASE)
        if why is not None:
            pytest.skip(f"podman cannot run containers on this machine: {why}")
        context = build_context(ROOT, wheels, tmp_path_factory.mktemp("context"))
        podman.run(
            "build",
            "--format",
            "docker",
            "--network",
            "none",
            *RUN_FLAGS,
            "--build-arg",
            f"BASE={BASE}",
            "--build-arg",
            "PIP_ARGS=--no-index --find-links /src/wheels",
            "--tag",
            LOCAL,
            "--file",
            str(context / "Containerfile"),
            str(context),
            timeout=900,
        )
        layout = tmp_path_factory.mktemp("layout") / "oci"
        podman.run("push", LOCAL, f"oci:{layout}:test")
        size = int(podman.run("image", "inspect", "--format", "{{.Size}}", LOCAL).stdout)
        yield Built(podman, LOCAL, f"oci:{layout}:test", size)
    finally:
        podman.close()


def _inspect(built: Built) -> dict[str, object]:
    out = built.podman.run("image", "inspect", "--format", "{{json .Config}}", built.image)
    config: dict[str, object] = json.loads(out.stdout)
    return config


def test_image_runs_as_non_root_with_ocimirror_entrypoint_and_data_volume(built: Built) -> None:
    config = _inspect(built)
    assert config["User"] == "10001:10001"
    assert config["Entrypoint"] == ["ocimirror"]
    assert config["WorkingDir"] == "/data"
    assert "/data" in config["Volumes"]  # type: ignore[operator]
    out = built.podman.run(
        "run", "--rm", *RUN_FLAGS, "--network", "none", "--no-healthcheck", built.image, "version"
    )
    assert out.stdout.startswith("ocimirror ")
    ids = built.podman.run(
        "run",
        "--rm",
        *RUN_FLAGS,
        "--network",
        "none",
        "--no-healthcheck",
        "--entrypoint",
        "sh",
        built.image,
        "-c",
        "id -u; id -g; stat -c %u /data; touch /data/w && echo writable; echo $HOME; ls /opt/ocimirror/bin",
    ).stdout.split()
    assert ids[:5] == ["10001", "10001", "10001", "writable", "/data"]
    # The runtime stage carries the venv only: no pip, no build tools.
    assert "pip" not in ids
    # Small: the Debian test base is about 180 MB; ocimirror's venv must stay under 150 MB.
    assert built.size < 350 * 1024 * 1024, built.size


def test_healthcheck_reports_a_running_serve_healthy(built: Built) -> None:
    out = built.podman.run("image", "inspect", "--format", "{{json .HealthCheck}}", built.image)
    assert "/healthz" in " ".join(json.loads(out.stdout)["Test"])
    port = free_port()
    name = f"ocim-hc-{port}"
    built.podman.run(
        "run",
        "--detach",
        "--name",
        name,
        *RUN_FLAGS,
        "--network",
        "host",
        "--env",
        f"PORT={port}",
        built.image,
        "serve",
    )
    try:

        def healthy() -> bool:
            return built.podman.run("healthcheck", "run", name, check=False).returncode == 0

        wait_for(healthy, "the image's HEALTHCHECK to pass", timeout=60, every=0.5)
    finally:
        built.podman.run("rm", "--force", "--time", "2", name, check=False)


def _start(built: Built, image: str, name: str, *args: str, env: dict[str, str]) -> None:
    flags = [f"--env={k}={v}" for k, v in env.items()]
    built.podman.run(
        "run",
        "--detach",
        "--name",
        name,
        *RUN_FLAGS,
        "--network",
        "host",
        "--no-healthcheck",
        *flags,
        image,
        *args,
    )


def _wait_healthy(built: Built, name: str, port: int) -> None:
    def up() -> bool:
        state = built.podman.run("inspect", "--format", "{{.State.Running}}", name, check=False)
        if state.stdout.strip() != "true":
            logs = built.podman.run("logs", name, check=False)
            raise AssertionError(f"{name} stopped:\n{logs.stdout}\n{logs.stderr}")
        try:
            return call(port, "GET", "/healthz").status == 200
        except OSError:
            return False

    wait_for(up, f"{name} to answer /healthz", timeout=60, every=0.2)


def test_image_pushed_with_ocimirror_runs_serve_and_proxy(
    built: Built,
    registry_factory: Callable[..., LocalRegistry],
    skopeo: Skopeo,
) -> None:
    make = registry_factory
    registry: LocalRegistry = make("images")  # where ocimirror pushes its own image
    upstream: LocalRegistry = make("upstream")  # what serve and proxy copy from
    target: LocalRegistry = make("target")  # where serve mirrors to
    app = make_image(layers=2, layer_size=64 * 1024, seed="container-app")
    seed_sync(upstream, "team/app", [("1", app)])

    # ocimirror pushes the image podman saved; podman pulls it back and runs that copy.
    pushed = run_ocimirror("copy", built.layout, registry.ref("ocimirror:test"))
    assert pushed.returncode == 0, pushed.stderr
    remote = f"{registry.host}/ocimirror:test"
    built.podman.run(
        "pull", "--tls-verify=false", "--signature-policy", str(built.podman.policy), remote
    )
    layout_manifest = skopeo.manifest(built.layout)
    assert skopeo.manifest(registry.ref("ocimirror:test"), registry=registry) == layout_manifest

    # serve: the Cloud Run API, one entry that works and one whose source does not exist.
    serve_port = free_port()
    allowed = f"{upstream.host},{target.host}"
    _start(
        built,
        remote,
        f"ocim-serve-{serve_port}",
        "serve",
        env={"PORT": str(serve_port), "OCIMIRROR_ALLOWED_REGISTRIES": allowed},
    )
    try:
        _wait_healthy(built, f"ocim-serve-{serve_port}", serve_port)
        assert call(serve_port, "GET", "/readyz").status == 200
        body = {
            "mirrors": [
                {"src": f"{upstream.host}/team/app:1", "dst": f"{target.host}/mirrored/app:1"},
                {"src": f"{upstream.host}/team/none:1", "dst": f"{target.host}/mirrored/none:1"},
            ]
        }
        answer = call(
            serve_port,
            "POST",
            "/",
            headers={"Content-Type": "application/json"},
            body=json.dumps(body).encode(),
        )
        assert answer.status == 200
        errors = answer.json()["errors"]
        assert len(errors) == 1
        assert "team/none" in json.dumps(errors)
        got = skopeo.manifest(target.ref("mirrored/app:1"), registry=target)
        assert got == app.manifest.raw
    finally:
        built.podman.run("rm", "--force", "--time", "5", f"ocim-serve-{serve_port}", check=False)

    # proxy: serverless-registry-proxy's environment, a cache in /data; skopeo pulls twice,
    # the second time with the upstream stopped: served from the cache.
    proxy_port = free_port()
    name = f"ocim-proxy-{proxy_port}"
    _start(
        built,
        remote,
        name,
        "proxy",
        "--cache",
        "/data/cache",
        env={"PORT": str(proxy_port), "REGISTRY_HOST": upstream.host},
    )
    try:
        _wait_healthy(built, name, proxy_port)
        through = f"docker://127.0.0.1:{proxy_port}/team/app:1"
        first = skopeo.run("inspect", "--raw", "--tls-verify=false", through).stdout
        assert first.encode() == app.manifest.raw
        out = skopeo.workdir / "pulled"
        skopeo.run("copy", "--src-tls-verify=false", through, f"oci:{out}:1")
        upstream.stop()
        again = skopeo.workdir / "again"
        skopeo.run("copy", "--src-tls-verify=false", through, f"oci:{again}:1")
        cached = built.podman.run("exec", name, "find", "/data/cache", "-type", "f").stdout
        for blob in app.all_blobs():
            assert blob.digest.split(":")[1] in cached
    finally:
        built.podman.run("rm", "--force", "--time", "5", name, check=False)
