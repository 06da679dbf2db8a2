"""`ocimirror run`, the daemon, as a real process: schedules, reload, signals, restart."""

from __future__ import annotations

import asyncio
import re
import signal
import time
import urllib.request
from pathlib import Path

from ocimirror.state.db import StateDB
from ocimirror.testkit.command import Background
from ocimirror.testkit.images import make_image
from ocimirror.testkit.polling import wait_for
from ocimirror.testkit.registry import LocalRegistry, free_port
from ocimirror.testkit.seeding import seed


def scrape(port: int) -> dict[str, float]:
    """GET /metrics and return each sample line as {"name{labels}": value}."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        text = resp.read().decode()
    samples = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            samples[name] = float(value)
    return samples


def mirror_yaml(
    src: LocalRegistry, dst: LocalRegistry, names: list[str], schedule: str, head: str = ""
) -> str:
    """A config mirroring src/NAME to dst/mirror/NAME for each name, after `head`."""
    lines = [head + "mirrors:"]
    for name in names:
        lines += [
            f"  - name: {name}",
            f"    source: {src.host}/lib/{name}",
            f"    targets: [{dst.host}/mirror/{name}]",
            f"    schedule: {schedule}",
        ]
    return "\n".join(lines) + "\n"


class Daemon(Background):
    """`ocimirror run -c FILE` in the background, its log in a file."""

    def __init__(self, config: Path, log: Path) -> None:
        super().__init__(["run", "-c", str(config)], log)


def test_daemon_schedules_reloads_and_stops(
    registry_pair: tuple[LocalRegistry, LocalRegistry], tmp_path: Path
) -> None:
    src, dst = registry_pair
    asyncio.run(seed(src, "lib/a", [("1", make_image(layer_size=500, seed="a1"))]))
    asyncio.run(seed(src, "lib/b", [("1", make_image(layer_size=500, seed="b1"))]))
    config = tmp_path / "mirror.yaml"
    port = free_port()
    head = f"metrics:\n  listen: 127.0.0.1:{port}\n"
    config.write_text(mirror_yaml(src, dst, ["a"], "1s", head))
    daemon = Daemon(config, tmp_path / "daemon.log")
    try:
        wait_for(lambda: dst.tags("mirror/a") == ["1"], "mirror a")
        wait_for(lambda: "run finished" in daemon.text(), "the first pass to be recorded")
        metrics = scrape(port)
        assert metrics['ocimirror_runs_total{mirror="a",status="ok"}'] >= 1
        assert metrics['ocimirror_tasks_total{mirror="a",result="copied"}'] == 1
        assert metrics['ocimirror_bytes_copied_total{mirror="a"}'] > 500
        assert metrics['ocimirror_last_success_timestamp_seconds{mirror="a"}'] > time.time() - 60
        assert metrics['ocimirror_next_run_timestamp_seconds{mirror="a"}'] > time.time() - 60
        assert metrics[f'ocimirror_registry_requests_total{{host="{src.host}"}}'] >= 2
        assert metrics[f'ocimirror_registry_throttled_total{{host="{dst.host}"}}'] == 0
        assert any(re.match(r"ocimirror_run_duration_seconds_count", k) for k in metrics)
        # A new tag at the source arrives by the schedule alone.
        asyncio.run(seed(src, "lib/a", [("2", make_image(layer_size=500, seed="a2"))]))
        wait_for(lambda: dst.tags("mirror/a") == ["1", "2"], "the next scheduled run")
        # The config file changes on disk: reloaded, the new mirror runs.
        config.write_text(mirror_yaml(src, dst, ["a", "b"], "1s", head))
        wait_for(lambda: dst.tags("mirror/b") == ["1"], "the reloaded config")
        assert "config reloaded" in daemon.text()
        # An invalid config (SIGHUP): refused with one line, the old one stays in force.
        config.write_text("mirrors:\n  - source: a\n    targets: []\n")
        daemon.signal(signal.SIGHUP)
        wait_for(lambda: "config reload rejected" in daemon.text(), "the rejection")
        assert "mirrors[0].targets" in daemon.text()
        asyncio.run(seed(src, "lib/b", [("2", make_image(layer_size=500, seed="b2"))]))
        wait_for(lambda: dst.tags("mirror/b") == ["1", "2"], "work under the old config")
        assert daemon.proc.poll() is None
        daemon.signal(signal.SIGTERM)
        assert daemon.wait() == 0
        assert "stopping" in daemon.text()
    finally:
        daemon.kill()

    async def runs() -> list[str]:
        async with StateDB(f"sqlite:///{tmp_path}/mirror.state.db") as db:
            return [r.status for r in await db.runs("a", limit=100)]

    statuses = asyncio.run(runs())
    assert len(statuses) >= 2
    assert "running" not in statuses


def test_abort_mid_copy_leaves_no_tag_and_a_restart_resumes(
    registry_pair: tuple[LocalRegistry, LocalRegistry], tmp_path: Path
) -> None:
    src, dst = registry_pair
    big = make_image(layers=6, layer_size=48 * 1024 * 1024, seed="big")
    asyncio.run(seed(src, "lib/big", [("1", big)]))
    config = tmp_path / "mirror.yaml"
    config.write_text(mirror_yaml(src, dst, ["big"], "1h"))
    daemon = Daemon(config, tmp_path / "daemon.log")
    try:
        wait_for(lambda: "run started" in daemon.text(), "the run")
        time.sleep(0.3)  # the copy of 288 MiB takes well over a second here
        daemon.signal(signal.SIGTERM)
        wait_for(lambda: "stopping" in daemon.text(), "the first signal")
        daemon.signal(signal.SIGTERM)  # the second signal aborts running copies
        assert daemon.wait() == 0
    finally:
        daemon.kill()
    assert "run aborted" in daemon.text()
    assert dst.tags("mirror/big") == []  # nothing half-written under the tag
    uploads = [r for r in dst.requests() if r.method == "POST"]
    assert uploads  # it was stopped mid-copy, not before

    async def statuses() -> list[str]:
        async with StateDB(f"sqlite:///{tmp_path}/mirror.state.db") as db:
            return [r.status for r in await db.runs("big")]

    assert asyncio.run(statuses())[0] == "interrupted"
    # A restart picks the mirror up at once: its last run did not finish.
    daemon = Daemon(config, tmp_path / "daemon2.log")
    try:
        wait_for(lambda: dst.tags("mirror/big") == ["1"], "the resumed copy", timeout=60)
        daemon.signal(signal.SIGTERM)
        assert daemon.wait() == 0
    finally:
        daemon.kill()
    assert asyncio.run(statuses())[0] == "ok"


def test_max_errors_stops_the_daemon_after_failed_passes_in_a_row(
    registry_pair: tuple[LocalRegistry, LocalRegistry], tmp_path: Path
) -> None:
    src, dst = registry_pair
    config = tmp_path / "mirror.yaml"
    config.write_text(
        "max_errors: 2\n"
        "mirrors:\n"
        "  - name: gone\n"
        f"    source: {src.host}/lib/gone:1\n"
        f"    targets: [{dst.host}/mirror/gone]\n"
        "    schedule: 1s\n"
    )
    daemon = Daemon(config, tmp_path / "daemon.log")
    try:
        assert daemon.wait(timeout=60) == 1
    finally:
        daemon.kill()
    text = daemon.text()
    assert text.count("run finished") == 2
    assert "status=failed" in text
    assert "stopping after failed passes in a row" in text
    assert f"error='{src.host}/lib/gone:1: manifest unknown'" in text  # said once, not twice
