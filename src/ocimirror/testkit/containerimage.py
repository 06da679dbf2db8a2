"""Build and run ocimirror's container image with podman, offline (tests/test_container_image.py).

No base image can be pulled on the test machines, so `debian_python_rootfs()` makes one
from Debian's packages with mmdebstrap (python3, python3-venv and ca-certificates: what the
Containerfile needs of its BASE), from the apt mirror the host uses, cached as a tarball
keyed by what went into it. The build runs with `--network none`: `host_wheels()` fetches
ocimirror's dependencies and hatchling as wheels with the host's pip (cached by
pyproject.toml's hash), `build_context()` puts them in `wheels/` beside the sources, and the
build passes `PIP_ARGS="--no-index --find-links /src/wheels"`.

`Podman` runs podman as root with private storage under a short temporary directory (podman
refuses a run root over 50 characters), never touching the host's images and containers.
On these machines crun refuses the hybrid cgroup layout (cgroup v1 controllers beside a
cgroup v2 mount that has a controller) and setting RLIMIT_NOFILE/RLIMIT_NPROC to the
host's values is refused, so containers run with runc and lower ulimits (`RUN_FLAGS`).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path

#: The Debian suite of the test base: its python3 must be the host's minor version (3.11),
#: as the wheels come from the host.
DEBIAN_SUITE = "bookworm"
BASE_PACKAGES = ("python3", "python3-venv", "ca-certificates")
#: What the base leaves out (documentation, manuals, translations): a smaller image.
_EXCLUDES = ("/usr/share/doc/*", "/usr/share/man/*", "/usr/share/locale/*", "/usr/share/info/*")
#: The extras the test image installs (the Containerfile's EXTRAS default).
EXTRAS = "postgres,cloud"
#: Flags every `podman run` and `podman build` needs here (see the module docstring).
RUN_FLAGS = ("--ulimit", "nofile=4096:4096", "--ulimit", "nproc=4096:4096")
DEFAULT_MIRROR = "http://deb.debian.org/debian"


def cache_dir() -> Path:
    """Where the base tarball and wheels are kept between runs."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    path = Path(base) / "ocimirror-tests"
    path.mkdir(parents=True, exist_ok=True)
    return path


def debian_mirror(apt_dir: Path = Path("/etc/apt")) -> str:
    """The host's Debian mirror (the first `.../debian` URI in its apt sources)."""
    files = [apt_dir / "sources.list", *sorted((apt_dir / "sources.list.d").glob("*"))]
    for f in files:
        if not f.is_file():
            continue
        for word in f.read_text(errors="replace").split():
            if word.startswith(("http://", "https://")) and word.rstrip("/").endswith("/debian"):
                return word.rstrip("/")
    return DEFAULT_MIRROR


def _key(*parts: object) -> str:
    return hashlib.sha256(json.dumps(parts, default=str).encode()).hexdigest()[:16]


def debian_python_rootfs(cache: Path, mirror: str | None = None) -> Path:
    """A tarball of a minimal Debian with python3 (mmdebstrap), made once and cached."""
    mirror = mirror or debian_mirror()
    key = _key(DEBIAN_SUITE, BASE_PACKAGES, _EXCLUDES, mirror, "minbase")
    path = cache / f"debian-python-{DEBIAN_SUITE}-{key}.tar"
    if path.exists():
        return path
    part = cache / f"debian-python-{DEBIAN_SUITE}-{key}.{os.getpid()}.part.tar"
    cmd = [
        "mmdebstrap",
        "--quiet",
        "--variant=minbase",
        f"--include={','.join(BASE_PACKAGES)}",
        *[f"--dpkgopt=path-exclude={p}" for p in _EXCLUDES],
        DEBIAN_SUITE,
        str(part),
        mirror,
    ]
    try:
        _run(cmd, timeout=900)
        part.replace(path)
    finally:
        part.unlink(missing_ok=True)
    return path


def host_wheels(cache: Path, root: Path) -> Path:
    """ocimirror's dependencies (with EXTRAS) and hatchling as wheels, cached by pyproject."""
    pyproject = (root / "pyproject.toml").read_bytes()
    key = _key(hashlib.sha256(pyproject).hexdigest(), EXTRAS, sys.version_info[:2])
    path = cache / f"wheels-{key}"
    if path.is_dir():
        return path
    part = Path(tempfile.mkdtemp(prefix="wheels-", dir=cache))
    try:
        pip = [sys.executable, "-m", "pip", "wheel", "-q", "--wheel-dir", str(part)]
        _run([*pip, f"{root}[{EXTRAS}]", "hatchling"], timeout=900)
        for own in part.glob("ocimirror-*.whl"):  # the image builds its own from the sources
            own.unlink()
        part.rename(path)
    finally:
        shutil.rmtree(part, ignore_errors=True)
    return path


def build_context(root: Path, wheels: Path, dest: Path) -> Path:
    """A build context: the Containerfile, what the wheel needs, and `wheels/`."""
    dest.mkdir(parents=True, exist_ok=True)
    for name in ("Containerfile", ".dockerignore", "pyproject.toml", "README.md"):
        shutil.copy2(root / name, dest / name)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    shutil.copytree(root / "src", dest / "src", ignore=ignore)
    shutil.copytree(wheels, dest / "wheels")
    return dest


def _run(
    cmd: Sequence[str],
    *,
    env: Mapping[str, str] | None = None,
    timeout: float = 300,
    check: bool = True,
) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        list(cmd),
        capture_output=True,
        text=True,
        env=None if env is None else dict(env),
        timeout=timeout,
        check=False,
    )
    if check and result.returncode != 0:
        raise RuntimeError(
            f"{shlex.join(cmd)} exited with {result.returncode}:\n"
            f"{result.stdout[-4000:]}\n{result.stderr[-4000:]}"
        )
    return result


class Podman:
    """podman as root with private storage, configuration and signature policy."""

    def __init__(self) -> None:
        self.top = Path(tempfile.mkdtemp(prefix="ocim-pm-", dir="/tmp"))
        self.conf = self.top / "storage.conf"
        self.conf.write_text(
            f'[storage]\ndriver = "overlay"\nrunroot = "{self.top / "run"}"\n'
            f'graphroot = "{self.top / "root"}"\n'
        )
        self.policy = self.top / "policy.json"
        self.policy.write_text('{"default": [{"type": "insecureAcceptAnything"}]}\n')
        self.registries = self.top / "registries.conf"
        self.registries.write_text("")
        self.auth = self.top / "auth.json"
        self.auth.write_text('{"auths": {}}\n')

    def env(self) -> dict[str, str]:
        """The environment podman runs with: only its private configuration."""
        env = {k: v for k, v in os.environ.items() if not k.startswith(("REGISTRY_", "DOCKER_"))}
        env.update(
            CONTAINERS_STORAGE_CONF=str(self.conf),
            CONTAINERS_REGISTRIES_CONF=str(self.registries),
            REGISTRY_AUTH_FILE=str(self.auth),
            TMPDIR=str(self.top),
        )
        return env

    def command(self, *args: str) -> list[str]:
        """The full command line for `podman ARGS`."""
        return [
            "podman",
            "--root",
            str(self.top / "root"),
            "--runroot",
            str(self.top / "run"),
            "--storage-driver",
            "overlay",
            "--runtime",
            "runc",
            "--cgroup-manager",
            "cgroupfs",
            "--events-backend",
            "file",
            *args,
        ]

    def run(
        self, *args: str, timeout: float = 300, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        """Run `podman ARGS`; raise with its output if `check` and it fails."""
        return _run(self.command(*args), env=self.env(), timeout=timeout, check=check)

    def import_rootfs(self, tarball: Path, name: str) -> str:
        """Import a root filesystem tarball as image `name`."""
        self.run("import", str(tarball), name)
        return name

    def can_run(self, image: str) -> str | None:
        """None if a container runs here; else why not (podman's own words)."""
        result = self.run(
            "run", "--rm", *RUN_FLAGS, "--network", "none", image, "true", check=False
        )
        if result.returncode == 0:
            return None
        return (result.stderr or result.stdout).strip()[-500:]

    def close(self) -> None:
        """Remove every container, volume and image, then the private directory.

        Not `podman system reset`: for root it also removes the host's networks.
        """
        with contextlib.suppress(Exception):
            self.run("rm", "--all", "--force", "--volumes", "--time", "2", check=False)
        with contextlib.suppress(Exception):
            self.run("rmi", "--all", "--force", check=False)
        # What the overlay driver may leave mounted under the private root, deepest first.
        with contextlib.suppress(OSError):
            mounts = [
                line.split()[1]
                for line in Path("/proc/self/mounts").read_text().splitlines()
                if line.split()[1].startswith(str(self.top))
            ]
            for target in sorted(mounts, key=len, reverse=True):
                subprocess.run(["umount", target], capture_output=True, check=False)
        shutil.rmtree(self.top, ignore_errors=True)
