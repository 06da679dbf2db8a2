"""skopeo isolated from the host, to copy and inspect images the way a user's tool would.

`Skopeo` runs skopeo with a private auth file, policy and registries.conf, so the host's
Docker or containers configuration is never read; `flags()` gives the TLS and credential
flags a `LocalRegistry` (`registry`) needs (plain HTTP on 127.0.0.1 needs
`--tls-verify=false`). `run_skopeo()` runs it from a private directory removed at exit.
"""

from __future__ import annotations

import atexit
import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from .registry import LocalRegistry

#: Which side of a skopeo command a registry is on: "" (inspect, delete...), "src", "dest".
Role = Literal["", "src", "dest"]


class SkopeoError(subprocess.CalledProcessError):
    """skopeo failed; the message includes its stderr."""

    def __str__(self) -> str:
        """Show the command, exit status and stderr."""
        return f"{super().__str__()}\nstderr:\n{self.stderr}"


class Skopeo:
    """skopeo isolated from the host: a private auth file, policy and registries.conf."""

    def __init__(self, workdir: Path, *, binary: str = "skopeo", timeout: float = 120.0) -> None:
        """Prepare `workdir` for skopeo's configuration and temporary files."""
        self.workdir = workdir
        self.binary = binary
        self.timeout = timeout
        workdir.mkdir(parents=True, exist_ok=True)
        for sub in ("home", "tmp", "run", "docker"):
            (workdir / sub).mkdir(exist_ok=True)
        #: The only auth file skopeo reads and writes (`skopeo login` stores here).
        self.authfile = workdir / "auth.json"
        if not self.authfile.exists():
            self.authfile.write_text('{"auths": {}}\n')
        self.policy = workdir / "policy.json"
        self.policy.write_text('{"default": [{"type": "insecureAcceptAnything"}]}\n')
        self.registries_conf = workdir / "registries.conf"
        self.registries_conf.write_text("")

    def env(self) -> dict[str, str]:
        """Return the environment skopeo runs with."""
        env = {k: v for k, v in os.environ.items() if not k.startswith(("REGISTRY_", "DOCKER_"))}
        env.update(
            HOME=str(self.workdir / "home"),
            TMPDIR=str(self.workdir / "tmp"),
            XDG_RUNTIME_DIR=str(self.workdir / "run"),
            XDG_CONFIG_HOME=str(self.workdir / "home" / ".config"),
            DOCKER_CONFIG=str(self.workdir / "docker"),
            REGISTRY_AUTH_FILE=str(self.authfile),
            CONTAINERS_REGISTRIES_CONF=str(self.registries_conf),
        )
        return env

    def command(self, *args: str) -> list[str]:
        """Return the full command line for skopeo `args`."""
        return [
            self.binary,
            "--policy",
            str(self.policy),
            "--tmpdir",
            str(self.workdir / "tmp"),
            *args,
        ]

    def run(
        self, *args: str, check: bool = True, timeout: float | None = None
    ) -> subprocess.CompletedProcess[str]:
        """Run skopeo with `args` (output captured as text); raise `SkopeoError` if `check`."""
        cmd = self.command(*args)
        result = subprocess.run(
            cmd,
            capture_output=True,
            text=True,
            env=self.env(),
            timeout=timeout or self.timeout,
            check=False,
        )
        if check and result.returncode != 0:
            raise SkopeoError(result.returncode, cmd, result.stdout, result.stderr)
        return result

    @staticmethod
    def flags(registry: LocalRegistry, role: Role = "", *, creds: bool = True) -> list[str]:
        """Return the TLS and credential flags for `registry` (`--src-`/`--dest-` by role)."""
        prefix = f"--{role}-" if role else "--"
        flags = (
            [f"{prefix}cert-dir={registry.tls.cert_dir}"]
            if registry.tls
            else [f"{prefix}tls-verify=false"]
        )
        if creds and registry.creds is not None:
            user, password = registry.creds
            flags.append(f"{prefix}creds={user}:{password}")
        return flags

    def copy(
        self,
        src: str,
        dst: str,
        *,
        src_registry: LocalRegistry | None = None,
        dst_registry: LocalRegistry | None = None,
        creds: bool = True,
        args: Sequence[str] = (),
        check: bool = True,
    ) -> subprocess.CompletedProcess[str]:
        """`skopeo copy src dst` with the flags the registries need."""
        flags: list[str] = []
        if src_registry is not None:
            flags += self.flags(src_registry, "src", creds=creds)
        if dst_registry is not None:
            flags += self.flags(dst_registry, "dest", creds=creds)
        return self.run("copy", *flags, *args, src, dst, check=check)

    def inspect(
        self,
        ref: str,
        *,
        registry: LocalRegistry | None = None,
        creds: bool = True,
        args: Sequence[str] = (),
        check: bool = True,
    ) -> subprocess.CompletedProcess[str]:
        """`skopeo inspect ref` with the flags the registry needs."""
        flags = self.flags(registry, creds=creds) if registry is not None else []
        return self.run("inspect", *flags, *args, ref, check=check)

    def inspect_json(
        self, ref: str, *, registry: LocalRegistry | None = None, args: Sequence[str] = ()
    ) -> Any:
        """Return what `skopeo inspect` prints, parsed (`args=["--raw"]` for the manifest)."""
        return json.loads(self.inspect(ref, registry=registry, args=args).stdout)

    def manifest(
        self, ref: str, *, registry: LocalRegistry | None = None, creds: bool = True
    ) -> bytes:
        """Return the manifest bytes exactly as the registry serves them (`inspect --raw`)."""
        flags = self.flags(registry, creds=creds) if registry is not None else []
        cmd = self.command("inspect", "--raw", *flags, ref)
        result = subprocess.run(
            cmd, capture_output=True, env=self.env(), timeout=self.timeout, check=False
        )
        if result.returncode != 0:
            raise SkopeoError(result.returncode, cmd, result.stdout, result.stderr.decode())
        return result.stdout


_default_skopeo: Skopeo | None = None


def run_skopeo(
    *args: str, check: bool = True, timeout: float | None = None
) -> subprocess.CompletedProcess[str]:
    """Run skopeo isolated from the host's configuration (a private dir removed at exit)."""
    global _default_skopeo
    if _default_skopeo is None:
        workdir = Path(tempfile.mkdtemp(prefix="ocimirror-skopeo-"))
        atexit.register(shutil.rmtree, workdir, True)
        _default_skopeo = Skopeo(workdir)
    return _default_skopeo.run(*args, check=check, timeout=timeout)


__all__ = ["Role", "Skopeo", "SkopeoError", "run_skopeo"]
