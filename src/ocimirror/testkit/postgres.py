"""A throwaway PostgreSQL server on loopback, for tests of the state database.

`LocalPostgres` runs `initdb` into a fresh temporary directory (trust auth, UTF8, no
locale), then starts `postgres` as a subprocess listening only on 127.0.0.1 on a free
port, with its unix socket in that directory and `fsync` off (the data are thrown away).
`url` is `postgresql://postgres@127.0.0.1:PORT/postgres`. `stop()` shuts the server down
at once (immediate mode, as `pg_ctl stop -m immediate` does) and deletes the directory;
a later `start()` makes a new, empty cluster.

The binaries are looked for beside an `initdb` on PATH, then in
`/usr/lib/postgresql/*/bin` (where Debian puts them), newest version first; `bin_dir`
picks a directory instead. initdb and postgres refuse to run as root: as root, both run
as the `postgres` system user (made by Debian's `postgresql` package) through
`runuser -u postgres --`, and the temporary directory is handed to that user, so it is
made in the system temp dir (`TMPDIR`), which the user must be able to reach.
"""

from __future__ import annotations

import atexit
import contextlib
import glob
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import IO, Self

from .lifecycle import StartStop

#: Where Debian and Ubuntu install the server binaries, one directory per major version.
DEBIAN_BIN_GLOB = "/usr/lib/postgresql/*/bin"
#: The system user initdb and postgres run as when the tests run as root.
SERVER_USER = "postgres"
#: The superuser initdb creates, and the user of `url`.
SUPERUSER = "postgres"


class PostgresError(RuntimeError):
    """A local PostgreSQL server could not be set up, started or stopped."""


def _free_port() -> int:
    """Return a TCP port on 127.0.0.1 that is free right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _has_server(directory: Path) -> bool:
    """Return whether `directory` holds executable `initdb` and `postgres`."""
    return all(os.access(directory / name, os.X_OK) for name in ("initdb", "postgres"))


def _version_key(directory: Path) -> tuple[int, ...]:
    """Sort key for `/usr/lib/postgresql/<version>/bin`: the version as numbers."""
    return tuple(int(part) for part in re.findall(r"\d+", directory.parent.name))


def find_bin_dir() -> Path:
    """Return the directory holding `initdb` and `postgres`, or raise PostgresError."""
    candidates: list[Path] = []
    on_path = shutil.which("initdb")
    if on_path:
        candidates.append(Path(on_path).resolve().parent)
        candidates.append(Path(on_path).parent)
    debian = sorted((Path(p) for p in glob.glob(DEBIAN_BIN_GLOB)), key=_version_key, reverse=True)
    candidates.extend(debian)
    for directory in candidates:
        if _has_server(directory):
            return directory
    raise PostgresError(
        "PostgreSQL is not installed: no initdb and postgres on PATH or in "
        f"{DEBIAN_BIN_GLOB} (on Debian: apt-get install postgresql, or run "
        "scripts/bootstrap.sh)"
    )


_LIVE: dict[int, LocalPostgres] = {}


@atexit.register
def _stop_leftovers() -> None:
    for server in list(_LIVE.values()):
        with contextlib.suppress(Exception):
            server.stop()
    _LIVE.clear()


def _children(pid: int) -> list[int]:
    """The processes whose parent is `pid` (Linux's /proc)."""
    out = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError, IndexError, ValueError):
            stat = (entry / "stat").read_text()
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                out.append(int(entry.name))
    return out


def _alive(pid: int) -> bool:
    """Whether `pid` is a live process (a zombie counts as gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


class LocalPostgres(StartStop):
    """A PostgreSQL server on 127.0.0.1 with a fresh cluster in a temporary directory."""

    def __init__(
        self,
        *,
        port: int = 0,
        bin_dir: Path | None = None,
        start_timeout: float = 30.0,
        settings: dict[str, str] | None = None,
    ) -> None:
        """Prepare a server; nothing is created or run until `start()`."""
        self._port = port
        self._fixed_port = port != 0
        self._bin_dir = bin_dir
        self.start_timeout = start_timeout
        #: Extra server settings, passed as `-c name=value`.
        self.settings: dict[str, str] = dict(settings or {})
        self._directory: Path | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    # -- addresses -------------------------------------------------------------------------

    @property
    def port(self) -> int:
        """The TCP port (known once started)."""
        if not self._port or self._directory is None:
            raise PostgresError("the PostgreSQL server has not been started")
        return self._port

    @property
    def host(self) -> str:
        """`127.0.0.1:PORT`."""
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        """The database URL, `postgresql://postgres@127.0.0.1:PORT/postgres`."""
        return f"postgresql://{SUPERUSER}@{self.host}/postgres"

    @property
    def directory(self) -> Path:
        """The temporary directory: `data/`, the unix socket and `postgres.log`."""
        if self._directory is None:
            raise PostgresError("the PostgreSQL server has not been started")
        return self._directory

    @property
    def data_dir(self) -> Path:
        """The cluster's data directory."""
        return self.directory / "data"

    @property
    def log_path(self) -> Path:
        """The server's stdout and stderr."""
        return self.directory / "postgres.log"

    @property
    def bin_dir(self) -> Path:
        """The directory of the `initdb` and `postgres` binaries used."""
        if self._bin_dir is None:
            self._bin_dir = find_bin_dir()
        return self._bin_dir

    # -- lifecycle -------------------------------------------------------------------------

    @property
    def running(self) -> bool:
        """Whether the server process is alive."""
        return self._proc is not None and self._proc.poll() is None

    @property
    def pid(self) -> int | None:
        """The postmaster's process id while running."""
        return self._postmaster_pid() if self.running else None

    def start(self) -> Self:
        """Create a fresh cluster and start the server; return once it accepts connections."""
        if self.running:
            return self
        bin_dir = self.bin_dir
        as_user = self._server_user()
        directory = Path(tempfile.mkdtemp(prefix="ocimirror-pg-"))
        self._directory = directory
        try:
            if as_user is not None:
                os.chown(directory, as_user.pw_uid, as_user.pw_gid)
            self._initdb(bin_dir)
            attempts = 1 if self._fixed_port else 5
            for attempt in range(attempts):
                if not self._fixed_port:
                    self._port = _free_port()
                try:
                    self._launch(bin_dir)
                except PostgresError as exc:
                    if self._fixed_port or "already in use" not in str(exc):
                        raise
                    if attempt == attempts - 1:
                        raise
                else:
                    return self
            raise AssertionError("unreachable")
        except BaseException:
            self.stop()
            raise

    @staticmethod
    def _server_user() -> pwd.struct_passwd | None:
        """Return the user to run initdb and postgres as when root, else None."""
        if os.geteuid() != 0:
            return None
        try:
            return pwd.getpwnam(SERVER_USER)
        except KeyError:
            raise PostgresError(
                f"running as root, and PostgreSQL refuses root: there is no {SERVER_USER!r} "
                "user to run it as (Debian's postgresql package creates it)"
            ) from None

    def _command(self, *argv: str | Path) -> list[str]:
        """Return `argv` as a command line, run as the server user when root."""
        words = [str(word) for word in argv]
        if os.geteuid() == 0:
            return ["runuser", "-u", SERVER_USER, "--", *words]
        return words

    @staticmethod
    def _env() -> dict[str, str]:
        """Return the environment without PG* variables (PGDATA, PGPORT...) or locale."""
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("PG", "LC_")) and k not in ("LANG", "LANGUAGE")
        }
        env["LC_ALL"] = "C"
        return env

    def _initdb(self, bin_dir: Path) -> None:
        """Create the cluster in `data/`: trust auth, UTF8, no locale, no fsync."""
        command = self._command(
            bin_dir / "initdb",
            "-D",
            self.data_dir,
            "--no-locale",
            "-E",
            "UTF8",
            "-A",
            "trust",
            "-U",
            SUPERUSER,
            "--no-sync",
        )
        done = subprocess.run(
            command,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            cwd=self.directory,
            env=self._env(),
            check=False,
        )
        if done.returncode != 0:
            output = (done.stdout + done.stderr).decode("utf-8", "replace")[-4000:]
            raise PostgresError(f"initdb exited with status {done.returncode}:\n{output}")

    def _launch(self, bin_dir: Path) -> None:
        """Start postgres on `self._port` and wait until it is ready."""
        settings = {
            "listen_addresses": "127.0.0.1",
            "port": str(self._port),
            "unix_socket_directories": str(self.directory),
            "fsync": "off",
            "synchronous_commit": "off",
            "full_page_writes": "off",
            **self.settings,
        }
        options: list[str] = []
        for name, value in settings.items():
            options += ["-c", f"{name}={value}"]
        log_mark = self._size(self.log_path)
        # Opened by us, so root's file is written through the inherited descriptor.
        self._log = self.log_path.open("ab")
        self._proc = subprocess.Popen(
            self._command(bin_dir / "postgres", "-D", self.data_dir, *options),
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            cwd=self.directory,
            env=self._env(),
        )
        _LIVE[id(self)] = self
        deadline = time.monotonic() + self.start_timeout
        while True:
            if self._proc.poll() is not None:
                status = self._proc.returncode
                self._reap()
                raise PostgresError(
                    f"postgres exited with status {status} on start:\n" + self._log_tail(log_mark)
                )
            if self._ready():
                return
            if time.monotonic() > deadline:
                tail = self._log_tail(log_mark)
                self._halt()
                raise PostgresError(f"postgres was not ready within {self.start_timeout}s:\n{tail}")
            time.sleep(0.01)

    def _pid_file(self) -> list[str]:
        """Return the lines of `postmaster.pid`, or none when there is no such file."""
        try:
            return (self.data_dir / "postmaster.pid").read_text().splitlines()
        except (OSError, UnicodeDecodeError):
            return []

    def _postmaster_pid(self) -> int | None:
        """Return the postmaster's process id from `postmaster.pid`."""
        lines = self._pid_file()
        with contextlib.suppress(IndexError, ValueError):
            return int(lines[0])
        return None

    def _ready(self) -> bool:
        """Return whether the server accepts TCP connections on its port."""
        # Line 8 of postmaster.pid is the status pg_ctl waits for: "ready" once the
        # listening sockets are open and recovery is done.
        lines = self._pid_file()
        if len(lines) < 8 or lines[7].strip() != "ready":
            return False
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self._port), 1):
            return True
        return False

    def _log_tail(self, since: int) -> str:
        """Return the end of what the server wrote to its log since `since`."""
        with contextlib.suppress(OSError), self.log_path.open("rb") as f:
            f.seek(since)
            return f.read()[-4000:].decode("utf-8", "replace")
        return ""

    @staticmethod
    def _size(path: Path) -> int:
        """Return the size of `path`, 0 when it does not exist."""
        try:
            return path.stat().st_size
        except FileNotFoundError:
            return 0

    def _reap(self) -> None:
        """Forget the exited process and close its log."""
        _LIVE.pop(id(self), None)
        if self._log is not None:
            self._log.close()
            self._log = None

    def _halt(self) -> None:
        """Shut the server down immediately (SIGQUIT to the postmaster) and wait for it."""
        proc = self._proc
        if proc is None:
            return
        if proc.poll() is None:
            # The Popen child may be runuser; the postmaster is the pid in postmaster.pid.
            pid = self._postmaster_pid() or proc.pid
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGQUIT)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
                proc.kill()
                proc.wait(5)
        self._reap()

    def crash(self) -> None:
        """SIGKILL the postmaster and every backend, as a machine losing power would
        (kill -9 of the server); the data directory stays for `restart`."""
        proc = self._proc
        if proc is None or proc.poll() is not None:
            return
        pid = self._postmaster_pid() or proc.pid
        children = _children(pid)
        for victim in (pid, *children):
            with contextlib.suppress(ProcessLookupError):
                os.kill(victim, signal.SIGKILL)
        proc.wait(10)
        deadline = time.monotonic() + self.start_timeout
        while any(_alive(c) for c in children):  # a backend holds the shared memory
            if time.monotonic() > deadline:
                raise PostgresError(f"backends of the killed postgres still alive: {children}")
            time.sleep(0.01)
        self._reap()

    def restart(self) -> Self:
        """Start the server again on the same data directory and port (crash recovery
        runs first, as after a real crash); return once it accepts connections."""
        if self.running:
            return self
        if self._directory is None:
            raise PostgresError("restart of a server that was never started (or was stopped)")
        self._launch(self.bin_dir)
        return self

    def stop(self) -> None:
        """Stop the server at once and delete its directory."""
        self._halt()
        directory, self._directory = self._directory, None
        if directory is not None:
            shutil.rmtree(directory, ignore_errors=True)

    def __repr__(self) -> str:
        """Show the address and directory."""
        if self._directory is None or not self._port:
            return "<LocalPostgres not started>"
        return f"<LocalPostgres {self.url} dir={self._directory}>"
