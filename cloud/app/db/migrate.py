"""`alembic upgrade head` from code, and the one lock under which a starting replica migrates and seeds.

Replicas that start together take PostgreSQL's advisory lock in turn: the first migrates the schema
and creates the first accounts, the others find both done. SQLite is one process's database: no lock.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import text
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

MIGRATIONS = Path(__file__).parent / "migrations"
_LOCK_KEY = 0x10C10D  # any constant shared by every replica


def alembic_config(async_url: str) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    # ConfigParser interpolates "%": an URL-encoded password (p%40ss) must reach alembic as it is.
    cfg.set_main_option("sqlalchemy.url", async_url.replace("%", "%%"))
    return cfg


@asynccontextmanager
async def startup_lock(engine: AsyncEngine) -> AsyncIterator[AsyncConnection]:
    """A connection that holds the replicas' startup lock until the block ends (released on error, and
    by PostgreSQL itself if this process dies holding it)."""
    async with engine.connect() as connection:
        postgres = connection.dialect.name == "postgresql"
        if postgres:
            await connection.execute(text("SELECT pg_advisory_lock(:k)"), {"k": _LOCK_KEY})
            await connection.commit()
        try:
            yield connection
        finally:
            if postgres:
                await connection.rollback()
                await connection.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": _LOCK_KEY})
                await connection.commit()


def _upgrade(connection: Connection, cfg: Config) -> None:
    cfg.attributes["connection"] = connection
    command.upgrade(cfg, "head")


async def upgrade_head(connection: AsyncConnection) -> None:
    """Migrate on `connection` (the one holding `startup_lock`)."""
    cfg = alembic_config(connection.engine.url.render_as_string(hide_password=False))
    await connection.run_sync(_upgrade, cfg)
    await connection.commit()
