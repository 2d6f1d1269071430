"""Cloud fixtures: one fresh database per test session, one cloud API per module (a process, or the app
inside the test process for modules marked `in_process`)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.support.cloud import CloudServer, TestDatabase, cloud_kind, use_sqlite
from tests.support.cloud_factories import CloudFactory
from tests.support.cloud_factories_registry import run_in_db, token_for


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    skip = pytest.mark.skip(reason="needs PostgreSQL (SELECT ... FOR UPDATE SKIP LOCKED)")
    for item in items:
        if use_sqlite() and "postgres_only" in item.keywords:
            item.add_marker(skip)
        # The cloud API of a module not marked in_process is a process.
        if "cloud" in getattr(item, "fixturenames", ()) and "in_process" not in item.keywords:
            item.add_marker(pytest.mark.processes)


@pytest.fixture(scope="session")
def cloud_db(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestDatabase]:
    db = TestDatabase(tmp_path_factory.mktemp("cloud-db")).create()
    yield db
    db.drop()


@pytest.fixture(scope="module")
def cloud(
    request: pytest.FixtureRequest, cloud_db: TestDatabase, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[CloudServer]:
    """The cloud API as a process; inside the test process for modules marked `in_process`."""
    server = cloud_kind(request.node)(cloud_db.url, Path(tmp_path_factory.mktemp("cloud"))).start()
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
