"""Prometheus metrics of sync passes and registry clients, and a tiny server for them.

One `MirrorMetrics` per process holds its own `CollectorRegistry` (not the global one, so
tests and several daemons in one interpreter do not collide). The daemon records every
pass; registry clients are read at scrape time (requests sent, HTTP 429s seen, the last
`RateLimit-Remaining`).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from contextlib import asynccontextmanager, suppress
from datetime import datetime
from typing import Any

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from .client import RegistryClient
from .transfer.copy import ImageResult
from .webserver import AppRunner

#: Run durations: a warm pass takes a second, a cold one of a big image many minutes.
DURATION_BUCKETS = (0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600, float("inf"))


class _ClientCollector(Collector):
    """Reads the live registry clients at scrape time."""

    def __init__(self, clients: Callable[[], Iterable[RegistryClient]]) -> None:
        self._clients = clients

    def collect(self) -> Iterable[Metric]:
        requests = CounterMetricFamily(
            "ocimirror_registry_requests", "HTTP requests sent to registries", labels=["host"]
        )
        throttled = CounterMetricFamily(
            "ocimirror_registry_throttled",
            "HTTP 429 answers received from registries",
            labels=["host"],
        )
        remaining = GaugeMetricFamily(
            "ocimirror_registry_ratelimit_remaining",
            "The last RateLimit-Remaining a registry announced",
            labels=["host"],
        )
        sent: dict[str, int] = {}
        seen_429: dict[str, int] = {}
        for client in self._clients():
            sent[client.host] = sent.get(client.host, 0) + sum(client.requests.values())
            seen_429[client.host] = seen_429.get(client.host, 0) + client.statuses[429]
            if client.rate_limit_remaining is not None:
                remaining.add_metric([client.host], client.rate_limit_remaining)
        for host, n in sent.items():
            requests.add_metric([host], n)
            throttled.add_metric([host], seen_429[host])
        return [requests, throttled, remaining]


class MirrorMetrics:
    """The metrics of scheduled mirroring, in a registry of their own."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.runs = Counter(
            "ocimirror_runs", "Sync passes by mirror and status", ["mirror", "status"], registry=r
        )
        self.tasks = Counter(
            "ocimirror_tasks", "Images looked at, by result", ["mirror", "result"], registry=r
        )
        self.bytes = Counter("ocimirror_bytes_copied", "Bytes copied", ["mirror"], registry=r)
        self.blobs = Counter(
            "ocimirror_blobs", "Blobs by what was done: copied, mounted or skipped",
            ["mirror", "how"], registry=r,
        )  # fmt: skip
        self.duration = Histogram(
            "ocimirror_run_duration_seconds", "How long a pass took", ["mirror"],
            buckets=DURATION_BUCKETS, registry=r,
        )  # fmt: skip
        self.last_success = Gauge(
            "ocimirror_last_success_timestamp_seconds",
            "When a pass of the mirror last ended without failures",
            ["mirror"], registry=r,
        )  # fmt: skip
        self.next_run = Gauge(
            "ocimirror_next_run_timestamp_seconds", "When the mirror runs next", ["mirror"],
            registry=r,
        )  # fmt: skip
        self.worker_up = Gauge(
            "ocimirror_worker_up", "1 while a queue worker's heartbeat is fresh, else 0",
            ["worker"], registry=r,
        )  # fmt: skip
        self.worker_busy = Gauge(
            "ocimirror_worker_busy", "Copies a queue worker is running", ["worker"], registry=r
        )
        self.worker_copies = Gauge(
            "ocimirror_worker_copies_done", "Copies a queue worker finished since it started",
            ["worker"], registry=r,
        )  # fmt: skip
        self.worker_heartbeat = Gauge(
            "ocimirror_worker_last_heartbeat_timestamp_seconds",
            "When a queue worker last said it is alive", ["worker"], registry=r,
        )  # fmt: skip
        self.queue_depth = Gauge(
            "ocimirror_queue_depth",
            "Queued copies per destination registry: todo (waiting) and doing (on a worker)",
            ["registry", "state"], registry=r,
        )  # fmt: skip
        self._clients: list[Callable[[], Iterable[RegistryClient]]] = []
        r.register(_ClientCollector(self._all_clients))

    def set_workers(
        self,
        workers: Sequence[tuple[str, bool, int, int, datetime]],
        queues: Sequence[tuple[str, int, int]],
    ) -> None:
        """Publish the queue workers (name, alive, busy, done, last heartbeat) and the
        queue depth per registry (registry, todo, doing), replacing what was there."""
        for gauge in (self.worker_up, self.worker_busy, self.worker_copies):
            gauge.clear()
        self.worker_heartbeat.clear()
        self.queue_depth.clear()
        for name, alive, busy, done, beat in workers:
            self.worker_up.labels(name).set(1 if alive else 0)
            self.worker_busy.labels(name).set(busy)
            self.worker_copies.labels(name).set(done)
            self.worker_heartbeat.labels(name).set(beat.timestamp())
        for registry, todo, doing in queues:
            self.queue_depth.labels(registry, "todo").set(todo)
            self.queue_depth.labels(registry, "doing").set(doing)

    def _all_clients(self) -> Iterable[RegistryClient]:
        for source in self._clients:
            yield from source()

    def watch_clients(self, source: Callable[[], Iterable[RegistryClient]]) -> None:
        """Read registry clients from `source` at every scrape (e.g. a StorePool's)."""
        self._clients.append(source)

    def unwatch_clients(self, source: Callable[[], Iterable[RegistryClient]]) -> None:
        """Stop reading from a source given to `watch_clients`."""
        self._clients.remove(source)

    def record_pass(
        self,
        mirror: str,
        *,
        status: str,
        seconds: float,
        results: Iterable[ImageResult],
        unchanged: int,
        immutable: int,
        plan_errors: int,
        finished: datetime,
    ) -> None:
        """Count one pass: its planner's decisions and the results of its image copies."""
        self.runs.labels(mirror, status).inc()
        self.duration.labels(mirror).observe(seconds)
        for result, n in (("unchanged", unchanged), ("immutable", immutable)):
            if n:
                self.tasks.labels(mirror, result).inc(n)
        if plan_errors:
            self.tasks.labels(mirror, "failed").inc(plan_errors)
        self.count(mirror, tally(results))  # bytes present at 0 from the first pass
        if status == "ok":
            self.last_success.labels(mirror).set(finished.timestamp())

    def count(self, mirror: str, counted: dict[str, Any]) -> None:
        """Add a `tally` of image copies to the mirror's images, bytes and blobs."""
        for result, n in dict(counted.get("tasks") or {}).items():
            self.tasks.labels(mirror, str(result)).inc(int(n))
        self.bytes.labels(mirror).inc(int(counted.get("bytes") or 0))
        for how, n in dict(counted.get("blobs") or {}).items():
            if n:
                self.blobs.labels(mirror, str(how)).inc(int(n))

    def set_next_run(self, mirror: str, when: datetime | None) -> None:
        """Publish when a mirror runs next (removed for on-demand mirrors)."""
        if when is None:
            with suppress(KeyError):
                self.next_run.remove(mirror)
            return
        self.next_run.labels(mirror).set(when.timestamp())

    def render(self) -> bytes:
        """The text exposition format of everything."""
        return generate_latest(self.registry)


def tally(results: Iterable[ImageResult]) -> dict[str, Any]:
    """What `MirrorMetrics.count` adds for these image copies, as JSON: images by result,
    bytes, and blobs by what was done. A queue worker that finishes a jobs-API job keeps
    it in the job's row, for the `serve` that submitted the job to count."""
    tasks: dict[str, int] = {}
    blobs = {"copied": 0, "mounted": 0, "skipped": 0}
    nbytes = 0
    for r in results:
        tasks[r.status] = tasks.get(r.status, 0) + 1
        nbytes += r.bytes_copied
        blobs["copied"] += r.blobs_copied
        blobs["mounted"] += r.blobs_mounted
        blobs["skipped"] += r.blobs_skipped
    return {"tasks": tasks, "bytes": nbytes, "blobs": blobs}


def split_listen(listen: str) -> tuple[str, int]:
    """Split `HOST:PORT`, `:PORT` or `[V6]:PORT` into a bind host and port."""
    host, sep, port = listen.rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"metrics listen address {listen!r} is not HOST:PORT")
    host = host.strip("[]") or "0.0.0.0"  # ":9090" means every interface
    return host, int(port)


@asynccontextmanager
async def serve_metrics(
    metrics: MirrorMetrics, listen: str, path: str = "/metrics"
) -> AsyncIterator[int]:
    """Serve `path` on `listen` until the block ends; yield the bound port."""

    async def handle(_request: web.Request) -> web.Response:
        body = metrics.render()
        resp = web.Response(body=body)
        resp.headers["Content-Type"] = CONTENT_TYPE_LATEST
        return resp

    host, port = split_listen(listen)
    app = web.Application()
    app.router.add_get(path, handle)
    runner = AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    try:
        await site.start()
        server = site._server
        sockets = getattr(server, "sockets", None) or []
        yield sockets[0].getsockname()[1] if sockets else port
    finally:
        await runner.cleanup()
