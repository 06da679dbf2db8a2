"""A seeded loopback TCP fault injector: a proxy between a client and a server that breaks
some of the connections on purpose, reproducibly.

`FaultInjector(upstream_port, seed=..., fault_rate=0.5)` listens on 127.0.0.1; every
accepted connection draws, from `random.Random(seed)` in accept order, whether it is
faulty and how:

- `reset_up` / `reset_down`: the connection is torn down (RST) after N bytes of the
  request (client → server) or of the response (server → client);
- `short`: the response stream is cut cleanly (FIN) after N bytes, a short body;
- `flip_down` / `flip_up`: one byte of the response or request stream is flipped once the
  first `skip` bytes have passed. The flip lands after the headers of the first message
  (`\\r\\n\\r\\n` seen), in the body: a header byte flipped is a parse error, which the
  `reset_*` modes already cover, while a flipped body byte is the corruption that only a
  digest catches (what TCP checksums and TLS would miss on a broken middlebox or disk);
- `stall`: the response is held for `stall_seconds` after N bytes, then continues;
- `slow`: the response trickles in `slow_piece`-byte pieces, each after a short pause.

The same seed gives the same faults to the same sequence of connections (concurrent
clients may connect in a different order, so a replay is exact for serial clients and
statistically alike otherwise). `counts` says how many of each fault were injected
(a fault is counted when it fires, not when it is drawn: a `reset_down` after more bytes
than the response had never fires).

`http_faults` is the HTTP-level companion: an `Intercept` for `front.Front` answering
500/502/503 storms and 429 with `Retry-After` to a seeded fraction of requests.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import socket
import struct
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass

from aiohttp import web

from .front import Front, Intercept, registry_error

__all__ = ["MODES", "FaultInjector", "FaultPlan", "http_faults"]

#: Every connection-level fault mode.
MODES: tuple[str, ...] = (
    "reset_up",
    "reset_down",
    "short",
    "flip_down",
    "flip_up",
    "stall",
    "slow",
)

_READ = 64 * 1024
_HEADERS_END = b"\r\n\r\n"


@dataclass(frozen=True)
class FaultPlan:
    """What happens to one connection: a mode (or None: clean) and after how many bytes."""

    mode: str | None
    after: int = 0


class FaultInjector:
    """A TCP proxy on 127.0.0.1 in front of `upstream_port`, faulting a seeded fraction."""

    def __init__(
        self,
        upstream_port: int,
        *,
        seed: int = 0,
        fault_rate: float = 0.5,
        modes: Sequence[str] = MODES,
        max_after: int = 32 * 1024,
        stall_seconds: float = 0.5,
        slow_piece: int = 1024,
        upstream_host: str = "127.0.0.1",
    ) -> None:
        unknown = set(modes) - set(MODES)
        if unknown:
            raise ValueError(f"unknown fault modes {sorted(unknown)}; known: {', '.join(MODES)}")
        if not 0.0 <= fault_rate <= 1.0:
            raise ValueError(f"fault_rate must be between 0 and 1, not {fault_rate}")
        self.upstream_host = upstream_host
        self.upstream_port = upstream_port
        self.seed = seed
        self.fault_rate = fault_rate
        self.modes = tuple(modes)
        self.max_after = max_after
        self.stall_seconds = stall_seconds
        self.slow_piece = slow_piece
        self.enabled = True
        self.counts: Counter[str] = Counter()
        self.connections = 0
        self.port = 0
        self._rng = random.Random(seed)
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def host(self) -> str:
        """`127.0.0.1:PORT`, what a client is given instead of the server's address."""
        return f"127.0.0.1:{self.port}"

    def plan(self) -> FaultPlan:
        """Draw the next connection's fault (clean when disabled)."""
        roll = self._rng.random()
        mode = self._rng.choice(self.modes) if self.modes else None
        after = self._rng.randrange(0, self.max_after)
        if not self.enabled or mode is None or roll >= self.fault_rate:
            return FaultPlan(None)
        return FaultPlan(mode, after)

    @asynccontextmanager
    async def running(self) -> AsyncIterator[FaultInjector]:
        """Listen until the block ends; open connections are closed on the way out."""
        server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = server.sockets[0].getsockname()[1]
        try:
            async with server:
                yield self
        finally:
            server.close()
            for task in list(self._tasks):
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _accept(self, creader: asyncio.StreamReader, cwriter: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self.connections += 1
        plan = self.plan()
        try:
            sreader, swriter = await asyncio.open_connection(self.upstream_host, self.upstream_port)
        except OSError:
            _abort(cwriter)
            self._tasks.discard(task)
            return
        try:
            up = asyncio.ensure_future(self._pump(creader, swriter, cwriter, plan, "up"))
            down = asyncio.ensure_future(self._pump(sreader, cwriter, swriter, plan, "down"))
            done, pending = await asyncio.wait({up, down}, return_when=asyncio.FIRST_COMPLETED)
            if up in done and not up.cancelled() and up.result() == "eof":
                # The client finished sending: let the answer come back before closing.
                with contextlib.suppress(Exception):
                    await down
            for t in pending:
                t.cancel()
            await asyncio.gather(up, down, return_exceptions=True)
        finally:
            for w in (cwriter, swriter):
                if not w.is_closing():
                    w.close()
            self._tasks.discard(task)

    async def _pump(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        other: asyncio.StreamWriter,
        plan: FaultPlan,
        direction: str,
    ) -> str:
        """Copy one direction, applying the plan's fault when it belongs to this direction."""
        mode = plan.mode if plan.mode is not None and _direction(plan.mode) == direction else None
        moved = 0
        fired = False
        seen_headers = False
        body_start = 0
        tail = b""
        while True:
            try:
                data = await reader.read(_READ)
            except (ConnectionError, OSError):
                _abort(writer)
                return "reset"
            if not data:
                with contextlib.suppress(OSError, RuntimeError):
                    if writer.can_write_eof():
                        writer.write_eof()
                return "eof"
            if mode is not None and not fired:
                if not seen_headers:
                    window = tail + data
                    at = window.find(_HEADERS_END)
                    if at >= 0:
                        seen_headers = True
                        body_start = moved + at + len(_HEADERS_END) - len(tail)
                    tail = window[-3:]
                start = moved
                end = moved + len(data)
                if mode in ("reset_up", "reset_down", "short", "stall") and end > plan.after:
                    cut = max(plan.after - start, 0)
                    writer.write(data[:cut])
                    with contextlib.suppress(OSError, ConnectionError):
                        await writer.drain()
                    fired = True
                    self.counts[mode] += 1
                    if mode == "stall":
                        await asyncio.sleep(self.stall_seconds)
                        data = data[cut:]
                        moved += cut
                    elif mode == "short":
                        with contextlib.suppress(OSError, RuntimeError):
                            writer.close()
                        _abort(other)
                        return "cut"
                    else:
                        _abort(writer)
                        _abort(other)
                        return "cut"
                elif mode in ("flip_down", "flip_up") and seen_headers:
                    target = body_start + plan.after
                    if start <= target < end:
                        i = target - start
                        data = data[:i] + bytes([data[i] ^ 0x01]) + data[i + 1 :]
                        fired = True
                        self.counts[mode] += 1
                elif mode == "slow":
                    fired = True
                    self.counts[mode] += 1
            if mode == "slow":
                for off in range(0, len(data), self.slow_piece):
                    writer.write(data[off : off + self.slow_piece])
                    await writer.drain()
                    await asyncio.sleep(0.001)
            else:
                writer.write(data)
            moved += len(data)
            try:
                await writer.drain()
            except (ConnectionError, OSError):
                _abort(other)
                return "reset"


def _direction(mode: str) -> str:
    return "up" if mode in ("reset_up", "flip_up") else "down"


def _abort(writer: asyncio.StreamWriter) -> None:
    """Close with a TCP RST (SO_LINGER 0), as a crashed peer or middlebox would."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    transport = writer.transport
    with contextlib.suppress(Exception):
        transport.abort()


def http_faults(
    *,
    seed: int = 0,
    rate: float = 0.3,
    statuses: Sequence[int] = (500, 502, 503, 429),
    retry_after: str = "0",
    storm: int = 3,
    storm_seconds: float | None = None,
    calm_seconds: float = 0.0,
    counts: Counter[str] | None = None,
    clock: Callable[[], float] = time.monotonic,
    per_path: bool = False,
) -> Intercept:
    """An `Intercept` for `Front`: a seeded `rate` of requests start a storm of `storm`
    error answers in a row (a status from `statuses`; 429 carries `Retry-After`).

    The storms follow the order requests arrive in, which concurrency changes from run to
    run: the same seed can hit a retried request with the second answer of the storm its
    first attempt began, or not. With `per_path`, each request line (method and path) has
    storms of its own, from a generator seeded with `seed` and that line: what each
    request and each of its retries is answered is the same in every run, whatever the
    order, so a failure replays.

    With `storm_seconds`, a storm lasts that long instead (every request in it is
    answered with the error) and no other begins for `calm_seconds` after it: a registry
    overloaded for a while. A client that retries at once meets the same storm again, one
    that backs off gets past it. (A count-based storm cannot be outwaited: at `rate` 0.3
    and `storm` 3 more than half of all answers are errors whatever the client's timing.)
    """
    if storm_seconds is not None and not storm_seconds > 0:
        raise ValueError(f"storm_seconds must be above 0, not {storm_seconds!r}")
    if per_path and storm_seconds is not None:
        raise ValueError("per_path storms are counted in answers, not storm_seconds")
    tally = counts if counts is not None else Counter()
    if per_path:
        return _storms_per_path(seed, rate, list(statuses), retry_after, storm, tally)
    rng = random.Random(seed)
    left = 0
    until = calm = float("-inf")
    status = 0

    async def intercept(front: Front, request: web.Request, body: bytes) -> web.Response | None:
        nonlocal left, until, calm, status
        now = clock()
        in_storm = now < until if storm_seconds is not None else left > 0
        if not in_storm and now >= calm and rng.random() < rate:
            in_storm = True
            left = storm
            until = now + (storm_seconds or 0.0)
            calm = until + calm_seconds
            status = rng.choice(list(statuses))
        if not in_storm:
            return None
        left -= 1
        return _storm_answer(status, retry_after, tally)

    intercept.counts = tally  # type: ignore[attr-defined]
    return intercept


def _storm_answer(status: int, retry_after: str, tally: Counter[str]) -> web.Response:
    """A storm's error answer, counted: 429 with `Retry-After`, else `status` UNAVAILABLE."""
    tally[f"http_{status}"] += 1
    if status == 429:
        return registry_error(429, "TOOMANYREQUESTS", {"Retry-After": retry_after})
    return registry_error(status, "UNAVAILABLE")


def _storms_per_path(
    seed: int,
    rate: float,
    statuses: list[int],
    retry_after: str,
    storm: int,
    tally: Counter[str],
) -> Intercept:
    """`http_faults(per_path=True)`: a storm generator per request line."""
    lines: dict[str, tuple[random.Random, list[int]]] = {}  # line -> (rng, [left, status])

    async def intercept(front: Front, request: web.Request, body: bytes) -> web.Response | None:
        line = f"{request.method} {request.path_qs}"
        if line not in lines:
            lines[line] = (random.Random(f"{seed} {line}"), [0, 0])
        rng, at = lines[line]
        if at[0] == 0 and rng.random() < rate:
            at[:] = [storm, rng.choice(statuses)]
        if at[0] == 0:
            return None
        at[0] -= 1
        return _storm_answer(at[1], retry_after, tally)

    intercept.counts = tally  # type: ignore[attr-defined]
    return intercept
