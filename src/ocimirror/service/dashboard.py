"""The dashboard of `ocimirror serve`: one server-rendered HTML page, live without a build step.

`render_dashboard` writes a complete HTML5 document: a header with counts, a card per
configured mirror (status colour, sources → targets, schedule, last and next run, last
error, an inline SVG sparkline of recent runs), the running jobs with progress bars and
the recent jobs. Everything is inline (CSS, SVG, a small script); nothing is fetched from
elsewhere. The script polls `refresh_url`, which serves `dashboard_data(...)`, every 2 s
and updates job progress and mirror status in place; when a poll fails it shows a
"disconnected" badge and keeps the page as it is.

Every string that comes from configuration or from a run (names, references, errors) is
HTML-escaped here, and the script only ever sets `textContent` and attributes.
"""

from __future__ import annotations

import html
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
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
) -> str:
    """The dashboard as a complete HTML5 document (inline CSS, SVG and script)."""
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
<style>{_CSS}</style>
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
</main>
<footer class="foot">{foot}</footer>
<template id="tpl-job">{_job_row(None, now)}</template>
<template id="tpl-recent">{_recent_row(None, now)}</template>
<script>{_JS}</script>
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


# --- inline assets ------------------------------------------------------------------------

_CSS = """
:root{--bg:#f4f6f9;--card:#fff;--fg:#17202c;--muted:#5f6b7b;--faint:#8a94a3;--line:#e2e6ec;
--chip:#eef1f5;--ok:#1f9d55;--warn:#d48806;--bad:#d83a34;--idle:#9aa3ae;--accent:#2f6bdb;
--run:#2f6bdb;--shadow:0 1px 2px rgba(16,24,40,.05),0 1px 3px rgba(16,24,40,.07);
--errbg:#fdf0ef;color-scheme:light dark}
@media (prefers-color-scheme:dark){:root{--bg:#0d1117;--card:#161b22;--fg:#e6edf3;
--muted:#9aa5b1;--faint:#6e7681;--line:#2b323c;--chip:#21262d;--ok:#3fb950;--warn:#e3b341;
--bad:#f85149;--idle:#6e7681;--accent:#79a8ff;--run:#79a8ff;--shadow:none;--errbg:#2a1618}}
*{box-sizing:border-box}
html{-webkit-text-size-adjust:100%}
body{margin:0;background:var(--bg);color:var(--fg);
font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,"DejaVu Sans",sans-serif}
code,.ref,.schedule{font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,"DejaVu Sans Mono",monospace;font-size:12.5px}
[hidden]{display:none!important}
.tone-ok{--tone:var(--ok)}.tone-warn{--tone:var(--warn)}.tone-bad{--tone:var(--bad)}
.tone-idle{--tone:var(--idle)}.tone-run{--tone:var(--run)}
.top{display:flex;flex-wrap:wrap;align-items:center;gap:14px 28px;padding:16px 24px;
background:var(--card);border-bottom:1px solid var(--line);position:sticky;top:0;z-index:2}
.brand{display:flex;align-items:center;gap:12px;min-width:0}
.brand h1{margin:0;font-size:20px;font-weight:650;letter-spacing:-.01em;white-space:nowrap;
overflow:hidden;text-overflow:ellipsis}
.live{display:inline-flex;align-items:center;gap:6px;font-size:12px;color:var(--muted)}
.live-dot{width:8px;height:8px;border-radius:50%;background:var(--ok);
box-shadow:0 0 0 0 color-mix(in srgb,var(--ok) 60%,transparent);animation:pulse 2s infinite}
@keyframes pulse{70%{box-shadow:0 0 0 6px transparent}100%{box-shadow:0 0 0 0 transparent}}
.conn{font-size:12px;font-weight:600;color:#fff;background:var(--bad);padding:2px 8px;border-radius:999px}
body.offline .live{display:none}
.stats{display:flex;flex-wrap:wrap;gap:8px;flex:1}
.stat{display:flex;align-items:baseline;gap:6px;padding:6px 12px;border-radius:10px;
background:var(--chip);border:1px solid transparent}
.stat[class*="tone-"]{background:color-mix(in srgb,var(--tone) 12%,transparent);
border-color:color-mix(in srgb,var(--tone) 30%,transparent)}
.stat[class*="tone-"] .num{color:var(--tone)}
.stat.zero{background:var(--chip);border-color:transparent}
.stat.zero .num{color:var(--faint)}
.num{font-size:20px;font-weight:700;font-variant-numeric:tabular-nums}
.lbl{color:var(--muted);font-size:12.5px}
.clock{display:flex;flex-direction:column;align-items:flex-end;font-size:12.5px;color:var(--muted);
font-variant-numeric:tabular-nums}
.clock time{color:var(--fg);font-weight:600}
main{max-width:1400px;margin:0 auto;padding:8px 24px 24px}
.block h2{font-size:13px;text-transform:uppercase;letter-spacing:.06em;color:var(--muted);
font-weight:650;margin:22px 0 10px}
.mirrors{display:grid;grid-template-columns:repeat(auto-fill,minmax(360px,1fr));gap:14px}
.mirror{background:var(--card);border:1px solid var(--line);border-left:4px solid var(--tone);
border-radius:12px;padding:14px 16px 12px;box-shadow:var(--shadow);display:flex;
flex-direction:column;gap:10px;min-width:0;container:card/inline-size}
.mh{display:flex;align-items:center;gap:8px;min-width:0}
.dot{width:10px;height:10px;border-radius:50%;background:var(--tone);flex:none}
.is-running .dot{animation:blink 1.2s ease-in-out infinite}
@keyframes blink{50%{opacity:.3}}
.name{margin:0;font-size:15.5px;font-weight:650;flex:1;min-width:0;white-space:nowrap;
overflow:hidden;text-overflow:ellipsis}
.pill{display:inline-block;font-size:11.5px;font-weight:650;line-height:18px;padding:0 8px;
border-radius:999px;color:var(--tone);background:color-mix(in srgb,var(--tone) 14%,transparent);
border:1px solid color-mix(in srgb,var(--tone) 35%,transparent);white-space:nowrap}
.flow{display:grid;grid-template-columns:auto minmax(0,1fr);gap:5px 10px;align-items:baseline}
.flow .k{font-size:11px;text-transform:uppercase;letter-spacing:.05em;color:var(--faint);text-align:right}
.refs{list-style:none;margin:0;padding:0;display:flex;flex-wrap:wrap;gap:4px;min-width:0}
.refs li{min-width:0;max-width:100%}
.ref{display:inline-block;max-width:100%;background:var(--chip);padding:1px 7px;border-radius:5px;
overflow-wrap:anywhere;line-height:19px}
.more{font-size:12px;color:var(--muted)}
.facts{display:grid;grid-template-columns:repeat(2,minmax(0,1fr));gap:6px 14px;margin:0}
@container card (min-width:560px){.facts{grid-template-columns:repeat(4,minmax(0,1fr))}}
.facts div{min-width:0;max-width:100%}
.facts dt{font-size:11px;text-transform:uppercase;letter-spacing:.05em;color:var(--faint);white-space:nowrap}
.facts dd{margin:0;white-space:nowrap;overflow:hidden;text-overflow:ellipsis}
.facts time[title]{text-decoration:underline dotted var(--faint);text-underline-offset:3px;cursor:help}
.none{color:var(--faint)}
.error{margin:0;padding:7px 10px;border-radius:8px;background:var(--errbg);color:var(--bad);
border:1px solid color-mix(in srgb,var(--bad) 25%,transparent);
font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,"DejaVu Sans Mono",monospace;font-size:12px;
cursor:help}
.error-text{overflow-wrap:anywhere;display:-webkit-box;-webkit-line-clamp:3;-webkit-box-orient:vertical;
overflow:hidden}
.chart{margin:0;padding-top:2px}
.chart svg{display:block;width:100%;height:auto;max-height:84px;overflow:visible}
.chart .bar{fill:var(--tone);opacity:.55}
.chart .bar:hover{opacity:.9}
@media (prefers-color-scheme:dark){.chart .bar{opacity:.7}.chart .bar:hover{opacity:1}}
.chart .secs{fill:none;stroke:var(--fg);stroke-width:1.4;stroke-linejoin:round;opacity:.55}
.chart .pt{fill:var(--card);stroke:var(--tone);stroke-width:1.6}
.chart .base{stroke:var(--line);stroke-width:1}
.chart-empty{font-size:12.5px;color:var(--faint);border:1px dashed var(--line);border-radius:8px;
padding:18px;text-align:center}
.legend{display:flex;flex-wrap:wrap;align-items:center;gap:2px 14px;margin-top:6px;font-size:11.5px;
color:var(--muted)}
.legend .item{display:inline-flex;align-items:center;gap:5px;white-space:nowrap}
.legend .runs{margin-left:auto;color:var(--faint)}
.key{display:inline-block;width:9px;height:10px;border-radius:2px;background:var(--muted);opacity:.55}
.key-line{height:2px;width:12px;background:var(--fg)}
.jobs{list-style:none;margin:0;padding:0;display:grid;gap:10px}
.job{background:var(--card);border:1px solid var(--line);border-radius:12px;padding:12px 16px;
box-shadow:var(--shadow);display:grid;gap:8px;transition:opacity .4s}
.job.leaving{opacity:0}
.job-head{display:flex;align-items:center;gap:10px;min-width:0;flex-wrap:wrap}
.job-id{color:var(--muted)}
.job-label{flex:1 1 200px;min-width:0;white-space:nowrap;overflow:hidden;text-overflow:ellipsis}
.job-started{color:var(--muted);font-size:12.5px}
.progress{height:10px;border-radius:999px;background:var(--chip);overflow:hidden}
.progress-fill{display:block;height:100%;border-radius:999px;background:var(--run);
transition:width .6s ease}
.job[data-state="queued"] .progress-fill{background:var(--idle)}
.job-meta{font-size:12.5px;color:var(--muted);font-variant-numeric:tabular-nums}
.job-count{color:var(--fg);font-weight:650}
.job-now{font-size:12px;color:var(--muted);font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,"DejaVu Sans Mono",monospace;
white-space:nowrap;overflow:hidden;text-overflow:ellipsis}
.table-wrap{overflow-x:auto;background:var(--card);border:1px solid var(--line);border-radius:12px;
box-shadow:var(--shadow)}
.recent{width:100%;border-collapse:collapse;font-size:13px}
.recent th{text-align:left;font-size:11px;text-transform:uppercase;letter-spacing:.05em;
color:var(--faint);font-weight:600;padding:9px 12px;border-bottom:1px solid var(--line)}
.recent td{padding:8px 12px;border-bottom:1px solid var(--line);vertical-align:middle;white-space:nowrap}
.recent tr:last-child td{border-bottom:0}
.recent .r{text-align:right;font-variant-numeric:tabular-nums}
.recent .what{max-width:340px;overflow:hidden;text-overflow:ellipsis}
.recent .job-error{color:var(--bad);max-width:320px;overflow:hidden;text-overflow:ellipsis;font-size:12.5px}
.empty{color:var(--faint);margin:6px 0}
.foot{max-width:1400px;margin:0 auto;padding:4px 24px 24px;color:var(--faint);font-size:12px}
@media (max-width:720px){.top{padding:12px 14px;position:static}.brand{flex:1}
.stats{order:3;flex-basis:100%}main{padding:4px 14px 18px}
.mirrors{grid-template-columns:1fr}
.clock{align-items:flex-start}}
"""

_JS = """
(function () {
  "use strict";
  var body = document.body;
  var url = body.getAttribute("data-refresh");
  var every = parseInt(body.getAttribute("data-poll"), 10) || 2000;
  var t0 = performance.now();
  var base = parseTime(body.getAttribute("data-now"));
  if (isNaN(base)) { base = Date.now(); }
  var PREVIEW = __PREVIEW__, RECENT = __RECENT__;

  function now() { return base + (performance.now() - t0); }
  function parseTime(s) {
    if (!s) { return NaN; }
    if (!/(Z|[+-]\\d\\d:?\\d\\d)$/i.test(s)) { s += "Z"; }
    return Date.parse(s);
  }
  function span(sec) {
    var s = Math.floor(Math.abs(sec));
    if (s < 60) { return s + " s"; }
    if (s < 3600) { return Math.floor(s / 60) + " min"; }
    if (s < 86400) { return Math.floor(s / 3600) + " h"; }
    var d = Math.floor(s / 86400);
    return d === 1 ? "1 day" : d + " days";
  }
  function relative(ms, future) {
    var delta = (ms - now()) / 1000;
    if (future && delta <= 0) { return "due now"; }
    if (Math.abs(delta) < 5) { return "just now"; }
    return delta > 0 ? "in " + span(delta) : span(delta) + " ago";
  }
  function absolute(ms) {
    return new Date(ms).toISOString().slice(0, 19).replace("T", " ") + " UTC";
  }
  function human(n) {
    var units = ["B", "KiB", "MiB", "GiB", "TiB"], size = Number(n) || 0;
    for (var i = 0; i < units.length; i++) {
      if (size < 1024 || i === units.length - 1) {
        return i === 0 ? Math.round(size) + " B" : size.toFixed(1) + " " + units[i];
      }
      size /= 1024;
    }
  }
  function duration(sec) {
    if (sec < 10) { return sec.toFixed(1) + " s"; }
    var s = Math.round(sec);
    if (s < 60) { return s + " s"; }
    if (s < 3600) { return Math.floor(s / 60) + " min " + (s % 60) + " s"; }
    return Math.floor(s / 3600) + " h " + Math.floor(s % 3600 / 60) + " min";
  }
  function preview(text, limit) {
    var flat = String(text || "").split(/\\s+/).filter(Boolean).join(" ");
    return flat.length <= limit ? flat : flat.slice(0, limit - 1).replace(/\\s+$/, "") + "\\u2026";
  }
  function tone(status) {
    if (status === "ok" || status === "succeeded" || status === "done") { return "ok"; }
    if (status === "partial" || status === "running") { return "warn"; }
    if (status === "failed" || status === "interrupted") { return "bad"; }
    return "idle";
  }
  function setTone(el, t) {
    el.className = el.className.replace(/\\btone-\\w+/g, "").trim() + " tone-" + t;
  }
  function setText(el, text) { if (el && el.textContent !== text) { el.textContent = text; } }
  function q(root, sel) { return root.querySelector(sel); }

  function setTime(el, iso) {
    if (!el) { return; }
    var ms = parseTime(iso);
    if (isNaN(ms)) {
      el.removeAttribute("datetime"); el.removeAttribute("title"); el.classList.add("none");
      setText(el, el.getAttribute("data-empty") || "");
      return;
    }
    el.classList.remove("none");
    el.setAttribute("datetime", new Date(ms).toISOString());
    el.setAttribute("title", absolute(ms));
    setText(el, relative(ms, el.getAttribute("data-rel") === "future"));
  }
  function refreshTimes() {
    document.querySelectorAll("time[data-rel][datetime]").forEach(function (el) {
      var ms = parseTime(el.getAttribute("datetime"));
      if (!isNaN(ms)) { setText(el, relative(ms, el.getAttribute("data-rel") === "future")); }
    });
    setText(document.getElementById("clock"), absolute(now()));
  }

  function jobLabel(job) {
    var req = job.request || {};
    if (typeof req.mirror === "string") { return "mirror " + req.mirror; }
    var list = req.mirrors;
    if (Array.isArray(list) && list.length && list[0] && typeof list[0] === "object") {
      var first = (list[0].src || "?") + " \\u2192 " + (list[0].dst || "?");
      return list.length === 1 ? first : first + " +" + (list.length - 1) + " more";
    }
    var entries = job.entries || [];
    if (entries.length) {
      return entries.length === 1 ? entries[0].name : entries[0].name + " +" + (entries.length - 1) + " more";
    }
    return "";
  }
  function inFlight(job) {
    var names = (job.entries || []).filter(function (e) { return e.status === "running"; })
      .map(function (e) { return e.name; });
    if (!names.length) { return ""; }
    return "copying " + names.slice(0, 3).join(", ") + (names.length > 3 ? " +" + (names.length - 3) + " more" : "");
  }
  function fromTemplate(id) {
    var tpl = document.getElementById(id);
    return tpl.content.firstElementChild.cloneNode(true);
  }
  function fillCommon(el, job) {
    var p = job.progress || {}, done = p.done || 0, total = p.total || 0;
    el.setAttribute("data-job", job.id);
    el.setAttribute("data-state", job.state);
    setTone(el, tone(job.state));
    setText(q(el, "[data-field=state]"), job.state);
    var idEl = q(el, ".job-id");
    setText(idEl, String(job.id).slice(0, 12)); idEl.setAttribute("title", job.id);
    setText(q(el, ".job-count"), done + "/" + total);
    setText(q(el, ".job-bytes"), human(p.bytes || 0));
    return total > 0 ? Math.max(0, Math.min(100, done * 100 / total)) : 0;
  }
  function fillRunning(el, job) {
    var pct = fillCommon(el, job), p = job.progress || {};
    var label = q(el, ".job-label"), text = jobLabel(job);
    setText(label, text); label.setAttribute("title", text);
    var bar = q(el, ".progress");
    bar.setAttribute("aria-valuemax", String(p.total || 0));
    bar.setAttribute("aria-valuenow", String(p.done || 0));
    bar.setAttribute("aria-label", "Progress of job " + job.id);
    q(el, ".progress-fill").style.width = pct.toFixed(1) + "%";
    setText(q(el, ".job-pct"), Math.round(pct) + "%");
    var nowEl = q(el, ".job-now"), flight = inFlight(job);
    setText(nowEl, flight); nowEl.hidden = !flight;
    var started = q(el, ".job-started time");
    if (!started) {
      started = document.createElement("time");
      started.setAttribute("data-rel", "past");
      q(el, ".job-started").appendChild(started);
    }
    setTime(started, job.started_at || job.created_at);
  }
  function fillRecent(el, job) {
    fillCommon(el, job);
    var what = q(el, ".what"), text = jobLabel(job);
    setText(what, text); what.setAttribute("title", text);
    var a = parseTime(job.started_at), b = parseTime(job.finished_at);
    setText(q(el, ".job-took"), isNaN(a) || isNaN(b) ? "" : duration((b - a) / 1000));
    var cell = q(el, ".job-finished"), t = q(cell, "time");
    if (!t) { t = document.createElement("time"); t.setAttribute("data-rel", "past"); cell.appendChild(t); }
    setTime(t, job.finished_at || job.started_at || job.created_at);
    var errs = job.errors || [], err = errs.length ? String(errs[0].error) : "";
    var errEl = q(el, ".job-error");
    setText(errEl, preview(err, 90) + (errs.length > 1 ? " (+" + (errs.length - 1) + ")" : ""));
    errEl.setAttribute("title", err);
  }
  function byJob(container) {
    var map = {};
    Array.prototype.forEach.call(container.children, function (el) {
      map[el.getAttribute("data-job")] = el;
    });
    return map;
  }
  function applyJobs(jobs) {
    var list = document.getElementById("running-jobs");
    var table = document.getElementById("recent-jobs");
    var rows = byJob(list), recent = byJob(table), seen = {}, anchor = table.firstElementChild;
    jobs.forEach(function (job) {
      if (!job || job.id === undefined) { return; }
      var active = job.state === "running" || job.state === "queued";
      var row = rows[job.id];
      if (active) {
        seen[job.id] = true;
        if (!row) { row = fromTemplate("tpl-job"); list.appendChild(row); }
        fillRunning(row, job);
      } else {
        var r = recent[job.id];
        if (!r) {
          r = fromTemplate("tpl-recent");
          table.insertBefore(r, anchor);
          recent[job.id] = r;
        }
        fillRecent(r, job);
      }
    });
    Object.keys(rows).forEach(function (id) {
      var row = rows[id];
      if (!seen[id] && !row.classList.contains("leaving")) {
        row.classList.add("leaving");
        setTimeout(function () { if (row.parentNode) { row.parentNode.removeChild(row); } sync(); }, 400);
      }
    });
    while (table.children.length > RECENT) { table.removeChild(table.lastElementChild); }
    var running = jobs.filter(function (j) { return j && j.state === "running"; }).length;
    setCount("running", running);
    sync();
  }
  function sync() {
    var list = document.getElementById("running-jobs");
    var live = Array.prototype.filter.call(list.children, function (el) { return !el.classList.contains("leaving"); });
    document.getElementById("no-running").hidden = live.length > 0;
    var any = document.getElementById("recent-jobs").children.length > 0;
    document.getElementById("no-recent").hidden = any;
    document.getElementById("recent-wrap").hidden = !any;
  }
  function setCount(name, n) {
    var el = q(document, "[data-count=" + name + "]");
    if (!el) { return; }
    setText(el, String(n));
    if (name !== "mirrors" && name !== "ok") { el.parentNode.classList.toggle("zero", n === 0); }
  }
  function applyMirrors(mirrors) {
    var cards = {};
    document.querySelectorAll("article[data-mirror]").forEach(function (el) {
      cards[el.getAttribute("data-mirror")] = el;
    });
    var ok = 0, warn = 0, bad = 0;
    mirrors.forEach(function (m) {
      if (!m) { return; }
      var t = m.running ? "warn" : tone(m.last_status);
      var status = m.running ? "running" : (m.last_status || "never run");
      if (t === "ok") { ok++; } else if (t === "bad") { bad++; } else if (t === "warn" && !m.running) { warn++; }
      var card = cards[m.name];
      if (!card) { return; }
      setTone(card, t);
      card.classList.toggle("is-running", !!m.running);
      card.setAttribute("data-status", status);
      card.setAttribute("data-tone", t);
      setText(q(card, "[data-field=status]"), status);
      setTime(q(card, "[data-field=last_run] time"), m.last_run);
      setTime(q(card, "[data-field=next_run] time"), m.next_run);
      setTime(q(card, "[data-field=last_success] time"), m.last_success);
      var err = q(card, "[data-field=last_error]"), text = m.last_error ? String(m.last_error) : "";
      setText(q(err, ".error-text"), preview(text, PREVIEW));
      err.setAttribute("title", text);
      err.hidden = !text;
    });
    setCount("mirrors", mirrors.length);
    setCount("ok", ok); setCount("warn", warn); setCount("failing", bad);
    var overall = !mirrors.length ? "idle" : bad ? "bad" : warn ? "warn" : "ok";
    var colours = {ok: "%231f9d55", warn: "%23d48806", bad: "%23d83a34", idle: "%239aa3ae"};
    var icon = document.getElementById("favicon");
    if (icon) {
      icon.setAttribute("href", "data:image/svg+xml,%3Csvg xmlns='http://www.w3.org/2000/svg' viewBox='0 0 16 16'%3E" +
        "%3Ccircle cx='8' cy='8' r='7' fill='" + colours[overall] + "'/%3E%3C/svg%3E");
    }
  }

  function online(isOnline) {
    document.getElementById("conn").hidden = isOnline;
    body.classList.toggle("offline", !isOnline);
  }
  function poll() {
    var ctl = typeof AbortController === "function" ? new AbortController() : null;
    var timer = ctl ? setTimeout(function () { ctl.abort(); }, Math.max(every * 2, 4000)) : 0;
    fetch(url, {cache: "no-store", headers: {Accept: "application/json"}, signal: ctl ? ctl.signal : undefined})
      .then(function (r) {
        if (!r.ok) { throw new Error("HTTP " + r.status); }
        return r.json();
      })
      .then(function (data) {
        if (!data || typeof data !== "object") { throw new Error("bad payload"); }
        if (Array.isArray(data.mirrors)) { applyMirrors(data.mirrors); }
        if (Array.isArray(data.jobs)) { applyJobs(data.jobs); }
        online(true);
        setText(document.getElementById("updated"), "updated " + absolute(now()).slice(11));
      })
      .catch(function () { online(false); })
      .then(function () {
        clearTimeout(timer);
        refreshTimes();
        setTimeout(poll, every);
      });
  }

  if (url && typeof fetch === "function") {
    setTimeout(poll, every);
  } else {
    setInterval(refreshTimes, 15000);
  }
})();
""".replace("__PREVIEW__", str(ERROR_PREVIEW)).replace("__RECENT__", str(RECENT_JOBS))
