"""A registry's `max_concurrency` held across every worker: PostgreSQL advisory locks.

A host's N places are the N session-level advisory locks (crc32(host), 0..N-1). A request
takes a connection from this process's pool, tries the places in turn
(`pg_try_advisory_lock`), and holds the one it got until its answer's headers are in;
when all are taken it tries again a moment later. A worker that dies loses its sessions,
and with them its places: nothing is left held. A connection holds at most one place at a
time, and one whose release may not have happened (cancelled mid-query) is closed, which
releases whatever it held. A request waiting for a place holds no connection between
its tries.

The cost is one round trip to PostgreSQL per place tried and one to release it: small
beside a registry request, but each place held is a connection, so a worker's pool
(`--concurrency` + 2 connections) bounds its requests in flight, and the places held
across all workers (the sum of the registries' `max_concurrency`) count against
PostgreSQL's `max_connections`.
"""

from __future__ import annotations

import asyncio
import random
import zlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from psycopg import AsyncConnection
    from psycopg_pool import AsyncConnectionPool

#: Seconds between two tries while every place of a host is taken (with jitter).
RETRY = 0.02


def host_key(host: str) -> int:
    """The first advisory-lock key of a host's places (a signed 32-bit integer)."""
    value = zlib.crc32(host.lower().encode())
    return value - (1 << 32) if value >= 1 << 31 else value


class PgSlots:
    """Places in flight per registry host, shared through PostgreSQL advisory locks."""

    def __init__(self, url: str, *, max_connections: int = 32, retry: float = RETRY) -> None:
        self.url = url
        self.max_connections = max_connections
        self.retry = retry
        self._pool: AsyncConnectionPool[AsyncConnection] | None = None
        #: Places taken so far, and tries that found every place of the host taken.
        self.taken = 0
        self.waits = 0

    async def open(self) -> None:
        """Open the connection pool."""
        from psycopg_pool import AsyncConnectionPool

        self._pool = AsyncConnectionPool(
            self.url,
            min_size=1,
            max_size=self.max_connections,
            kwargs={"autocommit": True},
            open=False,
        )
        await self._pool.open(wait=True)

    async def close(self) -> None:
        """Close the pool (releasing every place still held)."""
        if self._pool is not None:
            await self._pool.close()
            self._pool = None

    @asynccontextmanager
    async def slot(self, host: str, limit: int) -> AsyncIterator[None]:
        """Hold one of the `limit` places of `host` among every worker."""
        pool = self._pool
        if pool is None:
            raise RuntimeError("the shared slots are not open")
        key = host_key(host)
        while True:
            conn = await pool.getconn()
            try:
                place = await self._try(conn, key, limit)
            except BaseException:
                await conn.close()  # cancelled mid-try: it may hold a place; let it go
                await pool.putconn(conn)
                raise
            if place is not None:
                break
            # Every place taken: wait without holding a connection, then try again.
            await pool.putconn(conn)
            self.waits += 1
            await asyncio.sleep(self.retry * (0.5 + random.random()))
        self.taken += 1
        released = False
        try:
            yield
        finally:
            try:
                await conn.execute("SELECT pg_advisory_unlock(%s, %s)", (key, place))
                released = True
            finally:
                if not released:
                    await conn.close()  # the session ends: whatever it held is let go
                await pool.putconn(conn)

    async def _try(self, conn: AsyncConnection, key: int, limit: int) -> int | None:
        """Take a free place of the host on `conn` (its number), or None when all are held."""
        first = random.randrange(max(limit, 1))  # spread tries over the places
        for i in range(limit):
            place = (first + i) % limit
            cur = await conn.execute("SELECT pg_try_advisory_lock(%s, %s)", (key, place))
            row = await cur.fetchone()
            if row is not None and row[0]:
                return place
        return None
