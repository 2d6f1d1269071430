"""Before serving: wait for the database, then, under the replicas' startup lock, migrate it to head
and seed the first accounts (so replicas starting together create one admin, not one each)."""

from __future__ import annotations

import asyncio
import logging

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from cloud.app.bootstrap import publish, seed_if_empty
from cloud.app.db.engine import make_engine
from cloud.app.db.migrate import startup_lock, upgrade_head
from cloud.app.settings import CloudSettings

log = logging.getLogger("cloud.prestart")


async def prestart(settings: CloudSettings, wait_s: float = 60.0) -> None:
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    engine = make_engine(settings.async_database_url, pool_size=1)
    try:
        deadline = asyncio.get_running_loop().time() + wait_s
        while True:
            try:
                async with engine.connect() as conn:
                    await conn.execute(text("SELECT 1"))
                break
            except Exception as exc:  # not up yet: compose starts us beside the database
                if asyncio.get_running_loop().time() > deadline:
                    raise RuntimeError(f"database unreachable: {exc}") from exc
                log.info("waiting for the database", extra={"fields": {"error": str(exc)}})
                await asyncio.sleep(1.0)
        async with startup_lock(engine) as connection:
            await upgrade_head(connection)
            async with AsyncSession(bind=connection, expire_on_commit=False) as session:
                creds = await seed_if_empty(session, settings)
        if creds is not None:
            publish(creds, settings)
    finally:
        await engine.dispose()


def main() -> None:
    asyncio.run(prestart(CloudSettings()))


if __name__ == "__main__":
    main()
