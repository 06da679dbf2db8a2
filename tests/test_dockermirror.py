"""`ocimirror docker-mirror [-v] -d DEST IMAGE…`: area51 docker-mirror as its README runs it.

skopeo judges what the destination holds.
"""

from __future__ import annotations

import hashlib
import json

from ocimirror.testkit.command import run_ocimirror
from ocimirror.testkit.images import make_index
from ocimirror.testkit.registry import LocalRegistry
from ocimirror.testkit.seeding import seed
from ocimirror.testkit.skopeo import Skopeo


def _platforms(raw: bytes) -> list[str]:
    return sorted(f"{m['platform']['os']}/{m['platform']['architecture']}"
                  for m in json.loads(raw)["manifests"])  # fmt: skip


async def test_readme_form_with_prefix_keeps_every_platform_and_the_digest(
    src_registry: LocalRegistry, dst_registry: LocalRegistry, skopeo: Skopeo
) -> None:
    src, dst = src_registry, dst_registry
    mixed = make_index(("linux/amd64", "linux/arm64", "windows/amd64"), layer_size=300, seed="m")
    linux = make_index(("linux/amd64", "linux/arm64"), layer_size=300, seed="l")
    await seed(src, "library/hello-world", [("latest", mixed)])
    await seed(src, "area51/jenkins", [("latest", linux)])
    # docker-mirror -d docker.example.com/mirror hello-world area51/jenkins
    out = run_ocimirror(
        "docker-mirror", "-d", f"{dst.host}/mirror",
        f"{src.host}/library/hello-world", f"{src.host}/area51/jenkins",
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    got = skopeo.manifest(f"docker://{dst.host}/mirror/library/hello-world:latest", registry=dst)
    assert "sha256:" + hashlib.sha256(got).hexdigest() == mixed.digest  # every byte kept
    assert _platforms(got) == ["linux/amd64", "linux/arm64", "windows/amd64"]
    assert dst.tags("mirror/area51/jenkins") == ["latest"]

    # -v and --linux-only: docker-mirror's own behaviour, the Windows entry dropped...
    out = run_ocimirror(
        "docker-mirror", "-v", "--linux-only", "-d", f"{dst.host}/linux",
        f"{src.host}/library/hello-world", f"{src.host}/area51/jenkins",
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    got = skopeo.manifest(f"docker://{dst.host}/linux/library/hello-world:latest", registry=dst)
    assert _platforms(got) == ["linux/amd64", "linux/arm64"]
    # ...and an index with nothing to drop kept as it is, digest and all.
    got = skopeo.manifest(f"docker://{dst.host}/linux/area51/jenkins:latest", registry=dst)
    assert "sha256:" + hashlib.sha256(got).hexdigest() == linux.digest


def test_d_is_required_as_in_the_original() -> None:
    out = run_ocimirror("docker-mirror", "hello-world")
    assert out.returncode == 2
    assert "-d" in out.stderr
