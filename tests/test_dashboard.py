"""The dashboard page in a real headless Chromium (Debian's), driven by Playwright.

A tiny aiohttp app serves `render_dashboard(...)` at `/` and `dashboard_data(...)` at
`/api/v1/dashboard`, built from sample data the test changes between polls: three mirrors
(ok with 10 runs, failed with an error that carries a `<script>`, never run) and one job
running at 3/10. The browser must show each mirror's colour, the error as literal text (no
dialog fires), one chart bar per run, and the job's bar moving to 7/10 in place, with no
console error. Screenshots (light and dark) are left in `test-artifacts/`.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from importlib import resources
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from playwright.async_api import ConsoleMessage, Dialog, async_playwright, expect

from ocimirror.service.dashboard import (
    ERROR_PREVIEW,
    RECENT_JOBS,
    RunPoint,
    dashboard_data,
    render_dashboard,
)
from ocimirror.service.models import EntryError, EntryResult, JobView, MirrorView, Progress
from ocimirror.testkit.browser import CHROMIUM, launch_chromium

ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts"

TITLE = "ocimirror · test fleet"
OK, FAILED, NEVER = "docker-hub-base", 'quay <"prod"> & co', "ghcr-tools"
XSS = "<script>alert(1)</script>"
ERROR = (
    f"quay.io/prometheus/node-exporter:v1.8.2: 401 Unauthorized {XSS} "
    "(check the robot account's token in /etc/ocimirror/quay.json; the registry said: "
    "'invalid username/password: unauthorized: access to the requested resource is not "
    "authorized') and 2 more images failed the same way"
)
JOB_ID = "7f3a9c2e-1b4d-4e8a-9f10-2c6d8e4b1a57"
# Light-theme colours of the tones (see _CSS).
GREEN, RED, GREY = "rgb(31, 157, 85)", "rgb(216, 58, 52)", "rgb(154, 163, 174)"


@dataclass
class Fleet:
    """The sample data, mutable so the test can move things between polls."""

    now: datetime = field(default_factory=lambda: datetime.now(UTC).replace(microsecond=0))
    done: int = 3
    never_running: bool = False
    job_finished: bool = False
    fail_api: bool = False
    polls: int = 0
    worker_done: int = 41

    def workers(self) -> dict[str, Any]:
        """`execution: workers`: one worker copying, one gone (a hostile name), a queue."""
        beat = (self.now - timedelta(seconds=5)).isoformat()
        busy = 0 if self.job_finished else 3
        return {
            "workers": [
                {
                    "name": "w-1",
                    "alive": True,
                    "busy": busy,
                    "done": self.worker_done,
                    "failed": 2,
                    "last_heartbeat": beat,
                },
                {
                    "name": XSS,
                    "alive": False,
                    "busy": 1,
                    "done": 7,
                    "failed": 0,
                    "last_heartbeat": (self.now - timedelta(hours=1)).isoformat(),
                },
            ],
            "queues": []
            if self.job_finished
            else [{"registry": "registry.internal:5000", "todo": 12, "doing": 3}],
        }

    def mirrors(self) -> list[MirrorView]:
        """Three mirrors: ok, failed (with a hostile error), never run."""
        n = self.now
        return [
            MirrorView(
                name=OK,
                sources=["docker.io/library/alpine", "docker.io/library/debian:bookworm"],
                targets=["registry.internal:5000/hub"],
                schedule="every 6h",
                running=False,
                last_run=n - timedelta(minutes=12),
                last_status="ok",
                last_success=n - timedelta(minutes=12),
                next_run=n + timedelta(hours=5, minutes=48),
            ),
            MirrorView(
                name=FAILED,
                sources=["quay.io/prometheus/node-exporter", "quay.io/prometheus/prometheus"],
                targets=["registry.internal:5000/quay", "backup.internal/quay"],
                schedule="cron 0 3 * * *",
                running=False,
                last_run=n - timedelta(hours=3, minutes=4),
                last_status="failed",
                last_error=ERROR,
                last_success=n - timedelta(days=2, hours=3),
                next_run=n + timedelta(hours=20, minutes=56),
            ),
            MirrorView(
                name=NEVER,
                sources=["ghcr.io/astral-sh/uv", "ghcr.io/oras-project/oras"],
                targets=["registry.internal:5000/ghcr"],
                schedule="on demand",
                running=self.never_running,
                last_status="running" if self.never_running else None,
            ),
        ]

    def runs(self) -> dict[str, list[RunPoint]]:
        """Ten runs of the ok mirror (one partial), four of the failed one, none of the third."""
        n = self.now
        gib = 1024**3
        ok = [
            RunPoint(
                started_at=n - timedelta(hours=6 * (10 - i)),
                seconds=40 + 9 * ((i * 7) % 5) + (30 if i == 6 else 0),
                bytes=int(gib * (0.35 + 0.09 * ((i * 3) % 7))) if i != 6 else int(gib * 0.2),
                status="partial" if i == 6 else "ok",
            )
            for i in range(10)
        ]
        failed = [
            RunPoint(n - timedelta(days=4 - i), s, b, st)
            for i, (s, b, st) in enumerate(
                [(210.0, 3 * gib, "ok"), (95.0, gib, "ok"), (130.0, gib // 2, "partial")]
            )
        ] + [RunPoint(n - timedelta(hours=3, minutes=5), 12.5, 0, "failed")]
        return {OK: ok, FAILED: failed}

    def jobs(self) -> list[JobView]:
        """One job running at `done`/10, and two finished ones."""
        n = self.now
        entries = [
            EntryResult(
                index=i,
                name=f"(docker.io/library/img{i}:latest to registry.internal:5000/img{i})",
                status="copied" if i < self.done else "running" if i < self.done + 2 else "pending",
            )
            for i in range(10)
        ]
        running = JobView(
            id=JOB_ID,
            state="succeeded" if self.job_finished else "running",
            finished_at=n if self.job_finished else None,
            created_at=n - timedelta(seconds=95),
            started_at=n - timedelta(seconds=94),
            progress=Progress(done=self.done, total=10, bytes=self.done * 187_000_000),
            entries=entries,
            request={
                "mirrors": [
                    {"src": f"docker.io/library/img{i}", "dst": "r:5000"} for i in range(10)
                ]
            },
        )
        succeeded = JobView(
            id="c01d4b7a-58e2-4f0b-a6a1-7d2e0c9b3f11",
            state="succeeded",
            created_at=n - timedelta(minutes=40),
            started_at=n - timedelta(minutes=40),
            finished_at=n - timedelta(minutes=37, seconds=12),
            progress=Progress(done=4, total=4, bytes=812_000_000),
            request={"mirrors": [{"src": "postgres:16", "dst": "registry.internal:5000/pg"}]},
        )
        failed = JobView(
            id="e9b1f2c3-0a4d-4b5e-8c6f-1d2e3f4a5b6c",
            state="failed",
            created_at=n - timedelta(hours=2),
            started_at=n - timedelta(hours=2),
            finished_at=n - timedelta(hours=1, minutes=58),
            progress=Progress(done=1, total=2, bytes=41_000_000),
            errors=[EntryError(index=1, name="(nginx:1.27 to r:5000/nginx)", error=XSS)],
            request={"mirrors": [{"src": "redis:7", "dst": "r:5000/redis"}, {"src": "nginx"}]},
        )
        return [running, succeeded, failed]


@pytest.fixture
async def served() -> AsyncIterator[tuple[Fleet, str]]:
    """The dashboard and its JSON on 127.0.0.1, from a `Fleet` the test can change."""
    fleet = Fleet()

    async def page(_request: web.Request) -> web.Response:
        html = render_dashboard(
            mirrors=fleet.mirrors(),
            runs=fleet.runs(),
            jobs=fleet.jobs(),
            now=fleet.now,
            title=TITLE,
            workers=fleet.workers(),
        )
        return web.Response(text=html, content_type="text/html")

    async def data(_request: web.Request) -> web.Response:
        fleet.polls += 1
        if fleet.fail_api:
            return web.json_response({"error": "down"}, status=503)
        return web.json_response(
            {**dashboard_data(fleet.mirrors(), fleet.jobs()), "workers": fleet.workers()}
        )

    app = web.Application()
    app.router.add_get("/", page)
    app.router.add_get("/api/v1/dashboard", data)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    try:
        yield fleet, str(server.make_url("/"))
    finally:
        await server.close()


@pytest.fixture
def artifacts() -> Path:
    """`test-artifacts/` at the repository root, made if missing; Chromium must be there."""
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: scripts/bootstrap.sh installs Debian's chromium")
    ARTIFACTS.mkdir(exist_ok=True)
    return ARTIFACTS


async def test_dashboard_in_chromium(
    served: tuple[Fleet, str], artifacts: Path, tmp_path: Path
) -> None:
    """Colours, escaping, charts and live progress, as a person sees them in Chromium."""
    fleet, url = served
    console_errors: list[str] = []
    dialogs: list[str] = []
    async with async_playwright() as pw:
        context = await launch_chromium(pw, tmp_path / "profile", color_scheme="light")
        try:
            page = context.pages[0] if context.pages else await context.new_page()

            def on_console(message: ConsoleMessage) -> None:
                if message.type == "error":
                    console_errors.append(message.text)

            async def on_dialog(dialog: Dialog) -> None:
                dialogs.append(dialog.message)
                await dialog.dismiss()

            page.on("console", on_console)
            page.on("pageerror", lambda e: console_errors.append(f"pageerror: {e}"))

            page.on("dialog", on_dialog)
            await page.goto(url)
            assert await page.title() == TITLE

            # One card per mirror, coloured by status.
            cards = page.locator("article[data-mirror]")
            await expect(cards).to_have_count(3)
            expected = {OK: ("ok", "ok", GREEN), FAILED: ("bad", "failed", RED)}
            expected[NEVER] = ("idle", "never run", GREY)
            for name, (tone, word, colour) in expected.items():
                card = cards.filter(has=page.get_by_role("heading", name=name, exact=True))
                await expect(card).to_have_count(1)
                await expect(card).to_have_class(re.compile(rf"\btone-{tone}\b"))
                await expect(card.locator("[data-field=status]")).to_have_text(word)
                border = await card.evaluate("el => getComputedStyle(el).borderLeftColor")
                assert border == colour, (name, border)

            # The error is literal text, its full text on hover, and no script ran.
            failed = cards.filter(has=page.get_by_role("heading", name=FAILED, exact=True))
            error = failed.locator("[data-field=last_error]")
            assert XSS in await error.inner_text()
            assert await error.get_attribute("title") == ERROR
            assert (await error.inner_text()).endswith("…")
            assert await page.locator("main script").count() == 0

            # Charts: one bar per run, an accessible title, none for a mirror never run.
            ok_card = cards.filter(has=page.get_by_role("heading", name=OK, exact=True))
            await expect(ok_card.locator("svg rect.bar")).to_have_count(10)
            await expect(ok_card.locator("svg rect.bar.tone-warn")).to_have_count(1)
            assert OK in (await ok_card.locator("svg > title").text_content() or "")
            await expect(failed.locator("svg rect.bar")).to_have_count(4)
            never = cards.filter(has=page.get_by_role("heading", name=NEVER, exact=True))
            await expect(never.locator("svg")).to_have_count(0)
            await expect(never.locator(".chart-empty")).to_be_visible()

            # Relative times with the absolute UTC time as a title.
            last_run = ok_card.locator("[data-field=last_run] time")
            await expect(last_run).to_have_text("12 min ago")
            assert (await last_run.get_attribute("title") or "").endswith(" UTC")

            # The running job at 3/10; the header counts.
            job = page.locator(f'#running-jobs [data-job="{JOB_ID}"]')
            await expect(job.locator(".job-count")).to_have_text("3/10")
            await expect(job.locator("[role=progressbar]")).to_have_attribute("aria-valuenow", "3")
            await expect(page.locator("#recent-jobs tr")).to_have_count(2)
            await expect(page.locator("[data-count=failing]")).to_have_text("1")
            await expect(page.locator("[data-count=running]")).to_have_text("1")

            # The workers: one copying, one gone (its name literal), the queue's depth.
            w1 = page.locator('#worker-rows tr[data-worker="w-1"]')
            await expect(w1.locator("[data-field=state]")).to_have_text("busy")
            await expect(w1.locator(".worker-busy")).to_have_text("3")
            await expect(w1.locator(".worker-done")).to_have_text("41")
            beat = w1.locator(".worker-beat time")
            await expect(beat).to_have_text(re.compile(r" ago$"))
            assert (await beat.get_attribute("title") or "").endswith(" UTC")
            gone = page.locator("#worker-rows tr").nth(1)
            await expect(gone.locator("[data-field=state]")).to_have_text("gone")
            await expect(gone).to_have_class(re.compile(r"\btone-bad\b"))
            await expect(gone.locator(".worker-name")).to_have_text(XSS)
            queue = page.locator('#queue-rows tr[data-queue="registry.internal:5000"]')
            await expect(queue.locator(".queue-todo")).to_have_text("12")
            await expect(queue.locator(".queue-doing")).to_have_text("3")

            await page.screenshot(path=str(artifacts / "dashboard.png"), full_page=True)

            # Progress moves to 7/10 and a mirror starts: updated in place by the poll.
            handle = await job.element_handle()
            fleet.done, fleet.never_running = 7, True
            await expect(job.locator(".job-count")).to_have_text("7/10", timeout=6000)
            assert await handle.evaluate("el => el.isConnected")
            await expect(job.locator("[role=progressbar]")).to_have_attribute("aria-valuenow", "7")
            width = await job.locator(".progress-fill").evaluate("el => el.style.width")
            assert width == "70%"
            await expect(never).to_have_class(re.compile(r"\btone-warn\b"), timeout=6000)
            await expect(never.locator("[data-field=status]")).to_have_text("running")
            await expect(error).to_contain_text(XSS)  # still literal after the script's update
            await expect(page.locator("#conn")).to_be_hidden()
            assert fleet.polls >= 1

            await page.emulate_media(color_scheme="dark")
            await page.screenshot(path=str(artifacts / "dashboard-dark.png"), full_page=True)
            await page.emulate_media(color_scheme="light")

            # The job finishes: it leaves "Running jobs" and heads "Recent jobs".
            fleet.done, fleet.job_finished = 10, True
            await expect(job).to_have_count(0, timeout=6000)
            await expect(page.locator("#no-running")).to_be_visible()
            first = page.locator("#recent-jobs tr").first
            await expect(first).to_have_attribute("data-job", JOB_ID)
            await expect(first.locator("[data-field=state]")).to_have_text("succeeded")
            await expect(first.locator(".job-count")).to_have_text("10/10")
            await expect(page.locator("#recent-jobs tr")).to_have_count(3)
            await expect(page.locator("[data-count=running]")).to_have_text("0")
            # The poll redraws the workers: idle now, more done, the queue empty.
            fleet.worker_done = 50
            await expect(w1.locator("[data-field=state]")).to_have_text("idle", timeout=6000)
            await expect(w1.locator(".worker-done")).to_have_text("50")
            await expect(w1).to_have_class(re.compile(r"\btone-ok\b"))
            await expect(page.locator("#queue-rows tr")).to_have_count(0)
            await expect(
                page.locator("#worker-rows tr").nth(1).locator(".worker-name")
            ).to_have_text(XSS)
            assert console_errors == []
            assert dialogs == []

            # The API fails: a "disconnected" badge, the page stays as it was.
            fleet.fail_api = True
            await expect(page.locator("#conn")).to_be_visible(timeout=6000)
            await expect(first.locator(".job-count")).to_have_text("10/10")
            await expect(cards).to_have_count(3)
            fleet.fail_api = False
            await expect(page.locator("#conn")).to_be_hidden(timeout=6000)
            assert dialogs == []
            assert [e for e in console_errors if "503" not in e] == []
        finally:
            await context.close()


def test_dashboard_data_is_the_models_json() -> None:
    """`dashboard_data` is exactly the models' JSON dumps, mirrors and jobs."""
    fleet = Fleet()
    data = dashboard_data(fleet.mirrors(), fleet.jobs())
    assert set(data) == {"mirrors", "jobs"}
    assert data["mirrors"] == [m.model_dump(mode="json") for m in fleet.mirrors()]
    assert data["jobs"] == [j.model_dump(mode="json") for j in fleet.jobs()]


def test_everything_user_supplied_is_escaped() -> None:
    """Names, references and errors never reach the HTML unescaped."""
    fleet = Fleet()
    mirrors = fleet.mirrors()
    mirrors[2] = mirrors[2].model_copy(update={"sources": ['"><img src=x onerror=alert(2)>']})
    html = render_dashboard(
        mirrors=mirrors, runs=fleet.runs(), jobs=fleet.jobs(), now=fleet.now, title="<b>t</b>"
    )
    assert html.startswith("<!doctype html>")
    assert XSS not in html
    assert "<img" not in html
    assert 'id="workers"' not in html  # no workers section without execution: workers
    assert "<b>t</b>" not in html
    assert html.count("<script>") == 1  # only the page's own
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert 'data-mirror="quay &lt;&quot;prod&quot;&gt; &amp; co"' in html


def test_empty_dashboard_renders() -> None:
    """No mirrors, no jobs, no refresh URL: still a whole page, with no polling."""
    html = render_dashboard(
        mirrors=[], runs={}, jobs=[], now=datetime(2024, 5, 1, 12, 0), refresh_url=None
    )
    assert "No mirrors are configured" in html
    assert 'data-refresh=""' in html
    assert 'id="conn"' not in html


def test_the_page_inlines_the_package_css_and_script() -> None:
    """The CSS and script come from the package's static/ files, the limits put in."""
    static = resources.files("ocimirror.service").joinpath("static")
    css = static.joinpath("dashboard.css").read_text(encoding="utf-8")
    js = static.joinpath("dashboard.js").read_text(encoding="utf-8")
    html = render_dashboard(mirrors=[], runs={}, jobs=[], now=datetime(2024, 5, 1, 12, 0))
    assert f"<style>\n{css}</style>" in html
    script = re.search(r"<script>\n(.*)</script>", html, re.S)
    assert script is not None
    assert "__PREVIEW__" in js
    assert "__RECENT__" in js
    assert "__" not in script.group(1)
    assert f"PREVIEW = {ERROR_PREVIEW}, RECENT = {RECENT_JOBS};" in script.group(1)
