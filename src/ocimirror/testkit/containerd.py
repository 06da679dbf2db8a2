"""A throwaway containerd daemon for tests: a real registry-mirror client (hosts.toml).

`LocalContainerd(directory)` writes a config that keeps containerd's root, state and
socket in `directory` (no CRI TCP service), starts `containerd --config` as a child and
waits until `ctr version` answers. `ctr(*args)` runs Debian's `ctr` against it; `fetch()`
fetches every platform of an image into the content store without unpacking it (no
snapshotter or mount is needed, so it runs where containers cannot), reading registry
hosts from a `hosts.toml` directory as containerd's CRI plugin does with `config_path`.
containerd runs as root, as it does everywhere.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import IO, Self

from .lifecycle import StartStop, terminate


class ContainerdError(RuntimeError):
    """containerd could not be started, or a `ctr` command failed."""


def hosts_toml(server: str, mirror: str) -> str:
    """A hosts.toml that pulls through `mirror` (pull and resolve), falling back to `server`."""
    return f'server = "{server}"\n\n[host."{mirror}"]\n  capabilities = ["pull", "resolve"]\n'


class LocalContainerd(StartStop):
    """containerd with its root, state and socket under one directory."""

    def __init__(self, directory: Path) -> None:
        """Prepare the directory and config; nothing runs until `start()`."""
        self.directory = Path(directory)
        # A unix socket path must stay under 108 bytes: a short directory of its own.
        self._socket_dir = Path(tempfile.mkdtemp(prefix="ctd-"))
        self.socket = self._socket_dir / "containerd.sock"
        self.config = self.directory / "config.toml"
        self.log = self.directory / "containerd.log"
        self._proc: subprocess.Popen[bytes] | None = None
        self._out: IO[bytes] | None = None

    def start(self) -> Self:
        """Start containerd and wait until it answers."""
        if shutil.which("containerd") is None or shutil.which("ctr") is None:
            raise ContainerdError("containerd is not installed (Debian's package containerd)")
        self.directory.mkdir(parents=True, exist_ok=True)
        self.config.write_text(
            "version = 2\n"
            f'root = "{self.directory / "root"}"\n'
            f'state = "{self.directory / "state"}"\n'
            f'[grpc]\n  address = "{self.socket}"\n'
            '[plugins."io.containerd.grpc.v1.cri"]\n  disable_tcp_service = true\n'
        )
        self._out = self.log.open("wb")
        self._proc = subprocess.Popen(
            ["containerd", "--config", str(self.config)], stdout=self._out, stderr=self._out
        )
        deadline = time.monotonic() + 30
        while True:
            if self._proc.poll() is not None:
                self.stop()
                raise ContainerdError(f"containerd exited: {self.log.read_text()[-2000:]}")
            if self.socket.exists() and self.ctr("version", check=False).returncode == 0:
                return self
            if time.monotonic() > deadline:
                self.stop()
                raise ContainerdError(f"containerd not ready: {self.log.read_text()[-2000:]}")
            time.sleep(0.05)

    def ctr(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """Run `ctr --address SOCKET ARGS`."""
        done = subprocess.run(
            ["ctr", "--address", str(self.socket), *args],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        if check and done.returncode != 0:
            raise ContainerdError(f"ctr {' '.join(args)}: {done.stderr.strip()[-2000:]}")
        return done

    def fetch(self, namespace: str, ref: str, hosts_dir: Path) -> subprocess.CompletedProcess[str]:
        """Fetch every platform of `ref` into `namespace`'s content store through hosts_dir."""
        return self.ctr(
            "--debug", "-n", namespace, "content", "fetch", "--all-platforms",
            "--hosts-dir", str(hosts_dir), ref,
        )  # fmt: skip

    def digests(self, namespace: str) -> set[str]:
        """Return the digests in `namespace`'s content store."""
        listed = self.ctr("-n", namespace, "content", "ls", "-q").stdout
        return {line.strip() for line in listed.splitlines() if line.strip()}

    def stop(self) -> None:
        """Stop containerd."""
        if self._proc is not None:
            terminate(self._proc, 15)
            self._proc = None
        if self._out is not None:
            self._out.close()
            self._out = None
        shutil.rmtree(self._socket_dir, ignore_errors=True)
