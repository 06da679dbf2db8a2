"""Alembic environment of the state database: `StateDB.open()` runs it with a connection.

`ocimirror.state.connection` upgrades from inside async code the Alembic "async" way: it passes
the sync side of an `AsyncConnection` (`conn.run_sync`) in `config.attributes["connection"]`,
already inside the transaction it commits. Without one, the `sqlalchemy.url` main option is
used, e.g. for `command.revision(alembic_config(url), autogenerate=True, message=...)`, and
offline (`--sql`) mode prints the SQL.
"""

from __future__ import annotations

import asyncio

from alembic import context
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.pool import NullPool

from ocimirror.state.connection import normalise_url
from ocimirror.state.schema import metadata

config = context.config


def run_with(connection: Connection) -> None:
    """Run the migrations on a sync connection."""
    context.configure(
        connection=connection,
        target_metadata=metadata,
        render_as_batch=True,  # SQLite alters tables by copying them
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


async def run_with_url(url: str) -> None:
    """Run the migrations on a fresh async engine for `url`."""
    engine = create_async_engine(normalise_url(url), poolclass=NullPool)
    try:
        async with engine.begin() as conn:
            await conn.run_sync(run_with)
    finally:
        await engine.dispose()


def main() -> None:
    """Run the migrations offline or online, as Alembic asks."""
    url = config.get_main_option("sqlalchemy.url")
    if context.is_offline_mode():
        if url is None:
            raise RuntimeError("offline migrations need the sqlalchemy.url option")
        context.configure(
            url=normalise_url(url),
            target_metadata=metadata,
            literal_binds=True,
            dialect_opts={"paramstyle": "named"},
        )
        with context.begin_transaction():
            context.run_migrations()
        return
    connection = config.attributes.get("connection")
    if connection is not None:
        run_with(connection)
    elif url is not None:
        asyncio.run(run_with_url(url))
    else:
        raise RuntimeError("migrations need a connection attribute or the sqlalchemy.url option")


main()
