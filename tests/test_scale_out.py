"""The cloud scaled out, many edges at once: one PostgreSQL database, two cloud-api replicas behind the
cloud gateway (nginx), one worker, and ten edges (inference, edge-api and updater each, with their own
ports, data and edge ids) posting queries concurrently while one replica is SIGKILLed and restarted.

What must hold: both replicas' first starts (racing on the empty database) created one admin; every
escalation reached the cloud exactly once; reviewers working through the gateway (so across both
replicas) were never handed the same item; a model promoted in the cloud reached every edge within two
refresh periods of the edges' updaters.
"""

from __future__ import annotations

import asyncio
import itertools
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest

from cloud.app.seed_demo import DEMO_DETECTOR_IDS, DEMO_DIGIT_ID, DEMO_SEVEN_ID
from common.bundle import current_bundle_dir
from tests.support import cloud as cloud_support
from tests.support.cloud import DEVICE_TOKEN, use_sqlite
from tests.support.cloud_factories_worker import eventually
from tests.support.scale import IQ_PATH, CloudReplicas, ScaledEdge, admin_client, start_edges, stop_edges
from tests.support.updater import Registry, bundle_archive

pytestmark = [
    pytest.mark.slow,
    pytest.mark.timeout(1200),
    pytest.mark.skipif(use_sqlite(), reason="replicas share one PostgreSQL database"),
]

EDGES = 10
QUERIES_PER_EDGE = 24
REVIEWERS = 4
# The edges' updaters poll the cloud this often; a promotion must reach them all within two periods.
REFRESH_S = 15.0
EDGE_CONFIG = {
    "global_config": {"refresh_rate": REFRESH_S, "confident_audit_rate": 0.0},
    # Never rate-limited: every query the camera marks escalates.
    "edge_inference_configs": {"scale": {"min_time_between_escalations": 1e-6}},
    "detectors": [
        {"detector_id": detector_id, "edge_inference_config": "scale", "confidence_threshold": 0.9}
        for detector_id in DEMO_DETECTOR_IDS
    ],
}
ANSWERS = {DEMO_DIGIT_ID: "3", DEMO_SEVEN_ID: "YES"}


def rows(database: cloud_support.TestDatabase, sql: str) -> list[tuple[Any, ...]]:
    async def fetch() -> list[tuple[Any, ...]]:
        conn = await asyncpg.connect(database.url)
        try:
            return [tuple(row) for row in await conn.fetch(sql)]
        finally:
            await conn.close()

    return asyncio.run(fetch())


@pytest.fixture(scope="module")
def cloud(tmp_path_factory: pytest.TempPathFactory, demo_models: Path) -> Iterator[CloudReplicas]:
    workdir = tmp_path_factory.mktemp("scale-cloud")
    database = cloud_support.TestDatabase(workdir).create()
    replicas = CloudReplicas(workdir, database, count=2)
    try:
        replicas.start()
        replicas.server().seed_demo(demo_models, "--cloud-url", replicas.url)
        yield replicas
    finally:
        replicas.stop()
        database.drop()


@pytest.fixture(scope="module")
def edges(
    cloud: CloudReplicas, demo_models: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[list[ScaledEdge]]:
    started = start_edges(
        tmp_path_factory.mktemp("scale-edges"),
        cloud.server(),
        demo_models,
        EDGES,
        EDGE_CONFIG,
        edge_env={"EDGE_OUTBOX_CONCURRENCY": "4"},
    )
    try:
        yield started
    finally:
        stop_edges(started)


def ask(camera: httpx.Client, n: int, image: bytes) -> dict[str, Any]:
    """Query `n` of one camera: every one escalates (asked for, or unsure at a threshold of 1.0)."""
    params = {"detector_id": DEMO_DETECTOR_IDS[n % 2]}
    params.update({"want_async": "true"} if n % 3 else {"confidence_threshold": "1.0"})
    response = camera.post(IQ_PATH, params=params, content=image)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    assert body["intellioptics"]["escalated"] is True, body
    return body


def post_round(edges: list[ScaledEdge], first: int, count: int, images: list[bytes]) -> list[str]:
    """`count` queries per edge, all edges at once; the ids the edges escalated."""
    cameras = [
        httpx.Client(base_url=edge.edge_url, headers={"x-api-token": DEVICE_TOKEN}, timeout=60)
        for edge in edges
    ]
    jobs = [(camera, n) for n in range(first, first + count) for camera in cameras]
    try:
        with ThreadPoolExecutor(16) as pool:
            answers = list(pool.map(lambda job: ask(job[0], job[1], images[job[1] % len(images)]), jobs))
    finally:
        for camera in cameras:
            camera.close()
    return [answer["id"] for answer in answers]


def drained(edges: list[ScaledEdge]) -> bool:
    for edge in edges:
        outbox = edge.status()["outbox"]
        assert outbox["dead"] == 0, (edge.edge_id, outbox)
        if outbox["pending"]:
            return False
    return True


class ReviewLog:
    """Every claim the reviewers got, to find an item handed to two of them."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.claims: list[tuple[int, str]] = []
        self.answered: list[int] = []

    def review(self, reviewer: httpx.Client, name: str) -> None:
        """Claim and answer until both demo queues are empty."""
        empty = 0
        for detector_id in itertools.cycle(DEMO_DETECTOR_IDS):
            claimed = reviewer.post("/api/v1/review/claim", params={"detector_id": detector_id})
            assert claimed.status_code in (200, 204), claimed.text
            if claimed.status_code == 204:
                empty += 1
                if empty >= 2 * len(DEMO_DETECTOR_IDS):
                    return
                continue
            empty = 0
            item = claimed.json()
            with self.lock:
                self.claims.append((item["id"], name))
            answer = reviewer.post(
                f"/api/v1/review/items/{item['id']}/answer", json={"label": ANSWERS[detector_id]}
            )
            assert answer.status_code == 200, answer.text
            with self.lock:
                self.answered.append(item["id"])


def test_many_edges_on_replicas_escalate_exactly_once_through_a_replica_kill(
    cloud: CloudReplicas,
    edges: list[ScaledEdge],
    digits: list[tuple[bytes, int]],
    photos: list[bytes],
    demo_models: Path,
    tmp_path: Path,
) -> None:
    database = cloud.database
    # Both replicas started on the empty database at once; the startup lock let one seed.
    users = rows(database, "SELECT username FROM users ORDER BY username")
    assert [u for (u,) in users] == ["admin", "device", "reviewer", "trainer"]
    assert rows(database, "SELECT count(*) FROM escalations") == [(0,)]
    images = [image for image, _ in digits[:8]] + photos[:4]

    # -- queries from every edge at once; one replica dies in the middle and comes back ------------------
    escalated = post_round(edges, 0, QUERIES_PER_EDGE // 3, images)
    cloud.kill(0)
    escalated += post_round(edges, QUERIES_PER_EDGE // 3, QUERIES_PER_EDGE // 3, images)
    cloud.restart(0)
    escalated += post_round(
        edges, 2 * (QUERIES_PER_EDGE // 3), QUERIES_PER_EDGE - 2 * (QUERIES_PER_EDGE // 3), images
    )
    assert len(escalated) == len(set(escalated)) == EDGES * QUERIES_PER_EDGE
    eventually(lambda: drained(edges), timeout=300, interval=0.25, what="every edge's outbox drained")

    # Exactly once: each escalated query is in the cloud one time, nothing else is.
    received = rows(database, "SELECT image_query_id, count(*) FROM escalations GROUP BY image_query_id")
    assert sorted(iq for iq, _ in received) == sorted(escalated)
    assert {count for _, count in received} == {1}
    queued = rows(database, "SELECT image_query_id, count(*) FROM review_items GROUP BY image_query_id")
    assert sorted(iq for iq, _ in queued) == sorted(escalated) and {count for _, count in queued} == {1}
    # Every edge's escalations came from that edge.
    per_edge = dict(rows(database, "SELECT edge_id, count(*) FROM escalations GROUP BY edge_id"))
    assert per_edge == {edge.edge_id: QUERIES_PER_EDGE for edge in edges}

    # -- reviewers through the gateway, spread over both replicas ---------------------------------------
    server = cloud.server()
    admin = admin_client(cloud)
    try:
        for i in range(REVIEWERS):
            created = admin.post(
                "/api/v1/admin/users",
                json={
                    "username": f"scale-reviewer-{i}",
                    "role": "reviewer",
                    "password": f"scale-password-{i}",
                },
            )
            assert created.status_code == 201, created.text
    finally:
        admin.close()
    sessions = [server.login(f"scale-reviewer-{i}", f"scale-password-{i}") for i in range(REVIEWERS)]
    log = ReviewLog()
    try:
        with ThreadPoolExecutor(REVIEWERS) as pool:
            list(pool.map(lambda i: log.review(sessions[i], f"scale-reviewer-{i}"), range(REVIEWERS)))
    finally:
        for session in sessions:
            session.close()
    claimed_by: dict[int, set[str]] = {}
    for item_id, name in log.claims:
        claimed_by.setdefault(item_id, set()).add(name)
    assert [item for item, names in claimed_by.items() if len(names) > 1] == []
    assert sorted(log.answered) == sorted(claimed_by) and len(claimed_by) == len(escalated)
    assert rows(database, "SELECT count(*) FROM review_items WHERE status = 'pending'") == [(0,)]

    # -- a promotion reaches every edge within two refresh periods --------------------------------------
    source = current_bundle_dir(demo_models, DEMO_DIGIT_ID)
    assert source is not None
    archive = bundle_archive(source, tmp_path / "scale-v2.tar.gz", version="scale-v2")
    registry = Registry(server)
    try:
        promoted_at = time.monotonic()
        registry.upload(DEMO_DIGIT_ID, archive, promote=True)
    finally:
        registry.close()
    reached: dict[str, float] = {}

    def everywhere() -> bool:
        for edge in edges:
            if edge.edge_id in reached:
                continue
            answer = httpx.post(
                f"{edge.edge_url}{IQ_PATH}",
                params={"detector_id": DEMO_DIGIT_ID, "confidence_threshold": "0.0"},
                content=digits[0][0],
                headers={"x-api-token": DEVICE_TOKEN},
                timeout=30,
            )
            assert answer.status_code == 200, answer.text
            if answer.json()["intellioptics"]["model_version"] == "scale-v2":
                reached[edge.edge_id] = time.monotonic() - promoted_at
        return len(reached) == len(edges)

    eventually(everywhere, timeout=4 * REFRESH_S, interval=0.25, what="the promoted version on every edge")
    assert max(reached.values()) <= 2 * REFRESH_S, reached
