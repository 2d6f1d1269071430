"""The async engine and session factory; one per process, built by the composition root."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any

from sqlalchemy import event
from sqlalchemy.engine.interfaces import DBAPIConnection
from sqlalchemy.exc import DisconnectionError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine
from sqlalchemy.pool import ConnectionPoolEntry


def is_sqlite(url: str) -> bool:
    return url.startswith("sqlite")


def make_engine(async_url: str, pool_size: int = 10) -> AsyncEngine:
    if is_sqlite(async_url):
        engine = create_async_engine(async_url, connect_args={"timeout": 30})

        @event.listens_for(engine.sync_engine, "connect")
        def _sqlite_pragmas(dbapi_conn: DBAPIConnection, record: ConnectionPoolEntry) -> None:
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA busy_timeout=30000")
            cur.close()

        return engine
    engine = create_async_engine(async_url, pool_size=pool_size, max_overflow=pool_size)
    ping_connections_left_idle(engine)
    return engine


# A pooled connection back in use within this long was alive a moment ago: no ping. SQLAlchemy's
# pool_pre_ping pings on every checkout, a round trip (and a transaction in PostgreSQL) that was a
# tenth of a busy replica's CPU; one that sat idle longer is pinged, and replaced if it is dead.
PING_AFTER_IDLE_S = 5.0


def ping_connections_left_idle(engine: AsyncEngine, after_s: float = PING_AFTER_IDLE_S) -> None:
    """Pessimistic disconnect handling for idle connections only. A connection that dies while in
    busy use fails its statement instead; SQLAlchemy then invalidates the pool, so one request sees
    a database restart, not every pooled connection in turn."""

    @event.listens_for(engine.sync_engine, "checkin")
    def _idle_from(dbapi_conn: DBAPIConnection, record: ConnectionPoolEntry) -> None:
        record.info["idle_since"] = time.monotonic()

    @event.listens_for(engine.sync_engine, "checkout")
    def _ping_if_idle(dbapi_conn: Any, record: ConnectionPoolEntry, proxy: Any) -> None:
        since = record.info.get("idle_since")
        if since is not None and time.monotonic() - since < after_s:
            return
        try:
            dbapi_conn.ping()
        except Exception as exc:  # the driver's own error for a dead connection
            raise DisconnectionError(f"pooled connection failed its ping: {type(exc).__name__}") from exc


def make_sessionmaker(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    return async_sessionmaker(engine, expire_on_commit=False)


async def session_scope(factory: async_sessionmaker[AsyncSession]) -> AsyncIterator[AsyncSession]:
    async with factory() as session:
        yield session
