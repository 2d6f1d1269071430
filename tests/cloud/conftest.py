"""Cloud fixtures: one fresh database per test session, one cloud API process per module."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.support.cloud import CloudServer, TestDatabase, use_sqlite
from tests.support.cloud_factories import CloudFactory
from tests.support.cloud_factories_registry import run_in_db, token_for


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


@pytest.fixture(scope="module")
def factory(cloud: CloudServer, cloud_db: TestDatabase) -> CloudFactory:
    """Rows written straight into the module's cloud database (and images into its blob store)."""
    return CloudFactory(cloud_db.url, cloud.data_dir / "blobs")


@pytest.fixture(scope="module")
def admin(cloud: CloudServer) -> Iterator[httpx.Client]:
    """The module's cloud as the first-start admin (API token)."""
    with cloud.client(token=run_in_db(cloud.database_url, lambda s: token_for(s, "admin"))) as http:
        yield http
