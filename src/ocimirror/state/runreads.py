"""The statements of the per-mirror run reads, built once per shape.

The dashboard and `GET /api/v1/mirrors` read, at every poll, each configured mirror's
latest run and latest success: one statement, a union of per-mirror index lookups. Built
afresh at each call, SQLAlchemy set its subqueries' columns up again every time, which
took longer than the query (the latest run of one mirror on SQLite: 2.2 -> 0.95 ms of
CPU). Each builder here is cached per shape (how many mirrors, how many runs), the
mirrors bound as parameters `m0, m1, ...` (`mirror_params`).
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache

from sqlalchemy import bindparam, func, literal, select, union_all
from sqlalchemy.sql import Executable

from .schema import runs

__all__ = ["last_successes", "latest_with_success", "mirror_params", "newest_runs"]


def mirror_params(names: Sequence[str]) -> dict[str, str]:
    """The parameters `m0, m1, ...` that bind `names` into one of these statements."""
    return {f"m{i}": name for i, name in enumerate(names)}


@lru_cache(maxsize=64)
def newest_runs(count: int, limit: int) -> Executable:
    """The newest `limit` runs of each of `count` mirrors, in one statement."""
    parts = [
        select(
            select(runs)
            .where(runs.c.mirror == bindparam(f"m{i}"))
            .order_by(runs.c.id.desc())
            .limit(limit)
            .subquery()
        )
        for i in range(count)
    ]
    return parts[0] if count == 1 else union_all(*parts)


@lru_cache(maxsize=64)
def last_successes(count: int) -> Executable:
    """When the latest ok run of each of `count` mirrors finished: rows (i, at)."""
    parts = [
        select(literal(i).label("i"), func.max(runs.c.finished_at).label("at")).where(
            runs.c.mirror == bindparam(f"m{i}"), runs.c.status == "ok"
        )
        for i in range(count)
    ]
    return parts[0] if count == 1 else union_all(*parts)


@lru_cache(maxsize=64)
def latest_with_success(count: int) -> Executable:
    """The latest run of each of `count` mirrors with `last_ok`, when its latest ok run
    finished: `newest_runs(count, 1)` and `last_successes(count)` in one statement."""
    ok = runs.alias("ok")
    last_ok = (
        select(func.max(ok.c.finished_at))
        .where(ok.c.mirror == runs.c.mirror, ok.c.status == "ok")
        .scalar_subquery()
        .label("last_ok")
    )
    parts = [
        select(
            select(runs, last_ok)
            .where(runs.c.mirror == bindparam(f"m{i}"))
            .order_by(runs.c.id.desc())
            .limit(1)
            .subquery()
        )
        for i in range(count)
    ]
    return parts[0] if count == 1 else union_all(*parts)
