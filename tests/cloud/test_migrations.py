"""The Alembic migrations build exactly the schema the models describe, on PostgreSQL and SQLite, and
the newest one can be taken back and applied again."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import text
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import create_async_engine

from cloud.app.db.migrate import MIGRATIONS, alembic_config
from cloud.app.db.models import Base
from cloud.app.prestart import prestart
from cloud.app.settings import CloudSettings, to_async_url
from tests.support import cloud as support
from tests.support.cloud_factories_worker import private_database


@pytest.fixture(scope="module")
def database(tmp_path_factory: pytest.TempPathFactory) -> Iterator[support.TestDatabase]:
    yield from private_database(tmp_path_factory)


def _diff(connection: Connection) -> list[Any]:
    context = MigrationContext.configure(connection, opts={"compare_type": True})
    return list(compare_metadata(context, Base.metadata))


async def schema_diff(url: str) -> list[Any]:
    engine = create_async_engine(url)
    try:
        async with engine.connect() as connection:
            return await connection.run_sync(_diff)
    finally:
        await engine.dispose()


def test_migrations_match_the_models_and_step_back(database: support.TestDatabase) -> None:
    url = to_async_url(database.url)
    cfg = alembic_config(url)
    head = ScriptDirectory.from_config(cfg).get_current_head()
    assert head is not None and (Path(MIGRATIONS) / "versions").is_dir()
    command.upgrade(cfg, "head")
    assert asyncio.run(schema_diff(url)) == []
    command.downgrade(cfg, "-1")
    assert asyncio.run(schema_diff(url)) != []  # the newest migration changed something
    command.upgrade(cfg, "head")
    assert asyncio.run(schema_diff(url)) == []


# The revision that gives the first start's `trainer` service account the trainer role.
TRAINER_ROLE_REVISION = "0004"


async def _sql(url: str, *statements: str) -> list[Any]:
    engine = create_async_engine(url)
    try:
        async with engine.begin() as connection:
            rows: list[Any] = []
            for statement in statements:
                result = await connection.execute(text(statement))
                rows = list(result.all()) if result.returns_rows else rows
            return rows
    finally:
        await engine.dispose()


def test_an_existing_trainer_account_becomes_a_trainer(database: support.TestDatabase) -> None:
    """Databases from before the trainer role: the token-only `trainer` account the first start made
    an admin is a trainer after the upgrade (and an admin again after a downgrade); people stay admins."""
    url = to_async_url(database.url)
    cfg = alembic_config(url)
    before = ScriptDirectory.from_config(cfg).get_revision(TRAINER_ROLE_REVISION).down_revision
    assert isinstance(before, str)
    command.upgrade(cfg, "head")
    command.downgrade(cfg, before)
    users = "INSERT INTO users (id, username, email, role, password_hash, is_active, created_at) VALUES "
    asyncio.run(
        _sql(
            url,
            users + "('usr_t', 'trainer', 't@x', 'admin', NULL, TRUE, CURRENT_TIMESTAMP)",
            users + "('usr_a', 'root', 'a@x', 'admin', 'scrypt$x', TRUE, CURRENT_TIMESTAMP)",
        )
    )
    roles = "SELECT username, role FROM users WHERE id IN ('usr_t', 'usr_a') ORDER BY username"
    command.upgrade(cfg, "head")
    assert asyncio.run(_sql(url, roles)) == [("root", "admin"), ("trainer", "trainer")]
    command.downgrade(cfg, before)
    assert asyncio.run(_sql(url, roles)) == [("root", "admin"), ("trainer", "admin")]
    command.upgrade(cfg, "head")
    asyncio.run(_sql(url, "DELETE FROM users WHERE id IN ('usr_t', 'usr_a')"))


def test_replicas_starting_together_migrate_once_and_create_one_admin(tmp_path: Path) -> None:
    """Three cloud-api replicas start at once on an empty database: each waits for the startup lock,
    the first migrates and seeds, the others find both done and serve."""
    if support.use_sqlite():
        pytest.skip("the startup lock is PostgreSQL's; SQLite serves one process")
    database = support.TestDatabase(tmp_path).create()
    try:

        async def start_replicas() -> list[Any]:
            replicas = [
                CloudSettings(
                    database_url=database.url, data_dir=tmp_path / f"replica-{i}", api_token_file=""
                )
                for i in range(3)
            ]
            return await asyncio.gather(
                *(prestart(settings) for settings in replicas), return_exceptions=True
            )

        outcomes = asyncio.run(start_replicas())
        assert outcomes == [None, None, None]
        users = asyncio.run(_rows(database.url, "SELECT username FROM users ORDER BY username"))
        assert [row[0] for row in users] == ["admin", "device", "reviewer", "trainer"]
        # One replica created them, and only it kept the first start's credentials.
        assert len(list(tmp_path.glob("replica-*/credentials.json"))) == 1
    finally:
        database.drop()


async def _rows(url: str, sql: str) -> list[Any]:
    engine = create_async_engine(to_async_url(url))
    try:
        async with engine.connect() as connection:
            return list((await connection.execute(text(sql))).all())
    finally:
        await engine.dispose()
