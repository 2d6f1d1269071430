"""Cloud fixtures: one fresh database per test session, one cloud API process per module."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.cloud import CloudServer, TestDatabase, use_sqlite


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    if not use_sqlite():
        return
    skip = pytest.mark.skip(reason="needs PostgreSQL (SELECT ... FOR UPDATE SKIP LOCKED)")
    for item in items:
        if "postgres_only" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def cloud_db(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestDatabase]:
    db = TestDatabase(tmp_path_factory.mktemp("cloud-db")).create()
    yield db
    db.drop()


@pytest.fixture(scope="module")
def cloud(cloud_db: TestDatabase, tmp_path_factory: pytest.TempPathFactory) -> Iterator[CloudServer]:
    server = CloudServer(cloud_db.url, Path(tmp_path_factory.mktemp("cloud"))).start()
    yield server
    server.stop()
