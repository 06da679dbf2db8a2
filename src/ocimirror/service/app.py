"""The aiohttp application of `ocimirror serve`: routes, access control (bodies: bodies.py).

- `POST /` is the Cloud Run Docker Mirror contract, byte for byte: the same JSON in, the
  same `{"ok":...}` out (one line), the same 400/413 plain-text answers for bad bodies.
- `/api/v1/jobs` (asynchronous copies), `/api/v1/mirrors` (the configured mirrors and their
  schedule), `/healthz`, `/readyz`, `/metrics`, `/openapi.json` and the dashboard at `/`.
- Who may call (see `access`): a foreign `Host` or `Origin` is refused (403) before
  anything else; with API tokens configured every route but `/healthz` and `/readyz` needs
  one (401 otherwise); API writes must be `application/json` (415). A malformed body is
  refused before anything is copied: over 1 MB (413, however it is sent), nested deeper
  than `MAX_DEPTH`, or with more than `max_entries` entries (413).
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import structlog
from aiohttp import web
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from pydantic import BaseModel

from ..metrics import MirrorMetrics
from ..settings.schedule import schedule_of
from ..state.db import StateDB
from ..workers.status import WorkersSnapshot
from .access import JSON_TYPE, OPEN_PATHS, TOKEN_COOKIE, AccessPolicy
from .bodies import DEFAULT_MAX_ENTRIES, BodyError, empty_object, parse_mirror_request, read_body
from .dashboard import RunPoint, dashboard_data, render_dashboard
from .jobs import JobManager
from .models import MAX_BODY, ApiError, JobAccepted, JobView, MirrorView
from .openapi import openapi_document
from .scheduled import ScheduledMirrors

log = structlog.get_logger("ocimirror.serve")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass
class Service:
    """Everything the handlers share: state database, jobs, the daemon and metrics."""

    state: StateDB
    jobs: JobManager
    metrics: MirrorMetrics
    daemon: ScheduledMirrors | None = None
    policy: AccessPolicy = field(default_factory=AccessPolicy)
    max_entries: int = DEFAULT_MAX_ENTRIES
    ready: bool = False
    started_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    #: With `execution: workers`: what the queue workers do (for metrics and dashboard).
    workers: Callable[[], Awaitable[WorkersSnapshot]] | None = None


async def _workers(service: Service) -> WorkersSnapshot | None:
    """The queue workers now, published in the metrics too (None: no workers here)."""
    if service.workers is None:
        return None
    snap = await service.workers()
    service.metrics.set_workers(
        [(w.name, w.alive, w.busy, w.done, w.last_heartbeat) for w in snap.workers],
        [(q.registry, q.todo, q.doing) for q in snap.queues],
    )
    return snap


SERVICE = web.AppKey("service", Service)
#: Set by the access middleware: the request carried a valid bearer token.
AUTHENTICATED = "ocimirror.authenticated"


def json_response(model: BaseModel | dict[str, Any] | list[Any], status: int = 200) -> web.Response:
    """A JSON answer from a model (fields that are None left out) or plain data."""
    if isinstance(model, BaseModel):
        text = model.model_dump_json(exclude_none=True)
    else:
        text = json.dumps(model, default=str)
    return web.Response(text=text, status=status, content_type="application/json")


def api_error(
    status: int, message: str, detail: list[dict[str, Any]] | None = None
) -> web.Response:
    """A JSON error answer of the API."""
    return json_response(ApiError(error=message, detail=detail), status)


# -- middleware -------------------------------------------------------------------------


def _bearer(request: web.Request) -> str | None:
    """The token of an `Authorization: Bearer TOKEN` header, if any."""
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    return token if scheme.lower() == "bearer" else None


def _unauthorized() -> web.Response:
    resp = api_error(
        401,
        "a valid API token is required (Authorization: Bearer TOKEN; for the dashboard,"
        " open /?token=TOKEN once)",
    )
    resp.headers["WWW-Authenticate"] = 'Bearer realm="ocimirror"'
    return resp


def _shown(value: str) -> str:
    """A header value quoted for an error message, cut short."""
    return repr(value[:100])


@web.middleware
async def access(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Refuse a foreign Host or Origin, and require a token where tokens are configured."""
    policy = request.app[SERVICE].policy
    if request.path not in OPEN_PATHS:
        host = request.headers.get("Host")
        if not policy.host_ok(host):
            return api_error(
                403,
                f"Host {_shown(host or '')} is not an address this service answers on"
                " (allow a name with --allowed-host)",
            )
        origin = request.headers.get("Origin")
        if not policy.origin_ok(origin, host):
            return api_error(
                403, f"cross-origin request refused: Origin {_shown(origin or '')} is foreign"
            )
    request[AUTHENTICATED] = False
    if policy.authenticates:
        given = _bearer(request)
        if given is not None:
            request[AUTHENTICATED] = await policy.bearer_ok(given)
        elif request.method in ("GET", "HEAD") and TOKEN_COOKIE in request.cookies:
            # Reading only: the dashboard (static tokens, never an ID token).
            request[AUTHENTICATED] = policy.token_ok(request.cookies[TOKEN_COOKIE])
        if request.method == "GET" and request.path == "/" and "token" in request.query:
            return _dashboard_login(request, policy)
        if policy.needs_token(request.path) and not request[AUTHENTICATED]:
            return _unauthorized()
    return await handler(request)


def _dashboard_login(request: web.Request, policy: AccessPolicy) -> web.Response:
    """`GET /?token=TOKEN`: keep the token in a cookie and show `/` without it in the URL."""
    if not policy.token_ok(request.query["token"]):
        return _unauthorized()
    resp = web.Response(status=303, headers={"Location": "/"})
    resp.set_cookie(
        TOKEN_COOKIE,
        request.query["token"].strip(),
        path="/",
        httponly=True,
        samesite="Strict",
        secure=request.secure,
    )
    return resp


def _wrong_type(request: web.Request) -> str | None:
    """Why an API write's Content-Type is refused, or None when it is application/json."""
    given = request.headers.get("Content-Type")
    if given is not None and request.content_type.lower() == JSON_TYPE:
        return None
    shown = "none" if given is None else _shown(given)
    return f"Content-Type must be {JSON_TYPE} (got {shown})"


# -- handlers -------------------------------------------------------------------------


async def cloud_run_mirror(request: web.Request) -> web.Response:
    """`POST /`: copy every entry, answer when done (the Cloud Run mirror contract)."""
    service = request.app[SERVICE]
    try:
        # Scheduler and curl callers send any type; a caller nobody authenticated, JSON.
        wrong = _wrong_type(request)
        if wrong is not None and not service.policy.any_body_type(request[AUTHENTICATED]):
            raise BodyError(415, wrong)
        body = await read_body(request)
        mirror_request = parse_mirror_request(body, service.max_entries)
    except BodyError as e:
        # As Go's http.Error writes it: plain text, one line.
        return web.Response(
            text=e.message + "\n",
            status=e.status,
            content_type="text/plain",
            charset="utf-8",
            headers={"X-Content-Type-Options": "nosniff"},
        )
    response = await service.jobs.run_sync(mirror_request)
    return web.Response(body=response.body(), content_type="application/json")


async def create_job(request: web.Request) -> web.Response:
    """`POST /api/v1/jobs`: start copying and answer 202 with the job's id at once."""
    service = request.app[SERVICE]
    wrong = _wrong_type(request)
    if wrong is not None:
        return api_error(415, wrong)
    try:
        body = await read_body(request)
        mirror_request = parse_mirror_request(body, service.max_entries)
    except BodyError as e:
        return api_error(e.status, e.message, e.detail)
    job, joined = await service.jobs.submit(mirror_request)
    url = f"/api/v1/jobs/{job.id}"
    accepted = JobAccepted(id=job.id, state=job.state, joined=joined, url=url)
    resp = json_response(accepted, 202)
    resp.headers["Location"] = url
    return resp


async def list_jobs(request: web.Request) -> web.Response:
    """`GET /api/v1/jobs`: recent jobs, newest first."""
    service = request.app[SERVICE]
    try:
        limit = int(request.query.get("limit", "50"))
    except ValueError:
        return api_error(400, "limit must be a whole number")
    if not 1 <= limit <= 1000:
        return api_error(400, "limit must be between 1 and 1000")
    jobs = await service.jobs.list(limit)
    return json_response({"jobs": [j.model_dump(mode="json") for j in jobs]})


async def get_job(request: web.Request) -> web.Response:
    """`GET /api/v1/jobs/{id}`: state, progress, per-entry results and errors."""
    service = request.app[SERVICE]
    job = await service.jobs.get(request.match_info["id"])
    if job is None:
        return api_error(404, "no such job")
    return json_response(job)


async def cancel_job(request: web.Request) -> web.Response:
    """`DELETE /api/v1/jobs/{id}`: cancel a queued or running job."""
    service = request.app[SERVICE]
    job_id = request.match_info["id"]
    job = await service.jobs.get(job_id)
    if job is None:
        return api_error(404, "no such job")
    if not await service.jobs.cancel(job_id):
        return api_error(409, f"job is {job.state}, not running")
    job = await service.jobs.get(job_id)
    assert job is not None
    return json_response(job, 202)


async def mirror_views(service: Service) -> list[MirrorView]:
    """The configured mirrors with their last run and next run."""
    daemon = service.daemon
    if daemon is None:
        return []
    # The daemon first, the database second, so a pass is never shown done before it is:
    # one asked for by the API counts as running from the moment it is asked for.
    busy = daemon.busy()
    names = [m.label for m in daemon.config.mirrors]
    # Named, the configured mirrors cost an index lookup each, however many runs there are.
    last, successes = await service.state.last_runs_and_successes(names)
    views = []
    for m in daemon.config.mirrors:
        run = last.get(m.label)
        # Asked for, running, or started since `busy` was read: all "running".
        running = m.label in busy or (run is not None and run.status == "running")
        views.append(
            MirrorView(
                name=m.label,
                sources=list(m.sources),
                targets=list(m.targets),
                schedule=schedule_of(m).describe(),
                running=running,
                last_run=(run.finished_at or run.started_at) if run else None,
                last_status="running" if running else run.status if run else None,
                last_error=run.error if run else None,
                last_success=successes.get(m.label),
                next_run=daemon.next_run.get(m.label),
            )
        )
    return views


async def list_mirrors(request: web.Request) -> web.Response:
    """`GET /api/v1/mirrors`: each configured mirror, its last run, result and next run."""
    views = await mirror_views(request.app[SERVICE])
    return json_response({"mirrors": [v.model_dump(mode="json") for v in views]})


async def sync_mirror(request: web.Request) -> web.Response:
    """`POST /api/v1/mirrors/{name}/sync`: run one configured mirror now."""
    service = request.app[SERVICE]
    name = request.match_info["name"]
    wrong = _wrong_type(request)
    if wrong is not None:
        return api_error(415, wrong)
    try:
        empty_object(await read_body(request))
    except BodyError as e:
        return api_error(e.status, e.message)
    if service.daemon is None:
        return api_error(404, "no mirrors are configured (start with -c FILE)")
    try:
        started = service.daemon.trigger(name)
    except KeyError:
        return api_error(404, f"no mirror named {name!r}")
    if not started:
        return api_error(409, f"mirror {name!r} is already running")
    return json_response({"mirror": name, "state": "started"}, 202)


async def dashboard(request: web.Request) -> web.Response:
    """`GET /`: the dashboard page."""
    service = request.app[SERVICE]
    mirrors = await mirror_views(service)
    recent = (
        await service.state.recent_runs(limit=20, mirrors=[m.name for m in mirrors])
        if mirrors
        else {}
    )
    runs = {
        m.name: [
            RunPoint(
                started_at=r.started_at,
                seconds=((r.finished_at or r.started_at) - r.started_at).total_seconds(),
                bytes=r.bytes,
                status=r.status,
            )
            for r in reversed(recent.get(m.name, []))
        ]
        for m in mirrors
    }
    jobs = await service.jobs.list(20)
    snap = await _workers(service)
    html = render_dashboard(
        mirrors=mirrors,
        runs=runs,
        jobs=jobs,
        now=datetime.now(UTC),
        workers=snap.to_json() if snap is not None else None,
    )
    return web.Response(text=html, content_type="text/html")


async def dashboard_json(request: web.Request) -> web.Response:
    """`GET /api/v1/dashboard`: what the dashboard page polls for live progress."""
    service = request.app[SERVICE]
    mirrors = await mirror_views(service)
    jobs: list[JobView] = await service.jobs.list(20)
    data = dashboard_data(mirrors, jobs)
    snap = await _workers(service)
    if snap is not None:
        data["workers"] = snap.to_json()
    return json_response(data)


async def healthz(_request: web.Request) -> web.Response:
    """Liveness: the process answers."""
    return json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    """Readiness: the state database answers and start-up is done."""
    service = request.app[SERVICE]
    if not service.ready:
        return json_response({"status": "starting"}, 503)
    try:
        await service.state.schema_version()
    except Exception as e:  # any database failure means not ready
        return json_response({"status": "unavailable", "error": str(e)}, 503)
    return json_response({"status": "ok"})


async def metrics(request: web.Request) -> web.Response:
    """Prometheus metrics."""
    service = request.app[SERVICE]
    await _workers(service)
    body = service.metrics.render()
    resp = web.Response(body=body)
    resp.headers["Content-Type"] = CONTENT_TYPE_LATEST
    return resp


async def openapi(_request: web.Request) -> web.Response:
    """The OpenAPI document of this API."""
    return json_response(openapi_document())


def make_app(service: Service) -> web.Application:
    """Build the application around a ready `Service`."""
    # Bodies are limited by read_body (413 with the original's message); this is a backstop.
    app = web.Application(middlewares=[access], client_max_size=MAX_BODY * 2)
    app[SERVICE] = service
    app.router.add_post("/", cloud_run_mirror)
    app.router.add_get("/", dashboard)
    app.router.add_get("/api/v1/dashboard", dashboard_json)
    app.router.add_post("/api/v1/jobs", create_job)
    app.router.add_get("/api/v1/jobs", list_jobs)
    app.router.add_get("/api/v1/jobs/{id}", get_job)
    app.router.add_delete("/api/v1/jobs/{id}", cancel_job)
    app.router.add_get("/api/v1/mirrors", list_mirrors)
    app.router.add_post("/api/v1/mirrors/{name}/sync", sync_mirror)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/openapi.json", openapi)
    return app
