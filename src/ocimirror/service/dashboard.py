"""The dashboard of `ocimirror serve`: one server-rendered HTML page, live without a build step.

`render_dashboard` writes a complete HTML5 document: a header with counts, a card per
configured mirror (status colour, sources → targets, schedule, last and next run, last
error, an inline SVG sparkline of recent runs), the running jobs with progress bars and
the recent jobs, and with `execution: workers` the queue workers (alive, busy, copies
done and failed, last heartbeat) and the queue depth per registry. Everything is inline (CSS, SVG, a small script); nothing is fetched from
elsewhere: the CSS and the script are package files (`static/dashboard.css` and
`static/dashboard.js`), read once and put inline. The script polls `refresh_url`, which
serves `dashboard_data(...)`, every 2 s and updates job progress and mirror status in
place (the workers' table too); when a poll fails it shows a "disconnected" badge and keeps the page as it is.

Every string that comes from configuration or from a run (names, references, errors) is
HTML-escaped here, and the script only ever sets `textContent` and attributes.
"""

from __future__ import annotations

import functools
import html
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import resources
from typing import Any

from .models import JobView, MirrorView

#: Longest preview of an error shown in place; the full text is in the `title` tooltip.
ERROR_PREVIEW = 180
#: Most runs drawn in a mirror's chart (the most recent ones).
CHART_RUNS = 40
#: Most jobs listed under "Recent jobs".
RECENT_JOBS = 15
#: Milliseconds between two polls of the refresh URL.
POLL_MS = 2000

_ACTIVE_JOB_STATES = ("running", "queued")


@dataclass(frozen=True, slots=True)
class RunPoint:
    """One past run of a mirror, as the dashboard's chart draws it."""

    started_at: datetime
    seconds: float
    bytes: int
    status: str


def dashboard_data(mirrors: Sequence[MirrorView], jobs: Sequence[JobView]) -> dict[str, Any]:
    """The JSON the dashboard polls: `{"mirrors": [...], "jobs": [...]}` from the models."""
    return {
        "mirrors": [m.model_dump(mode="json") for m in mirrors],
        "jobs": [j.model_dump(mode="json") for j in jobs],
    }


def render_dashboard(
    *,
    mirrors: Sequence[MirrorView],
    runs: Mapping[str, Sequence[RunPoint]],
    jobs: Sequence[JobView],
    now: datetime,
    title: str = "ocimirror",
    refresh_url: str | None = "/api/v1/dashboard",
    workers: Mapping[str, Any] | None = None,
) -> str:
    """The dashboard as a complete HTML5 document (inline CSS, SVG and script).

    `workers` is the dashboard data's `workers` part (`execution: workers`), else None.
    """
    now = _utc(now)
    tones = [_mirror_tone(m) for m in mirrors]
    counts = {
        "mirrors": len(mirrors),
        "ok": tones.count("ok"),
        "warn": sum(
            1 for m, t in zip(mirrors, tones, strict=True) if t == "warn" and not m.running
        ),
        "failing": tones.count("bad"),
        "running": sum(1 for j in jobs if j.state == "running"),
    }
    active = [j for j in jobs if j.state in _ACTIVE_JOB_STATES]
    finished = sorted(
        (j for j in jobs if j.state not in _ACTIVE_JOB_STATES),
        key=lambda j: _utc(j.finished_at or j.started_at or j.created_at),
        reverse=True,
    )[:RECENT_JOBS]
    overall = "bad" if counts["failing"] else "warn" if counts["warn"] else "ok"
    if not mirrors:
        overall = "idle"

    cards = "\n".join(_mirror_card(i, m, runs.get(m.name, ()), now) for i, m in enumerate(mirrors))
    if not mirrors:
        cards = (
            '<p class="empty">No mirrors are configured. '
            "Start <code>ocimirror serve</code> with <code>-c FILE</code> to schedule some.</p>"
        )
    running_rows = "\n".join(_job_row(j, now) for j in active)
    recent_rows = "\n".join(_recent_row(j, now) for j in finished)
    e = _esc
    foot = f"Rendered {e(_absolute(now))}" + (
        f" · live updates every {POLL_MS // 1000} s from <code>{e(refresh_url)}</code>"
        if refresh_url
        else ""
    )
    live = (
        '<span class="live" id="live" title="Updates every 2 s">'
        '<span class="live-dot"></span><span class="live-text">live</span></span>'
        '<span class="conn" id="conn" hidden title="The last update failed; retrying">'
        "disconnected</span>"
        if refresh_url
        else ""
    )
    return f"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="color-scheme" content="light dark">
<title>{e(title)}</title>
<link rel="icon" id="favicon" href="{_favicon(overall)}">
<style>
{_asset("dashboard.css")}</style>
</head>
<body data-refresh="{e(refresh_url or "")}" data-now="{e(now.isoformat())}" data-poll="{POLL_MS}">
<header class="top">
  <div class="brand">
    <h1>{e(title)}</h1>
    {live}
  </div>
  <div class="stats" aria-label="Summary">
    <div class="stat"><span class="num" data-count="mirrors">{counts["mirrors"]}</span><span class="lbl">mirrors</span></div>
    <div class="stat tone-ok"><span class="num" data-count="ok">{counts["ok"]}</span><span class="lbl">ok</span></div>
    <div class="stat tone-warn{"" if counts["warn"] else " zero"}"><span class="num" data-count="warn">{counts["warn"]}</span><span class="lbl">partial</span></div>
    <div class="stat tone-bad{"" if counts["failing"] else " zero"}"><span class="num" data-count="failing">{counts["failing"]}</span><span class="lbl">failing</span></div>
    <div class="stat tone-run{"" if counts["running"] else " zero"}"><span class="num" data-count="running">{counts["running"]}</span><span class="lbl">jobs running</span></div>
  </div>
  <div class="clock">
    <time id="clock" datetime="{e(now.isoformat())}">{e(_absolute(now))}</time>
    <span class="updated" id="updated">rendered {e(now.strftime("%H:%M:%S"))} UTC</span>
  </div>
</header>
<main>
<section class="block" aria-labelledby="h-mirrors">
  <h2 id="h-mirrors">Mirrors</h2>
  <div class="mirrors">
{cards}
  </div>
</section>
<section class="block" aria-labelledby="h-running">
  <h2 id="h-running">Running jobs</h2>
  <ul class="jobs" id="running-jobs">
{running_rows}
  </ul>
  <p class="empty" id="no-running"{"" if not active else " hidden"}>No jobs running.</p>
</section>
<section class="block" aria-labelledby="h-recent">
  <h2 id="h-recent">Recent jobs</h2>
  <div class="table-wrap" id="recent-wrap"{"" if finished else " hidden"}>
  <table class="recent">
    <thead><tr><th>State</th><th>Job</th><th>What</th><th class="r">Entries</th><th class="r">Copied</th><th class="r">Took</th><th>Finished</th><th>Errors</th></tr></thead>
    <tbody id="recent-jobs">
{recent_rows}
    </tbody>
  </table>
  </div>
  <p class="empty" id="no-recent"{"" if not finished else " hidden"}>No finished jobs yet.</p>
</section>
{_workers_section(workers, now)}
</main>
<footer class="foot">{foot}</footer>
<template id="tpl-job">{_job_row(None, now)}</template>
<template id="tpl-recent">{_recent_row(None, now)}</template>
<script>
{_js()}</script>
</body>
</html>
"""


# --- formatting ---------------------------------------------------------------------------


def _esc(value: object) -> str:
    """HTML-escape anything (quotes too, so it is safe in attributes)."""
    return html.escape(str(value), quote=True)


def _utc(dt: datetime) -> datetime:
    """An aware UTC datetime; a naive one is taken to be UTC already."""
    return dt.replace(tzinfo=UTC) if dt.tzinfo is None else dt.astimezone(UTC)


def _absolute(dt: datetime) -> str:
    """`2024-05-01 12:00:00 UTC`."""
    return _utc(dt).strftime("%Y-%m-%d %H:%M:%S UTC")


def _span(seconds: float) -> str:
    """A coarse length of time: `40 s`, `12 min`, `3 h`, `2 days`."""
    s = int(abs(seconds))
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min"
    if s < 86400:
        return f"{s // 3600} h"
    days = s // 86400
    return "1 day" if days == 1 else f"{days} days"


def _relative(dt: datetime, now: datetime, *, future: bool = False) -> str:
    """`12 min ago`, `in 5 min`, `just now`, or `due now` for a next run already past."""
    delta = (_utc(dt) - now).total_seconds()
    if future and delta <= 0:
        return "due now"
    if abs(delta) < 5:
        return "just now"
    return f"in {_span(delta)}" if delta > 0 else f"{_span(delta)} ago"


def _duration(seconds: float) -> str:
    """A precise length of time: `0.4 s`, `34 s`, `3 min 4 s`, `1 h 2 min`."""
    if seconds < 10:
        return f"{seconds:.1f} s"
    s = round(seconds)
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60} s"
    return f"{s // 3600} h {s % 3600 // 60} min"


def _human_bytes(n: int) -> str:
    """`512 B`, `12.3 KiB`, `1.2 GiB`."""
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"  # pragma: no cover - the loop always returns


def _preview(text: str, limit: int = ERROR_PREVIEW) -> str:
    """The text on one line, cut at `limit` characters with an ellipsis."""
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 1].rstrip() + "…"


def _time(dt: datetime | None, now: datetime, *, kind: str, empty: str) -> str:
    """A `<time>` with relative text, the absolute UTC time as its title; `empty` if None."""
    if dt is None:
        return (
            f'<time data-rel="{kind}" data-empty="{_esc(empty)}" class="none">{_esc(empty)}</time>'
        )
    text = _relative(dt, now, future=kind == "future")
    return (
        f'<time data-rel="{kind}" data-empty="{_esc(empty)}" datetime="{_esc(_utc(dt).isoformat())}"'
        f' title="{_esc(_absolute(dt))}">{_esc(text)}</time>'
    )


# --- status -------------------------------------------------------------------------------


def _tone(status: str | None) -> str:
    """The colour of a status: ok (green), warn (amber), bad (red) or idle (grey)."""
    if status in ("ok", "succeeded", "done"):
        return "ok"
    if status in ("partial", "running"):
        return "warn"
    if status in ("failed", "interrupted"):
        return "bad"
    return "idle"


def _mirror_status(m: MirrorView) -> str:
    """The word a mirror's badge shows."""
    if m.running:
        return "running"
    return m.last_status or "never run"


def _mirror_tone(m: MirrorView) -> str:
    """A mirror's colour: running counts as amber whatever the last result was."""
    return "warn" if m.running else _tone(m.last_status)


def _favicon(tone: str) -> str:
    """A data: URL of a round icon in the page's overall colour (no request for a favicon)."""
    colour = {"ok": "%231f9d55", "warn": "%23d48806", "bad": "%23d83a34"}.get(tone, "%239aa3ae")
    return (
        "data:image/svg+xml,%3Csvg xmlns='http://www.w3.org/2000/svg' viewBox='0 0 16 16'%3E"
        f"%3Ccircle cx='8' cy='8' r='7' fill='{colour}'/%3E%3C/svg%3E"
    )


# --- mirrors ------------------------------------------------------------------------------


def _refs(refs: Sequence[str], limit: int = 4) -> str:
    """References as chips; past `limit`, a `+N more` chip lists the rest in its title."""
    shown = [
        f'<li><code class="ref" title="{_esc(r)}">{_esc(r).replace("/", "/<wbr>")}</code></li>'
        for r in refs[:limit]
    ]
    if len(refs) > limit:
        rest = "\n".join(refs[limit:])
        shown.append(
            f'<li><span class="more" title="{_esc(rest)}">+{len(refs) - limit} more</span></li>'
        )
    if not refs:
        shown.append('<li><span class="more">none</span></li>')
    return "".join(shown)


def _mirror_card(index: int, m: MirrorView, runs: Sequence[RunPoint], now: datetime) -> str:
    """One mirror's card."""
    tone = _mirror_tone(m)
    status = _mirror_status(m)
    e = _esc
    error = m.last_error or ""
    return f"""<article class="mirror tone-{tone}{" is-running" if m.running else ""}" data-mirror="{e(m.name)}" data-status="{e(status)}" data-tone="{tone}">
  <header class="mh">
    <span class="dot" aria-hidden="true"></span>
    <h3 class="name" title="{e(m.name)}">{e(m.name)}</h3>
    <span class="pill" data-field="status">{e(status)}</span>
  </header>
  <div class="flow">
    <span class="k">from</span><ul class="refs" aria-label="Sources">{_refs(m.sources)}</ul>
    <span class="k">to</span><ul class="refs" aria-label="Targets">{_refs(m.targets)}</ul>
  </div>
  <dl class="facts">
    <div><dt>Schedule</dt><dd class="schedule">{e(m.schedule)}</dd></div>
    <div><dt>Last run</dt><dd data-field="last_run">{_time(m.last_run, now, kind="past", empty="never")}</dd></div>
    <div><dt>Next run</dt><dd data-field="next_run">{_time(m.next_run, now, kind="future", empty="not scheduled")}</dd></div>
    <div><dt>Last success</dt><dd data-field="last_success">{_time(m.last_success, now, kind="past", empty="never")}</dd></div>
  </dl>
  <p class="error" data-field="last_error" title="{e(error)}"{"" if error else " hidden"}><span class="error-text">{e(_preview(error))}</span></p>
  {_chart(index, m.name, runs)}
</article>"""


def _chart(index: int, name: str, runs: Sequence[RunPoint]) -> str:
    """An inline SVG sparkline: a bar per run for bytes, a line with dots for seconds."""
    points = sorted(runs, key=lambda r: _utc(r.started_at))[-CHART_RUNS:]
    if not points:
        return '<div class="chart chart-empty">No runs recorded yet.</div>'
    width, height, top = 300.0, 64.0, 6.0
    usable = height - top
    n = len(points)
    slot = width / n
    bar_w = min(slot * 0.64, 22.0)
    radius = 2.6 if n <= 16 else 1.9 if n <= 28 else 1.4
    top_b = max(p.bytes for p in points)
    top_s = max(p.seconds for p in points)
    max_b = top_b or 1
    max_s = top_s or 1.0
    bars: list[str] = []
    dots: list[str] = []
    line: list[str] = []
    for i, p in enumerate(points):
        cx = (i + 0.5) * slot
        h = max(2.0, p.bytes / max_b * usable) if p.bytes > 0 else 1.0
        tip = (
            f"{_absolute(p.started_at)} · {p.status} · {_human_bytes(p.bytes)}"
            f" in {_duration(p.seconds)}"
        )
        bars.append(
            f'<rect class="bar tone-{_tone(p.status)}" x="{cx - bar_w / 2:.1f}" y="{height - h:.1f}"'
            f' width="{bar_w:.1f}" height="{h:.1f}" rx="1.5"><title>{_esc(tip)}</title></rect>'
        )
        y = height - 1.5 - p.seconds / max_s * (usable - 3)
        line.append(f"{cx:.1f},{y:.1f}")
        dots.append(
            f'<circle class="pt tone-{_tone(p.status)}" cx="{cx:.1f}" cy="{y:.1f}" r="{radius}">'
            f"<title>{_esc(tip)}</title></circle>"
        )
    last = points[-1]
    title_id = f"chart-{index}-t"
    desc_id = f"chart-{index}-d"
    desc = (
        f"{n} runs. Largest copy {_human_bytes(top_b)}, longest run {_duration(top_s)}. Last run {last.status}:"
        f" {_human_bytes(last.bytes)} in {_duration(last.seconds)}."
    )
    path = f'<polyline class="secs" points="{" ".join(line)}"/>' if n > 1 else ""
    return f"""<figure class="chart">
    <svg viewBox="0 0 {width:.0f} {height:.0f}" role="img" aria-labelledby="{title_id} {desc_id}" preserveAspectRatio="xMidYMid meet">
      <title id="{title_id}">Recent runs of {_esc(name)}: bytes copied (bars) and duration (line)</title>
      <desc id="{desc_id}">{_esc(desc)}</desc>
      <line class="base" x1="0" y1="{height - 0.5}" x2="{width:.0f}" y2="{height - 0.5}"/>
      {"".join(bars)}
      {path}
      {"".join(dots)}
    </svg>
    <figcaption class="legend"><span class="item"><span class="key key-bar"></span>bytes (max {_esc(_human_bytes(top_b))})</span><span class="item"><span class="key key-line"></span>time (max {_esc(_duration(top_s))})</span><span class="item runs">{n} run{"" if n == 1 else "s"}</span></figcaption>
  </figure>"""


# --- jobs ---------------------------------------------------------------------------------


def _job_label(job: JobView) -> str:
    """What a job copies: `SRC → DST`, `+N more` when there are several."""
    req = job.request
    if isinstance(req.get("mirror"), str):
        return f"mirror {req['mirror']}"
    entries = req.get("mirrors")
    if isinstance(entries, list) and entries and isinstance(entries[0], dict):
        first = f"{entries[0].get('src', '?')} → {entries[0].get('dst', '?')}"
        return first if len(entries) == 1 else f"{first} +{len(entries) - 1} more"
    if job.entries:
        first = job.entries[0].name
        return first if len(job.entries) == 1 else f"{first} +{len(job.entries) - 1} more"
    return ""


def _in_flight(job: JobView) -> str:
    """The entries a job is copying right now."""
    names = [e.name for e in job.entries if e.status == "running"]
    if not names:
        return ""
    shown = ", ".join(names[:3])
    return f"copying {shown}" + (f" +{len(names) - 3} more" if len(names) > 3 else "")


def _percent(done: int, total: int) -> float:
    """done/total as a percentage in [0, 100]."""
    return 0.0 if total <= 0 else max(0.0, min(100.0, done * 100.0 / total))


def _job_row(job: JobView | None, now: datetime) -> str:
    """A running job with its progress bar (`None`: the empty template the script fills)."""
    e = _esc
    if job is None:
        jid, state, done, total, nbytes, label, flight, started = "", "running", 0, 0, 0, "", "", ""
    else:
        jid, state = job.id, job.state
        done, total, nbytes = job.progress.done, job.progress.total, job.progress.bytes
        label, flight = _job_label(job), _in_flight(job)
        started = _time(job.started_at or job.created_at, now, kind="past", empty="")
    pct = _percent(done, total)
    return f"""<li class="job tone-{_tone(state)}" data-job="{e(jid)}" data-state="{e(state)}">
  <div class="job-head">
    <span class="pill" data-field="state">{e(state)}</span>
    <code class="job-id" title="{e(jid)}">{e(jid[:12])}</code>
    <span class="job-label" title="{e(label)}">{e(label)}</span>
    <span class="job-started">started {started}</span>
  </div>
  <div class="progress" role="progressbar" aria-label="Progress of job {e(jid)}" aria-valuemin="0" aria-valuemax="{total}" aria-valuenow="{done}"><span class="progress-fill" style="width:{pct:.1f}%"></span></div>
  <div class="job-meta"><span class="job-count">{done}/{total}</span> entries · <span class="job-bytes">{e(_human_bytes(nbytes))}</span> copied · <span class="job-pct">{pct:.0f}%</span></div>
  <div class="job-now"{"" if flight else " hidden"}>{e(flight)}</div>
</li>"""


def _recent_row(job: JobView | None, now: datetime) -> str:
    """A finished job as a table row (`None`: the empty template the script fills)."""
    e = _esc
    if job is None:
        jid, state, done, total, nbytes = "", "succeeded", 0, 0, 0
        label = took = finished = err = ""
        n_err = 0
    else:
        jid, state = job.id, job.state
        done, total, nbytes = job.progress.done, job.progress.total, job.progress.bytes
        label = _job_label(job)
        took = (
            _duration((_utc(job.finished_at) - _utc(job.started_at)).total_seconds())
            if job.finished_at and job.started_at
            else ""
        )
        end = job.finished_at or job.started_at or job.created_at
        finished = _time(end, now, kind="past", empty="")
        err = job.errors[0].error if job.errors else ""
        n_err = len(job.errors)
    more = f" (+{n_err - 1})" if n_err > 1 else ""
    return f"""<tr class="tone-{_tone(state)}" data-job="{e(jid)}" data-state="{e(state)}">
  <td><span class="pill" data-field="state">{e(state)}</span></td>
  <td><code class="job-id" title="{e(jid)}">{e(jid[:12])}</code></td>
  <td class="what" title="{e(label)}">{e(label)}</td>
  <td class="r job-count">{done}/{total}</td>
  <td class="r job-bytes">{e(_human_bytes(nbytes))}</td>
  <td class="r job-took">{e(took)}</td>
  <td class="job-finished">{finished}</td>
  <td class="job-error" title="{e(err)}">{e(_preview(err, 90))}{e(more)}</td>
</tr>"""


def _worker_row(w: Mapping[str, Any] | None, now: datetime) -> str:
    """A worker as a table row (`None`: the empty template the script fills)."""
    e = _esc
    w = w or {}
    alive, busy = bool(w.get("alive")), int(w.get("busy") or 0)
    state = "busy" if alive and busy else "idle" if alive else "gone"
    tone = "warn" if state == "busy" else "ok" if state == "idle" else "bad"
    beat = w.get("last_heartbeat")
    when = datetime.fromisoformat(beat) if isinstance(beat, str) else None
    return f"""<tr class="tone-{tone}" data-worker="{e(w.get("name", ""))}">
  <td><span class="pill" data-field="state">{e(state)}</span></td>
  <td><code class="worker-name">{e(w.get("name", ""))}</code></td>
  <td class="r worker-busy">{busy}</td>
  <td class="r worker-done">{int(w.get("done") or 0)}</td>
  <td class="r worker-failed">{int(w.get("failed") or 0)}</td>
  <td class="worker-beat">{_time(when, now, kind="past", empty="")}</td>
</tr>"""


def _queue_row(q: Mapping[str, Any] | None) -> str:
    """A registry's queue depth as a table row (`None`: the empty template)."""
    q = q or {}
    return f"""<tr data-queue="{_esc(q.get("registry", ""))}">
  <td><code class="queue-registry">{_esc(q.get("registry", ""))}</code></td>
  <td class="r queue-todo">{int(q.get("todo") or 0)}</td>
  <td class="r queue-doing">{int(q.get("doing") or 0)}</td>
</tr>"""


def _workers_section(workers: Mapping[str, Any] | None, now: datetime) -> str:
    """The queue workers and the queue depth per registry (nothing without workers)."""
    if workers is None:
        return ""
    rows = "\n".join(_worker_row(w, now) for w in workers.get("workers") or [])
    queues = "\n".join(_queue_row(q) for q in workers.get("queues") or [])
    return f"""<section class="block" aria-labelledby="h-workers" id="workers">
  <h2 id="h-workers">Workers</h2>
  <div class="table-wrap">
  <table class="recent">
    <thead><tr><th>State</th><th>Worker</th><th class="r">Copying</th><th class="r">Done</th><th class="r">Failed</th><th>Last heartbeat</th></tr></thead>
    <tbody id="worker-rows">
{rows}
    </tbody>
  </table>
  </div>
  <p class="empty" id="no-workers"{"" if not rows else " hidden"}>No workers have reported.</p>
  <div class="table-wrap">
  <table class="recent">
    <thead><tr><th>Queue (destination registry)</th><th class="r">To do</th><th class="r">Being done</th></tr></thead>
    <tbody id="queue-rows">
{queues}
    </tbody>
  </table>
  </div>
  <template id="tpl-worker">{_worker_row(None, now)}</template>
  <template id="tpl-queue">{_queue_row(None)}</template>
</section>"""


# --- inline assets ------------------------------------------------------------------------


@functools.cache
def _asset(name: str) -> str:
    """A file of `static/` (the page's CSS and script), read from the package once."""
    return resources.files(__package__).joinpath("static", name).read_text(encoding="utf-8")


@functools.cache
def _js() -> str:
    """The script, with the limits it shares with the server-side rendering put in."""
    return (
        _asset("dashboard.js")
        .replace("__PREVIEW__", str(ERROR_PREVIEW))
        .replace("__RECENT__", str(RECENT_JOBS))
    )
