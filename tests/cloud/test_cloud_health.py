"""The cloud starts on a fresh database, migrates it, and refuses callers without credentials."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support import cloud as support
from tests.support.cloud import DEVICE_TOKEN, CloudServer
from tests.support.cloud_factories_worker import private_database

pytestmark = pytest.mark.in_process


@pytest.fixture(scope="module")
def cloud_db(tmp_path_factory: pytest.TempPathFactory) -> Iterator[support.TestDatabase]:
    """A database of this module's own, so that the cloud it starts is a first start."""
    yield from private_database(tmp_path_factory)


def test_fresh_database_is_migrated_and_ready(cloud: CloudServer) -> None:
    with cloud.client(token=None) as http:
        assert http.get("/health/live").json() == {"status": "ok"}
        assert http.get("/health/ready").json()["database"] is True


def test_first_start_writes_the_device_token_for_scripts(cloud: CloudServer) -> None:
    assert (cloud.workdir / "api-token").read_text().strip() == DEVICE_TOKEN
    assert (cloud.workdir / "api-token").stat().st_mode & 0o077 == 0
