"""`ocimirror serve` against the requests of issue 11: each one sent as the attacker did.

Finished jobs piling up in memory.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from ocimirror.service.jobs import JobManager
from ocimirror.service.models import MirrorEntry, MirrorRequest
from ocimirror.sync.state import StateDB

EVIL = "http://evil.example"
PLAIN = {"Content-Type": "text/plain"}
JSON = {"Content-Type": "application/json"}


# --------------------------------------------------------------------------- memory


@pytest.fixture
async def manager(tmp_path: Path) -> AsyncIterator[JobManager]:
    """A started job manager on a SQLite file, closed at teardown."""
    async with StateDB(f"sqlite:///{tmp_path}/state.db") as state:
        jobs = JobManager(state)
        await jobs.start()
        yield jobs
        await jobs.close()


def invalid(n: int, tag: str) -> MirrorRequest:
    """A request of `n` entries that cannot parse (each fails at once)."""
    return MirrorRequest(mirrors=[MirrorEntry(src=f"bad ref {tag} {i}", dst="x") for i in range(n)])


async def test_finished_jobs_are_not_kept_in_memory(manager: JobManager) -> None:
    ids = []
    for k in range(40):
        view, _ = await manager.submit(invalid(100, str(k)))
        ids.append(view.id)
        await manager.wait(view.id)
        assert manager.held() == 0  # the finished job was let go
    for job_id in (ids[0], ids[-1]):  # still answered, from the database
        job = await manager.get(job_id)
        assert job is not None
        assert job.state == "failed"
        assert job.progress.done == job.progress.total == 100
        assert len(job.errors) == 100


async def test_a_job_whose_last_write_failed_stays_true(
    manager: JobManager, monkeypatch: pytest.MonkeyPatch
) -> None:
    update_job = manager.state.update_job

    async def fails_when_final(job_id: str, **kwargs: Any) -> None:
        if kwargs["state"] == "failed":
            raise OSError("disk full")
        await update_job(job_id, **kwargs)

    monkeypatch.setattr(manager.state, "update_job", fails_when_final)
    view, _ = await manager.submit(invalid(1, "w"))
    done = await manager.wait(view.id)
    assert done.state == "failed"  # not the "running" the database still says
    assert manager.held() == 1
