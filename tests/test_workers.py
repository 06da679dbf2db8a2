"""`execution: workers`: `serve` plans and enqueues, `ocimirror worker` processes copy.

Real processes on one real PostgreSQL (conftest's `pg_url`: testkit's `LocalPostgres`,
or OCIMIRROR_TEST_POSTGRES_URL), real registries:

- a pass of N images over three workers lands every image once (one job, one recorded
  result each), a worker closes it, a registry's `max_concurrency: 4` holds across the
  three (counted at its front), and the dashboard data and /metrics show the workers;
- a worker killed (SIGKILL) mid-upload has its copy retried by another once its
  heartbeat stops, and no tag names the half-copied image meanwhile;
- a copy queued for two passes is one job whose result answers (and closes) both, and a
  retried record writes nothing twice;
- SQLite refuses workers;
- procrastinate's schema made by an older version gets the shipped migrations in order;
- finished copy jobs and an old pass's ledger rows are pruned.

N is 30 here, 200 with OCIMIRROR_SOAK=1.
"""

from __future__ import annotations

import asyncio
import functools
import os
import signal
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
from aiohttp import web
from typer.testing import CliRunner

from ocimirror import cli
from ocimirror.errors import ConfigError
from ocimirror.reference import Reference
from ocimirror.settings.config import Config
from ocimirror.state.db import StateDB
from ocimirror.state.retention import prune
from ocimirror.state.schema import utc_now
from ocimirror.sync.runner import sync_pass
from ocimirror.testkit.command import Background, run_ocimirror
from ocimirror.testkit.front import Front
from ocimirror.testkit.images import corpus_small_tags, make_image
from ocimirror.testkit.polling import wait_for
from ocimirror.testkit.registry import LocalRegistry
from ocimirror.testkit.seeding import seed
from ocimirror.testkit.skopeo import Skopeo
from ocimirror.transfer.copy import CopyOptions, ImageResult
from ocimirror.transfer.plan import CopyTask
from ocimirror.workers import dispatch, jobqueue, ledger
from ocimirror.workers.jobqueue import JobQueue
from ocimirror.workers.ledger import PlannerCounts, QueuedCopy
from ocimirror.workers.prune import QueuePruned, prune_queue
from ocimirror.workers.queue import CopyJob, defer_each, make_app
from ocimirror.workers.schema import ensure_schema
from test_serve import Server, job_done

SOAK = os.environ.get("OCIMIRROR_SOAK") == "1"
N_IMAGES = 200 if SOAK else 30


ACCEPT = ", ".join(
    [
        "application/vnd.oci.image.index.v1+json",
        "application/vnd.oci.image.manifest.v1+json",
        "application/vnd.docker.distribution.manifest.v2+json",
        "application/vnd.docker.distribution.manifest.list.v2+json",
    ]
)


def _digest(registry: LocalRegistry, repo: str, tag: str) -> str | None:
    """The digest a registry's tag names (None: no such tag)."""
    resp = registry.http("HEAD", f"/v2/{repo}/manifests/{tag}", headers={"Accept": ACCEPT})
    return resp.headers.get("Docker-Content-Digest") if resp.status == 200 else None


def _query(url: str, sql: str) -> list[tuple[Any, ...]]:
    with psycopg.connect(url) as conn:
        return list(conn.execute(sql).fetchall())


class Workers:
    """`ocimirror worker` processes on one database, stopped at the end of the test."""

    def __init__(self, workdir: Path, config: Path, url: str) -> None:
        self.workdir, self.config, self.url = workdir, config, url
        self.started: list[Background] = []

    def start(self, name: str, *extra: str) -> Background:
        args = ["worker", "-c", str(self.config), "--state", self.url, "--name", name]
        args += ["--heartbeat", "0.5s", "--stalled-after", "2s", *extra]
        worker = Background(args, self.workdir / f"worker-{name}.log")
        self.started.append(worker)
        return worker

    def logs(self) -> str:
        return "".join(f"--- {w.log.name}\n{w.text()[-3000:]}\n" for w in self.started)

    def stop_all(self) -> None:
        for w in self.started:
            if w.proc.poll() is None:
                assert w.stop(signal.SIGTERM) == 0, w.text()
            w.kill()


@pytest.fixture
def workers_factory(tmp_path: Path) -> Iterator[Callable[[Path, str], Workers]]:
    made: list[Workers] = []

    def make(config: Path, url: str) -> Workers:
        w = Workers(tmp_path, config, url)
        made.append(w)
        return w

    yield make
    for w in made:
        for proc in w.started:
            proc.kill()


def _config(tmp_path: Path, source: str, target: str, *, registries: str = "") -> Path:
    config = tmp_path / "mirror.yaml"
    config.write_text(
        "execution: workers\n"
        f"{registries}"
        "mirrors:\n"
        "  - name: many\n"
        f"    source: {source}\n"
        f"    targets: [{target}]\n"
        "    schedule: 0\n"
    )
    return config


def _last_status(server: Server) -> str | None:
    (m,) = server.call("GET", "/api/v1/mirrors").json()["mirrors"]
    status: str | None = m["last_status"]
    return status if not m["running"] else None


class InFlight:
    """A registry front's intercept counting the requests it holds at once."""

    def __init__(self) -> None:
        self.now = 0
        self.most = 0

    async def __call__(self, front: Front, request: web.Request, body: bytes) -> web.Response:
        self.now += 1
        self.most = max(self.most, self.now)
        try:
            await asyncio.sleep(0.005)  # a registry's latency: requests overlap
            return await front.forward(request, body)
        finally:
            self.now -= 1


async def test_three_workers_and_serve_copy_a_pass_once_each_within_a_registry_limit(
    registry_pair: tuple[LocalRegistry, LocalRegistry],
    tmp_path: Path,
    pg_url: str,
    workers_factory: Callable[[Path, str], Workers],
) -> None:
    """`serve` plans and enqueues, three workers of 8 copies each copy; the destination's
    config says `max_concurrency: 4`, which holds across the three (counted at its front)."""
    src, dst = registry_pair
    images = corpus_small_tags(N_IMAGES, layers=2, layer_size=2048, shared=1, seed="workers")
    digests = await seed(src, "lib/many", images)
    counting = InFlight()
    front = Front(dst, counting)
    async with front.running():
        config = _config(
            tmp_path,
            f"{src.host}/lib/many",
            f"{front.host}/mirror/many",
            registries=f"registries:\n  '{front.host}': {{max_concurrency: 4}}\n",
        )
        workers = workers_factory(config, pg_url)
        for name in ("a", "b", "c"):
            workers.start(name, "--concurrency", "8")
        server = await asyncio.to_thread(Server, tmp_path, "-c", str(config), "--state", pg_url)
        try:
            await asyncio.to_thread(_pass_and_status, server, workers)
        finally:
            server.kill()
        await asyncio.to_thread(workers.stop_all)
    assert sorted(dst.tags("mirror/many")) == sorted(digests)
    for tag, digest in digests.items():
        assert _digest(dst, "mirror/many", tag) == digest
    # Without the shared limit the three workers reach 12 at once.
    assert len(front.seen) > N_IMAGES * 3  # HEADs, blob and manifest PUTs: plenty to overlap
    assert 1 < counting.most <= 4, counting.most
    # One job and one recorded result per image; the run closed by a worker, counted whole.
    jobs = _query(pg_url, "SELECT status, count(*) FROM procrastinate_jobs GROUP BY status")
    assert jobs == [("succeeded", N_IMAGES)]
    results = _query(
        pg_url,
        "SELECT dest_ref, count(*) FROM task_results GROUP BY dest_ref HAVING count(*) > 1",
    )
    assert results == []
    (run,) = _query(pg_url, "SELECT status, copied, failed FROM runs")
    assert run == ("ok", N_IMAGES, 0)
    closers = [w.text().count("pass finished by this worker") for w in workers.started]
    assert sum(closers) == 1


def _pass_and_status(server: Server, workers: Workers) -> None:
    """Run the pass through the mirrors API; check the dashboard's data and /metrics."""
    assert server.call("POST", "/api/v1/mirrors/many/sync", {}).status == 202
    try:
        wait_for(lambda: _last_status(server) is not None, "the pass", timeout=120)
    except AssertionError:
        raise AssertionError(workers.logs() + server.text()) from None
    assert _last_status(server) == "ok"

    def workers_done() -> int:
        data = server.call("GET", "/api/v1/dashboard").json()["workers"]
        return sum(w["done"] for w in data["workers"] if w["alive"])

    wait_for(lambda: workers_done() == N_IMAGES, "the workers' heartbeats to count")
    data = server.call("GET", "/api/v1/dashboard").json()["workers"]
    assert sorted(w["name"] for w in data["workers"]) == ["a", "b", "c"]
    assert data["queues"] == []  # nothing left to do or being done
    metrics = server.call("GET", "/metrics").body.decode()
    for name in ("a", "b", "c"):
        assert f'ocimirror_worker_up{{worker="{name}"}} 1.0' in metrics
        assert f'ocimirror_worker_busy{{worker="{name}"}} 0.0' in metrics
    assert "ocimirror_worker_last_heartbeat_timestamp_seconds" in metrics

    # The pass's counts, from what the workers recorded, as an in-process pass counts them:
    # every image copied, and each of its 3 blobs (2 layers, the config) copied, mounted
    # or found (serve counts the pass once its planner has read the results back).
    def counted(name: str) -> dict[str, float]:
        text = server.call("GET", "/metrics").body.decode()
        return {
            line.split("{")[1].split("}")[0]: float(line.rsplit(" ", 1)[1])
            for line in text.splitlines()
            if line.startswith(name + "{") and 'mirror="many"' in line
        }

    wait_for(lambda: counted("ocimirror_runs_total") != {}, "the pass in /metrics")
    copied = counted("ocimirror_tasks_total")
    assert copied == {'mirror="many",result="copied"': N_IMAGES}, copied
    blobs = counted("ocimirror_blobs_total")
    assert sum(blobs.values()) == 3 * N_IMAGES, blobs
    assert blobs['how="copied",mirror="many"'] >= N_IMAGES, blobs
    page = server.call("GET", "/").body.decode()  # the dashboard's HTML draws them too
    for name in ("a", "b", "c"):
        assert f'<tr class="tone-ok" data-worker="{name}">' in page


async def test_a_worker_killed_mid_copy_has_its_copy_finished_by_another(
    registry_pair: tuple[LocalRegistry, LocalRegistry],
    tmp_path: Path,
    pg_url: str,
    workers_factory: Callable[[Path, str], Workers],
    skopeo: Skopeo,
) -> None:
    src, dst = registry_pair
    image = make_image(layers=2, layer_size=4096, seed="killed")
    digests = await seed(src, "lib/one", [("1", image)])
    held = asyncio.Event()
    release = asyncio.Event()

    async def hold_first_upload(front: Front, request: web.Request, body: bytes) -> None:
        # The first blob upload hangs (the worker is then killed), the others go through.
        if request.method == "PUT" and "/blobs/uploads/" in request.path and not held.is_set():
            held.set()
            await release.wait()
        return None

    front = Front(dst, hold_first_upload)
    async with front.running():
        config = _config(tmp_path, f"{src.host}/lib/one", f"{front.host}/mirror/one")
        workers = workers_factory(config, pg_url)
        doomed = workers.start("doomed")
        syncing = asyncio.create_task(
            asyncio.to_thread(run_ocimirror, "sync", "-c", str(config), "--state", pg_url)
        )
        await asyncio.wait_for(held.wait(), 60)
        doomed.proc.send_signal(signal.SIGKILL)
        doomed.proc.wait()
        release.set()
        # No tag names the half-copied image: the tag is written last.
        assert dst.tags("mirror/one") == []
        workers.start("rescuer")
        done = await asyncio.wait_for(syncing, 120)
        assert done.returncode == 0, done.stdout + done.stderr
    assert _digest(dst, "mirror/one", "1") == digests["1"]
    # skopeo reads the image whole: every blob the tag names is there.
    await asyncio.to_thread(
        skopeo.copy,
        f"docker://{dst.host}/mirror/one:1",
        f"oci:{tmp_path}/judge:1",
        src_registry=dst,
    )
    (row,) = _query(pg_url, "SELECT status, copied FROM runs")
    assert row == ("ok", 1)
    rescued = "copy of a stalled worker retried"
    assert any(rescued in w.text() for w in workers.started)
    workers.stop_all()


async def test_workers_execution_refuses_sqlite(tmp_path: Path) -> None:
    """SQLite keeps in-process execution: asking for workers there is a clear error."""
    config = Config.model_validate(
        {
            "execution": "workers",
            "mirrors": [{"name": "x", "source": "a.example/x", "targets": ["b.example/x"]}],
        }
    )
    async with StateDB(f"sqlite:///{tmp_path}/s.db") as db:
        with pytest.raises(ConfigError, match="execution: workers needs a PostgreSQL state"):
            await sync_pass(config, state=db)
    out = CliRunner().invoke(cli.app, ["worker", "--state", f"sqlite:///{tmp_path}/s.db"])
    assert out.exit_code == 2
    assert "needs a PostgreSQL state database" in out.output


async def test_a_copy_queued_for_two_passes_is_joined_and_answers_both(pg_url: str) -> None:
    """Two passes asking for one destination while its copy is queued: one job, and its
    one result recorded for (and closing) both passes."""
    dest = "127.0.0.1:5000/mirror/app:1"
    task = CopyTask(Reference.parse("127.0.0.1:5001/lib/app:1"), Reference.parse(dest))
    job = CopyJob.of(task, CopyOptions())
    async with StateDB(pg_url) as db:
        runs = []
        for mirror in ("one", "two"):
            run_id = await db.start_run(mirror, "cli")
            copy = QueuedCopy(mirror, "127.0.0.1:5000/mirror/app", str(task.source), dest, "new")
            joined = await dispatch.enqueue(db, run_id, mirror, [(copy, job)], PlannerCounts())
            runs.append((run_id, joined))
        assert [joined for _, joined in runs] == [0, 1]
        assert _query(pg_url, "SELECT count(*) FROM procrastinate_jobs") == [(1,)]
        digest = "sha256:" + "a" * 64
        result = ImageResult(
            str(task.source), dest, source_digest=digest, destination_digest=digest
        )
        closed = await ledger.record_copy(db, dest, result)
        assert closed == [run_id for run_id, _ in runs]
        # Recorded again (a retried job): nothing is written twice.
        assert await ledger.record_copy(db, dest, result) == []
        for run_id, _ in runs:
            assert await ledger.run_status(db, run_id) == "ok"
            (copied,) = await dispatch.await_pass(db, run_id)
            assert (copied.destination, copied.status) == (dest, "copied")


class Uploads:
    """A registry front's intercept: counts blob upload starts per repository, and holds
    them (all, or the first only) for the repositories named in `hold`."""

    def __init__(self) -> None:
        self.started: dict[str, int] = {}
        self.held: dict[str, int] = {}
        self.hold: dict[str, str] = {}  # repository -> "all" | "first"
        self.release = asyncio.Event()

    async def __call__(self, front: Front, request: web.Request, body: bytes) -> None:
        path = request.path
        if request.method == "POST" and path.endswith("/blobs/uploads/"):
            repo = path.removeprefix("/v2/").removesuffix("/blobs/uploads/")
            self.started[repo] = self.started.get(repo, 0) + 1
            how = self.hold.get(repo)
            if how == "all" or (how == "first" and self.started[repo] == 1):
                self.held[repo] = self.held.get(repo, 0) + 1
                await self.release.wait()
        return None


def _entries(src: LocalRegistry, dst: str, repo: str, tags: list[str]) -> dict[str, Any]:
    return {
        "mirrors": [{"src": f"{src.host}/lib/jobs:{t}", "dst": f"{dst}/{repo}:{t}"} for t in tags]
    }


async def test_jobs_api_on_workers_cancel_and_sigterm(
    registry_pair: tuple[LocalRegistry, LocalRegistry],
    tmp_path: Path,
    pg_url: str,
    workers_factory: Callable[[Path, str], Workers],
    skopeo: Skopeo,
) -> None:
    """The jobs API's copies (and the Cloud Run POST /) run on the workers. A job cancelled while two workers each
    copy one of its images (two more queued) stops on both: its copies end aborted or
    cancelled, no upload of it starts afterwards, no tag names missing content. SIGTERM
    lets a worker finish its copy within `--grace`, and past it hands the copy back to
    another worker."""
    src, dst = registry_pair
    images = [(str(i), make_image(layers=1, layer_size=2048, seed=f"jobs{i}")) for i in range(6)]
    digests = await seed(src, "lib/jobs", images)
    uploads = Uploads()
    front = Front(dst, uploads)
    async with front.running():
        config = _config(tmp_path, f"{src.host}/lib/jobs", f"{front.host}/mirror/jobs")
        workers = workers_factory(config, pg_url)
        a = workers.start("a", "--concurrency", "1", "--grace", "60s")
        b = workers.start("b", "--concurrency", "1", "--grace", "60s")
        server = await asyncio.to_thread(Server, tmp_path, "-c", str(config), "--state", pg_url)
        call = functools.partial(asyncio.to_thread, server.call)
        try:
            # A job copied by the workers, recorded per entry as in-process.
            job = await call("POST", "/api/v1/jobs", _entries(src, front.host, "ok", ["0", "1"]))
            done = await asyncio.to_thread(job_done, server, job.json()["id"])
            assert done["state"] == "succeeded", done
            assert [e["status"] for e in done["entries"]] == ["copied", "copied"]
            assert done["entries"][0]["digests"] == {f"{front.host}/ok:0": digests["0"]}
            # The Cloud Run contract answers once the workers copied.
            answer = await call("POST", "/", _entries(src, front.host, "cr", ["2"]))
            assert answer.body == b'{"ok":true}\n', answer.body
            assert _digest(dst, "cr", "2") == digests["2"]

            # serve's metrics count the workers' copies of its jobs, as copied in-process
            # (the first job's once serve saw it end, the Cloud Run one's before answering).
            def counted(what: str) -> bool:
                return what in server.call("GET", "/metrics").body.decode()

            copied = 'ocimirror_tasks_total{mirror="(jobs)",result="copied"} 3.0'
            await asyncio.to_thread(wait_for, lambda: counted(copied), "3 copied in /metrics")
            assert counted('ocimirror_blobs_total{how="copied",mirror="(jobs)"} 6.0')

            # serve stopped mid-job (parallelism 1: the workers admit each next entry):
            # the workers finish the job, and the next serve answers for it.
            uploads.hold["survive"] = "first"
            body = {**_entries(src, front.host, "survive", ["0", "1", "2"]), "parallelism": 1}
            job_id = (await call("POST", "/api/v1/jobs", body)).json()["id"]
            await asyncio.to_thread(wait_for, lambda: uploads.held.get("survive") == 1, "a hold")
            assert await asyncio.to_thread(server.stop, signal.SIGTERM) == 0, server.text()
            server = await asyncio.to_thread(Server, tmp_path, "-c", str(config), "--state", pg_url)
            call = functools.partial(asyncio.to_thread, server.call)
            uploads.release.set()
            survived = await asyncio.to_thread(job_done, server, job_id)
            assert survived["state"] == "succeeded", survived
            assert [e["status"] for e in survived["entries"]] == ["copied"] * 3
            assert [e["digests"] for e in survived["entries"]] == [
                {f"{front.host}/survive:{t}": digests[t]} for t in ("0", "1", "2")
            ]
            assert survived["progress"] == {
                "done": 3,
                "total": 3,
                "bytes": survived["progress"]["bytes"],
            }
            assert survived["progress"]["bytes"] > 0
            uploads.release = asyncio.Event()

            # Cancelled mid-run: both workers hold one of its copies, two are queued.
            uploads.hold["cancel"] = "all"
            tags = ["0", "1", "2", "3"]
            job = await call("POST", "/api/v1/jobs", _entries(src, front.host, "cancel", tags))
            job_id = job.json()["id"]
            doing = (
                "SELECT count(DISTINCT worker_id) FROM procrastinate_jobs WHERE status = 'doing'"
            )
            await asyncio.to_thread(
                wait_for,
                lambda: uploads.held.get("cancel", 0) >= 2 and _query(pg_url, doing)[0][0] == 2,
                "both workers to hold a copy",
            )
            assert (await call("DELETE", f"/api/v1/jobs/{job_id}")).status in (200, 202)
            cancelled = await asyncio.to_thread(job_done, server, job_id)
            assert cancelled["state"] == "cancelled", cancelled
            assert {e["status"] for e in cancelled["entries"]} == {"cancelled"}
            statuses = _query(
                pg_url,
                "SELECT status, count(*) FROM procrastinate_jobs"
                " WHERE args->>'destination' LIKE '%/cancel:%' GROUP BY status ORDER BY status::text",
            )
            assert statuses == [("aborted", 2), ("cancelled", 2)], statuses
            started = uploads.started["cancel"]
            uploads.release.set()  # the held requests go on, to a client long gone
            # The workers go on with the queue; nothing of the cancelled job starts again.
            job = await call("POST", "/api/v1/jobs", _entries(src, front.host, "after", ["4"]))
            after = await asyncio.to_thread(job_done, server, job.json()["id"])
            assert after["state"] == "succeeded", after
            assert uploads.started["cancel"] == started
            assert dst.tags("cancel") == []  # the tag is written last: none half-done

            # SIGTERM within the grace: the worker finishes its copy, then stops.
            uploads.release = asyncio.Event()
            uploads.hold["finish"] = "all"
            job = await call("POST", "/api/v1/jobs", _entries(src, front.host, "finish", ["5"]))
            await asyncio.to_thread(wait_for, lambda: uploads.held.get("finish", 0) >= 1, "a hold")
            (holder,) = [w for w in (a, b) if "/finish:5" in w.text()]
            other = b if holder is a else a
            holder.signal(signal.SIGTERM)
            await asyncio.to_thread(
                wait_for, lambda: "stopping: no new copies" in holder.text(), "stop"
            )
            uploads.release.set()
            assert await asyncio.to_thread(holder.proc.wait, 60) == 0, holder.text()
            finished = await asyncio.to_thread(job_done, server, job.json()["id"])
            assert finished["state"] == "succeeded", finished
            assert "handed back" not in holder.text()

            # SIGTERM past the grace: the copy goes back to the queue, another worker
            # (started afterwards, the only one then) copies it whole.
            other.stop(signal.SIGTERM)
            brief = workers.start("brief", "--concurrency", "1", "--grace", "0.5s")
            uploads.release = asyncio.Event()
            uploads.hold["back"] = "first"
            job = await call("POST", "/api/v1/jobs", _entries(src, front.host, "back", ["5"]))
            await asyncio.to_thread(wait_for, lambda: uploads.held.get("back") == 1, "a hold")
            assert await asyncio.to_thread(brief.stop, signal.SIGTERM) == 0, brief.text()
            assert "copy handed back at shutdown" in brief.text()
            uploads.release.set()
            assert dst.tags("back") == []
            workers.start("rescuer", "--concurrency", "1")
            back = await asyncio.to_thread(job_done, server, job.json()["id"])
            assert back["state"] == "succeeded", back
            attempts = _query(
                pg_url,
                "SELECT status, attempts FROM procrastinate_jobs"
                " WHERE args->>'destination' LIKE '%/back:%'",
            )
            assert attempts == [("succeeded", 2)], attempts
        except BaseException:
            print(workers.logs() + server.text()[-5000:])
            raise
        finally:
            uploads.release.set()
            server.kill()
        await asyncio.to_thread(workers.stop_all)
    assert _digest(dst, "back", "5") == digests["5"]
    await asyncio.to_thread(
        skopeo.copy, f"docker://{dst.host}/back:5", f"oci:{tmp_path}/judge:5", src_registry=dst
    )


def _copy(dest: str) -> CopyJob:
    source = Reference.parse("127.0.0.1:5001/lib/app:1")
    return CopyJob.of(CopyTask(source, Reference.parse(dest)), CopyOptions())


def _pending(i: int) -> dict[str, Any]:
    return {
        "index": i,
        "name": f"e{i}",
        "status": "pending",
        "images": 0,
        "copied": 0,
        "bytes": 0,
        "error": None,
        "digests": {},
    }


async def test_a_handed_over_job_is_settled_by_the_records_and_finished_by_the_last(
    pg_url: str,
) -> None:
    """A job handed to the queue: the records of its images settle each entry, admit the
    next (parallelism 1), and the last finishes the job as in-process; a copy joined by
    two jobs answers both; a retried record writes nothing twice. A cancel aborts its
    copies; when a serve starts, copies left for a job no longer running are aborted and
    a job handed over but never deferred gets its copies deferred."""
    dest = "127.0.0.1:5000/mirror/app"
    digest = "sha256:" + "b" * 64
    ok = ImageResult("s", "s", status="copied", destination_digest=digest, bytes_copied=7)
    bad = ImageResult("s", "s", status="failed", error="boom", public_error="boom")
    status_of = "SELECT status FROM procrastinate_jobs WHERE args->>'destination' = '{}'"
    async with StateDB(pg_url) as db:
        queue = JobQueue(db, poll=0.05)
        app = make_app(db, max_connections=2)
        try:
            assert await queue.start() == 0  # makes the tables; nothing left to abort
            await app.open_async()
            job_id = await db.create_job({"mirrors": []})
            decided = {**_pending(2), "status": "failed", "error": "bad reference"}
            copies = {0: [_copy(f"{dest}:a"), _copy(f"{dest}:b")], 1: [_copy(f"{dest}:c")]}
            await queue.hand_over(job_id, 1, copies, [_pending(0), _pending(1), decided])
            assert _query(pg_url, "SELECT count(*) FROM procrastinate_jobs") == [(2,)]
            other = await db.create_job({"mirrors": []})  # joins the copy of :a
            await queue.hand_over(other, 5, {0: [_copy(f"{dest}:a")]}, [_pending(0)])
            assert _query(pg_url, "SELECT count(*) FROM procrastinate_jobs") == [(2,)]

            assert await jobqueue.record(db, f"{dest}:a", ok, app) == 2
            info = await db.get_job(other)
            assert info is not None
            assert info.state == "done", info
            assert info.result is not None
            assert info.result["entries"][0]["digests"] == {f"{dest}:a": digest}
            info = await db.get_job(job_id)
            assert info is not None
            assert info.result is not None
            assert [e["status"] for e in info.result["entries"]] == ["running", "pending", "failed"]

            assert await jobqueue.record(db, f"{dest}:b", ok, app) == 1  # entry 1 admitted
            assert _query(pg_url, status_of.format(f"{dest}:c")) == [("todo",)]
            assert await jobqueue.record(db, f"{dest}:c", bad, app) == 1
            info = await db.get_job(job_id)
            assert info is not None
            assert info.result is not None
            assert (info.state, info.error) == ("failed", "2 of 3 entries failed")
            entries = info.result["entries"]
            assert [(e["status"], e["images"], e["bytes"]) for e in entries] == [
                ("copied", 2, 14),
                ("failed", 1, 0),
                ("failed", 0, 0),
            ]
            assert entries[1]["error"] == "boom"
            assert info.progress == {"done": 3, "total": 3, "bytes": 14}
            # Kept for the metrics of the serve that submitted it: every image recorded.
            assert info.result["tally"] == {
                "tasks": {"copied": 2, "failed": 1},
                "bytes": 14,
                "blobs": {"copied": 0, "mounted": 0, "skipped": 0},
            }
            assert info.finished_at is not None
            assert await jobqueue.record(db, f"{dest}:c", ok, app) == 0  # retried: no change
            assert (await db.get_job(job_id)) == info

            # Cancelled: its deferred copy is cancelled, its entries too.
            gone = await db.create_job({"mirrors": []})
            await queue.hand_over(gone, 5, {0: [_copy(f"{dest}:d")]}, [_pending(0)])
            assert await queue.cancel(gone) is True
            assert _query(pg_url, status_of.format(f"{dest}:d")) == [("cancelled",)]
            info = await db.get_job(gone)
            assert info is not None
            assert info.result is not None
            assert (info.state, info.error) == ("cancelled", "cancelled")
            assert info.result["entries"][0]["error"] == "cancelled before the copy finished"
            assert info.result["tally"]["tasks"] == {}  # nothing was recorded before
            assert await queue.cancel(gone) is False

            # A job a killed serve left not running (interrupted) with a copy queued.
            left = await db.create_job({"mirrors": []})
            await queue.hand_over(left, 5, {0: [_copy(f"{dest}:e")]}, [_pending(0)])
            assert await queue.held() == {left}
            await db.update_job(left, state="interrupted")
            # A job whose serve stopped before deferring its first copies.
            stalled = await db.create_job({"mirrors": []})
            await queue.hand_over(stalled, 5, {0: [_copy(f"{dest}:f")]}, [_pending(0)])
            _query(
                pg_url,
                f"DELETE FROM procrastinate_jobs WHERE args->>'destination' = '{dest}:f' RETURNING 1",
            )
            _query(
                pg_url,
                "UPDATE ocimirror_job_images SET deferred = false, queue_job = NULL"
                f" WHERE dest_ref = '{dest}:f' RETURNING 1",
            )
        finally:
            await app.close_async()
            await queue.close()
        assert await JobQueue(db).start() == 1
        assert _query(pg_url, status_of.format(f"{dest}:e")) == [("cancelled",)]
        assert _query(pg_url, status_of.format(f"{dest}:f")) == [("todo",)]
        assert _query(pg_url, "SELECT job_id FROM ocimirror_queued_jobs") == [(stalled,)]


async def test_queue_schema_upgrades_apply_the_shipped_migrations_in_order(
    pg_url: str, tmp_path: Path
) -> None:
    """procrastinate's schema, made by an older version, gets the migrations between that
    version and the library's, in order, in one transaction (a failing one leaves the
    schema as it was); a schema of a newer procrastinate is refused in one line."""
    import procrastinate

    version = "SELECT procrastinate FROM ocimirror_queue_schema"
    async with StateDB(pg_url) as db:
        assert await ensure_schema(db) == []
        assert _query(pg_url, version) == [(procrastinate.__version__,)]

        folder = tmp_path / "migrations"
        folder.mkdir()
        for name, sql in {
            "03.10.00_01_pre_old.sql": "CREATE TABLE m_old (n int)",
            "03.11.00_50_post_b.sql": "INSERT INTO m_a VALUES (2)",
            "03.11.00_01_pre_a.sql": "CREATE TABLE m_a (n int); INSERT INTO m_a VALUES (1)",
            "03.12.00_01_pre_c.sql": "INSERT INTO m_a VALUES (3)",
            "03.13.00_01_pre_future.sql": "CREATE TABLE m_future (n int); SELECT 1/0",
            "README.md": "not a migration",
        }.items():
            (folder / name).write_text(sql)
        _query(pg_url, "UPDATE ocimirror_queue_schema SET procrastinate = '3.10.0' RETURNING 1")

        applied = await ensure_schema(db, library="3.12.0", migrations=folder)
        assert applied == [
            "03.11.00_01_pre_a.sql",
            "03.11.00_50_post_b.sql",
            "03.12.00_01_pre_c.sql",
        ]
        assert _query(pg_url, "SELECT n FROM m_a ORDER BY n") == [(1,), (2,), (3,)]
        assert _query(pg_url, "SELECT to_regclass('m_old') IS NULL") == [(True,)]
        assert _query(pg_url, version) == [("3.12.0",)]
        assert await ensure_schema(db, library="3.12.0", migrations=folder) == []

        with pytest.raises(psycopg.errors.DivisionByZero):
            await ensure_schema(db, library="3.13.0", migrations=folder)
        assert _query(pg_url, "SELECT to_regclass('m_future') IS NULL") == [(True,)]
        assert _query(pg_url, version) == [("3.12.0",)]

        with pytest.raises(ConfigError, match=r"procrastinate 3\.12\.0, newer than .* 3\.11\.0"):
            await ensure_schema(db, library="3.11.0", migrations=folder)


async def test_finished_copy_jobs_and_an_old_passs_ledger_are_pruned(pg_url: str) -> None:
    """A worker's prune deletes the copy jobs that ended longer than `keep_history` ago
    (not those to do) and the ledger copies of passes finished as long ago; the state's
    prune takes the pass's run, with its ledger row."""
    day = timedelta(days=1)
    jobs = [
        CopyJob.of(
            CopyTask(
                Reference.parse(f"127.0.0.1:5001/lib/app:{i}"),
                Reference.parse(f"127.0.0.1:5000/mirror/app:{i}"),
            ),
            CopyOptions(),
        )
        for i in range(3)
    ]
    async with StateDB(pg_url) as db:
        await ensure_schema(db)
        old = await db.start_run("m", "cli", started_at=utc_now() - 60 * day)
        dest = str(jobs[0].destination)
        copy = QueuedCopy("m", "127.0.0.1:5000/mirror/app", jobs[0].source, dest, "new")
        await ledger.queue_pass(db, old, "m", [copy], PlannerCounts())
        digest = "sha256:" + "c" * 64
        result = ImageResult(jobs[0].source, dest, source_digest=digest, destination_digest=digest)
        assert await ledger.record_copy(db, dest, result) == [old]
        latest = await db.start_run("m", "cli")  # the last run, and the last success
        await db.finish_run(latest, "ok", copied=0, unchanged=1, failed=0, skipped=0, bytes=0)

        app = make_app(db, max_connections=1)
        async with app.open_async():
            ids = await defer_each(app, jobs)
        for job_id, status in ((ids[0], "succeeded"), (ids[1], "cancelled")):
            update = f"UPDATE procrastinate_jobs SET status = '{status}' WHERE id = {job_id}"
            _query(pg_url, update + " RETURNING 1")
        assert await prune_queue(db, day) == QueuePruned()  # all ended just now
        later = utc_now() + 2 * day
        assert await prune_queue(db, day, now=later, batch=1) == QueuePruned(jobs=2, copies=1)
        assert _query(pg_url, "SELECT count(*) FROM ocimirror_queued_copies") == [(0,)]
        assert _query(pg_url, "SELECT id, status FROM procrastinate_jobs") == [(ids[2], "todo")]
        assert _query(pg_url, "SELECT DISTINCT job_id FROM procrastinate_events") == [(ids[2],)]

        _query(
            pg_url,
            f"UPDATE runs SET finished_at = now() - interval '59 days' WHERE id = {old} RETURNING 1",
        )
        pruned = await prune(db, 30 * day)
        assert (pruned.runs, pruned.tasks) == (1, 1)
        assert _query(pg_url, "SELECT count(*) FROM ocimirror_queued_runs") == [(0,)]
        assert _query(pg_url, "SELECT id FROM runs") == [(latest,)]
