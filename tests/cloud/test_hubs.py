"""Hubs: an edge registers with its first heartbeat, later heartbeats update it, and administrators
see which edges are online."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import update
from sqlalchemy.ext.asyncio import AsyncSession

from cloud.app.core.hubs import ONLINE_WINDOW_S
from cloud.app.db.models import Hub
from tests.support import cloud as support
from tests.support.cloud import CloudServer
from tests.support.cloud_factories_worker import Tokens, now, private_database, run_sync, seed_tokens

pytestmark = pytest.mark.in_process


@pytest.fixture(scope="module")
def cloud_db(tmp_path_factory: pytest.TempPathFactory) -> Iterator[support.TestDatabase]:
    yield from private_database(tmp_path_factory)


@pytest.fixture(scope="module")
def tokens(cloud: CloudServer, cloud_db: support.TestDatabase) -> Tokens:
    return seed_tokens(cloud_db.url)


def new_edge_id() -> str:
    return "edge-" + secrets.token_hex(4)


def beat(cloud: CloudServer, edge_id: str, **fields: Any) -> dict[str, Any]:
    with cloud.client() as device:
        resp = device.post("/api/v1/hubs/heartbeat", json={"edge_id": edge_id, **fields})
    assert resp.status_code == 200, resp.text
    body: dict[str, Any] = resp.json()
    return body


def test_two_heartbeats_make_one_hub_with_the_latest_versions(cloud: CloudServer, tokens: Tokens) -> None:
    edge = new_edge_id()
    first = beat(
        cloud,
        edge,
        name="Line 3",
        deployed_versions={"det_a": "v1"},
        outbox_depth=7,
        info={"version": "0.1.0"},
    )
    second = beat(cloud, edge, deployed_versions={"det_a": "v2", "det_b": "v1"}, outbox_depth=0)

    with cloud.client(tokens.admin) as admin:
        listed = [hub for hub in admin.get("/api/v1/hubs").json() if hub["id"] == edge]
        one = admin.get(f"/api/v1/hubs/{edge}").json()
    assert len(listed) == 1
    hub = listed[0]
    assert hub == one
    assert hub["deployed_versions"] == {"det_a": "v2", "det_b": "v1"}
    assert hub["outbox_depth"] == 0
    # What the second heartbeat left out is kept from the first.
    assert hub["name"] == "Line 3"
    assert hub["info"] == {"version": "0.1.0"}
    assert hub["registered_at"] == first["registered_at"] == second["registered_at"]
    assert hub["last_seen_at"] == second["last_seen_at"] >= first["last_seen_at"]
    assert hub["online"] is True


def test_concurrent_first_heartbeats_register_one_hub(cloud: CloudServer, tokens: Tokens) -> None:
    edge = new_edge_id()
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda depth: beat(cloud, edge, outbox_depth=depth), range(8)))
    assert {answer["id"] for answer in answers} == {edge}
    with cloud.client(tokens.admin) as admin:
        assert [hub["id"] for hub in admin.get("/api/v1/hubs").json()].count(edge) == 1


def test_a_hub_silent_for_three_heartbeat_intervals_is_offline(
    cloud: CloudServer, cloud_db: support.TestDatabase, tokens: Tokens
) -> None:
    edge = new_edge_id()
    beat(cloud, edge)

    async def age(session: AsyncSession) -> None:
        long_ago = now() - timedelta(seconds=ONLINE_WINDOW_S + 5)
        await session.execute(update(Hub).where(Hub.id == edge).values(last_seen_at=long_ago))
        await session.commit()

    run_sync(cloud_db.url, age)
    with cloud.client(tokens.admin) as admin:
        assert admin.get(f"/api/v1/hubs/{edge}").json()["online"] is False
    beat(cloud, edge)
    with cloud.client(tokens.admin) as admin:
        assert admin.get(f"/api/v1/hubs/{edge}").json()["online"] is True


def test_heartbeats_need_a_device_token(cloud: CloudServer, tokens: Tokens) -> None:
    body = {"edge_id": new_edge_id()}
    with cloud.client(token=None) as anonymous:
        assert anonymous.post("/api/v1/hubs/heartbeat", json=body).status_code == 401
    with cloud.client("io_" + secrets.token_urlsafe(32)) as stranger:
        assert stranger.post("/api/v1/hubs/heartbeat", json=body).status_code == 401
    with cloud.client(tokens.reviewer) as reviewer:
        assert reviewer.post("/api/v1/hubs/heartbeat", json=body).status_code == 403
    with cloud.client(tokens.admin) as admin:
        assert admin.get(f"/api/v1/hubs/{body['edge_id']}").status_code == 404


def test_only_admins_list_hubs(cloud: CloudServer, tokens: Tokens) -> None:
    edge = new_edge_id()
    beat(cloud, edge)
    with cloud.client(token=None) as anonymous:
        assert anonymous.get("/api/v1/hubs").status_code == 401
    for token in (tokens.device, tokens.reviewer):
        with cloud.client(token) as caller:
            assert caller.get("/api/v1/hubs").status_code == 403
            assert caller.get(f"/api/v1/hubs/{edge}").status_code == 403


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"edge_id": ""},
        {"edge_id": "has spaces"},
        {"edge_id": "x" * 101},
        {"edge_id": "edge-1", "outbox_depth": -1},
        {"edge_id": "edge-1", "deployed_versions": {"det_a": 3}},
        {"edge_id": "edge-1", "name": "nul\u0000name"},
        {"edge_id": "edge-1", "info": {"huge": "x" * 20000}},
    ],
)
def test_malformed_heartbeats_are_refused_with_400(cloud: CloudServer, body: dict[str, object]) -> None:
    with cloud.client() as device:
        resp = device.post("/api/v1/hubs/heartbeat", json=body)
    assert resp.status_code == 400, resp.text
    assert resp.json()["detail"]
