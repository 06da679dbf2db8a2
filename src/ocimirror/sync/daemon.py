"""`ocimirror run`: each mirror on its own schedule, for months, without supervision.

- Schedules resume from the state database: a mirror that ran 2 h ago on a 6 h interval
  runs in 4 h (plus jitter), not at start-up; one whose last run was interrupted runs at
  once. A mirror never runs twice at once.
- SIGTERM / SIGINT: no new runs; running copies finish (a tag is always written last, so
  nothing is left half-written either way). A second signal cancels them at once; their
  runs are marked `interrupted`.
- SIGHUP, or the config file changing on disk: the config is reloaded without touching
  running work. An invalid new config is refused with one log line; the old one stays.
- `max_errors` > 0: after that many failed passes in a row the daemon stops (exit 1); with
  `max_errors_counts: mirrors` (docker-sync's way) when that many mirrors are failing at
  once (a mirror fails while its latest pass has any failure).
- `metrics.listen` set: Prometheus metrics of passes and registry clients are served there;
  `metrics.stdout_interval` set: they are also printed to stdout that often.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
from dataclasses import InitVar, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

import structlog

from ..client import RegistryClient
from ..errors import OcimirrorError
from ..metrics import MirrorMetrics, serve_metrics
from ..settings.config import Config, Mirror
from ..settings.connection import pool_for
from ..settings.durations import parse_interval
from ..settings.loading import Loaded, load_config
from ..settings.schedule import schedule_of
from ..state.connection import default_url
from ..state.db import StateDB
from ..state.retention import pruning
from ..stores.pool import StorePool
from ..workers.schema import require_postgres
from .runner import Trigger, held_by_workers, sync_pass

log = structlog.get_logger("ocimirror.daemon")

#: How often the config file's modification time is looked at.
WATCH_SECONDS = 2.0


@dataclass
class Daemon:
    """Runs the configured mirrors on their schedules until told to stop."""

    config_path: Path
    state_url: str | None = None
    target_registry: str | None = None
    #: True: every mirror trusts the state database (`--trust-state`); None: as configured.
    trust_state: bool | None = None
    #: Where copies run (`--execution`), over the config's `execution`, for every reload.
    execution: Literal["in-process", "workers"] | None = None
    #: The config as the caller already read it from `config_path` (None: read it here).
    loaded: InitVar[Loaded | None] = None
    config: Config = field(init=False)
    next_run: dict[str, datetime | None] = field(init=False, default_factory=dict)
    running: dict[str, asyncio.Task[None]] = field(init=False, default_factory=dict)
    failures_in_a_row: int = field(init=False, default=0)
    #: Mirrors whose latest pass had a failure (docker-sync's error count).
    failing: set[str] = field(init=False, default_factory=set)
    _wake: asyncio.Event = field(init=False, default_factory=asyncio.Event)
    _stopping: int = field(init=False, default=0)
    _mtime: float = field(init=False, default=0.0)
    _reload_wanted: bool = field(init=False, default=False)
    metrics: MirrorMetrics = field(init=False, default_factory=MirrorMetrics)
    _pools: list[StorePool] = field(init=False, default_factory=list)
    _triggered: set[str] = field(init=False, default_factory=set)

    def __post_init__(self, loaded: Loaded | None) -> None:
        self.config = self._load(loaded)
        self.metrics.watch_clients(self._clients)

    def _clients(self) -> list[RegistryClient]:
        return [c for pool in self._pools for c in pool.registry_clients()]

    def _load(self, loaded: Loaded | None = None) -> Config:
        if loaded is None:
            loaded = load_config(self.config_path, target_registry=self.target_registry)
        for warning in loaded.warnings:
            log.warning("config", warning=warning)
        with contextlib.suppress(OSError):
            self._mtime = self.config_path.stat().st_mtime
        if self.execution is not None:
            return loaded.config.model_copy(update={"execution": self.execution})
        return loaded.config

    async def _interrupt(self, state: StateDB, label: str) -> None:
        """Mark a mirror's aborted run interrupted, unless queue workers still hold it."""
        await state.interrupt_runs(mirror=label, keep=await held_by_workers(self.config, state))

    # -- signals ---------------------------------------------------------------------

    def stop(self) -> None:
        """Ask the daemon to stop: first time gracefully, second time at once."""
        self._stopping += 1
        if self._stopping == 1:
            log.info("stopping: waiting for running mirrors (signal again to abort them)")
        else:
            log.warning("aborting running mirrors")
            for task in self.running.values():
                task.cancel()
        self._wake.set()

    def reload(self) -> None:
        """Ask for the config to be read again."""
        self._reload_wanted = True
        self._wake.set()

    def _do_reload(self) -> None:
        self._reload_wanted = False
        try:
            new = self._load()
        except OcimirrorError as e:
            log.error("config reload rejected, keeping the running config", error=str(e))
            return
        old = {m.label for m in self.config.mirrors}
        self.config = new
        now_labels = {m.label for m in new.mirrors}
        for gone in old - now_labels:
            self.next_run.pop(gone, None)
        for m in new.mirrors:
            if m.label not in self.next_run or m.label not in old:
                self.next_run[m.label] = schedule_of(m).next_run(datetime.now(UTC))
        log.info(
            "config reloaded",
            mirrors=len(new.mirrors),
            added=sorted(now_labels - old),
            removed=sorted(old - now_labels),
        )

    # -- the loop --------------------------------------------------------------------

    def busy(self) -> set[str]:
        """Mirrors running now, or asked to run and about to start."""
        return set(self.running) | self._triggered

    def trigger(self, label: str) -> bool:
        """Run a mirror now; False when it is already running (KeyError if unknown)."""
        if not any(m.label == label for m in self.config.mirrors):
            raise KeyError(label)
        if label in self.busy():
            return False
        self.next_run[label] = datetime.now(UTC)
        self._triggered.add(label)
        self._wake.set()
        return True

    async def run(
        self, *, state: StateDB | None = None, signals: bool = True, metrics_server: bool = True
    ) -> int:
        """Run until stopped; return the exit code (0, or 1 after max_errors failures).

        Embedded (in `ocimirror serve`) the caller passes its open `state`, handles the
        signals itself and serves the metrics on its own port.
        """
        loop = asyncio.get_running_loop()
        handlers = (
            (signal.SIGTERM, self.stop),
            (signal.SIGINT, self.stop),
            (signal.SIGHUP, self.reload),
        )
        for sig, handler in handlers if signals else ():
            loop.add_signal_handler(sig, handler)
        url = self.state_url or self.config.state or default_url(self.config_path)
        listen = self.config.metrics.listen if metrics_server else None
        try:
            async with contextlib.AsyncExitStack() as stack:
                if listen:
                    port = await stack.enter_async_context(
                        serve_metrics(self.metrics, listen, self.config.metrics.path)
                    )
                    log.info("metrics served", listen=listen, port=port)
                every = self.config.metrics.stdout_interval
                if every is not None and metrics_server:
                    printer = asyncio.create_task(self._print_metrics(every))
                    stack.push_async_callback(self._stop_printing, printer)
                if state is None:  # its own (serve, embedding it, prunes its own)
                    state = await stack.enter_async_context(StateDB(url))
                    await stack.enter_async_context(pruning(state, self.config.history_limit))
                if self.config.execution == "workers":
                    require_postgres(state)
                held = await held_by_workers(self.config, state)
                interrupted = await state.interrupt_runs(keep=held)
                if interrupted:
                    log.warning(
                        "runs left running by a previous process marked interrupted",
                        count=interrupted,
                    )
                last = await state.last_runs()
                now = datetime.now(UTC)
                for m in self.config.mirrors:
                    if m.label in self._triggered:
                        continue  # asked for (the API) while this started: it runs now
                    info = last.get(m.label)
                    if info is not None and info.status == "interrupted":
                        self.next_run[m.label] = now  # it did not finish: finish it now
                        continue
                    when = (info.finished_at or info.started_at) if info else None
                    self.next_run[m.label] = schedule_of(m).next_run(now, last_run=when)
                self._log_schedule()
                code = await self._loop(state)
                if self.running:
                    await asyncio.gather(*self.running.values(), return_exceptions=True)
                return code
        finally:
            for sig, _handler in handlers if signals else ():
                loop.remove_signal_handler(sig)

    def _log_schedule(self) -> None:
        for m in self.config.mirrors:
            nxt = self.next_run.get(m.label)
            self.metrics.set_next_run(m.label, nxt)
            log.info(
                "scheduled",
                mirror=m.label,
                schedule=schedule_of(m).describe(),
                next_run=nxt.isoformat(timespec="seconds") if nxt else "on demand",
            )

    async def _loop(self, state: StateDB) -> int:
        pool = pool_for(self.config)
        self._pools.append(pool)
        retired: list[StorePool] = []
        try:
            while not self._stopping:
                if self._reload_wanted or self._config_changed():
                    self._do_reload()
                    # New credentials take effect for new runs; running ones keep theirs.
                    retired.append(pool)
                    pool = pool_for(self.config)
                    self._pools.append(pool)
                now = datetime.now(UTC)
                for m in self.config.mirrors:
                    due = self.next_run.get(m.label)
                    if due is not None and due <= now and m.label not in self.running:
                        self.running[m.label] = asyncio.create_task(self._run(m, state, pool))
                if self._too_many_failures():
                    return 1
                waits = [
                    (d - now).total_seconds()
                    for label, d in self.next_run.items()
                    if d is not None and label not in self.running
                ]
                timeout = min([WATCH_SECONDS, *waits])
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), timeout=max(timeout, 0.01))
            return 1 if self._too_many_failures() else 0
        finally:
            if self.running:
                await asyncio.gather(*self.running.values(), return_exceptions=True)
            for p in [*retired, pool]:
                await p.close()
            self._pools.clear()

    def _config_changed(self) -> bool:
        try:
            return self.config_path.stat().st_mtime != self._mtime
        except OSError:
            return False

    async def _print_metrics(self, every: str | int) -> None:
        """docker-sync's stdout exporter: the metrics on stdout every `every`."""
        seconds = parse_interval(every).total_seconds()
        while True:
            await asyncio.sleep(seconds)
            self._write_metrics()

    def _write_metrics(self) -> None:
        sys.stdout.write(self.metrics.render().decode())
        sys.stdout.flush()

    async def _stop_printing(self, printer: asyncio.Task[None]) -> None:
        """Stop the stdout exporter, printing the final numbers once (as OTel's does)."""
        printer.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await printer
        self._write_metrics()

    def _too_many_failures(self) -> bool:
        limit = self.config.max_errors
        if not limit:
            return False
        if self.config.max_errors_counts == "mirrors":
            failing = {m.label for m in self.config.mirrors} & self.failing
            if len(failing) >= limit:
                log.error("stopping: too many mirrors failing", failing=sorted(failing))
                return True
        elif self.failures_in_a_row >= limit:
            log.error("stopping after failed passes in a row", failures=self.failures_in_a_row)
            return True
        return False

    async def _run(self, mirror: Mirror, state: StateDB, pool: StorePool) -> None:
        label = mirror.label
        trigger: Trigger = "api" if label in self._triggered else "schedule"
        self._triggered.discard(label)
        log.info("run started", mirror=label, trigger=trigger)
        try:
            (done,) = await sync_pass(
                self.config,
                state=state,
                mirrors=[label],
                trigger=trigger,
                pool=pool,
                trust_state=self.trust_state,
            )
            if done.status == "failed":
                self.failures_in_a_row += 1
            else:
                self.failures_in_a_row = 0
            if done.status == "ok":
                self.failing.discard(label)
            else:
                self.failing.add(label)
            self.metrics.record_pass(
                label,
                status=done.status,
                seconds=done.seconds,
                results=done.results,
                unchanged=done.plan.count("unchanged"),
                immutable=done.plan.count("immutable"),
                plan_errors=len(done.plan.errors),
                finished=datetime.now(UTC),
            )
            log.info(
                "run finished",
                mirror=label,
                status=done.status,
                copied=done.copied,
                unchanged=done.plan.count("unchanged"),
                immutable=done.plan.count("immutable"),
                failed=len(done.failed),
                seconds=round(done.seconds, 2),
            )
            for line in done.failed:
                log.warning("failure", mirror=label, error=line)
        except asyncio.CancelledError:
            log.warning("run aborted", mirror=label)
            await asyncio.shield(self._interrupt(state, label))
            raise
        except Exception as e:  # a pass must never take the daemon down
            self.failures_in_a_row += 1
            self.failing.add(label)
            log.exception("run crashed", mirror=label, error=str(e))
        finally:
            self.running.pop(label, None)
            current = next((m for m in self.config.mirrors if m.label == label), None)
            if current is not None:
                schedule = schedule_of(current)
                self.next_run[label] = (
                    None  # `once`: done until the next start
                    if schedule.once
                    else schedule.next_run(datetime.now(UTC), last_run=datetime.now(UTC))
                )
                self.metrics.set_next_run(label, self.next_run[label])
            self._wake.set()
