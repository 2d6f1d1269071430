"""Offline mode against the real cloud (docs/architecture.md §6): with the cloud down the edge keeps answering, says
the cloud is unreachable and queues every escalation (depth in /status and /metrics, a warning past the
alarm depth); when the cloud is back the outbox drains, and a SIGKILL of edge-api in the middle of the
drain neither loses nor duplicates anything: the cloud ends up holding exactly the escalated queries.

Real processes throughout: the cloud API on a fresh PostgreSQL database (CLOUD_TEST_DB=sqlite: the
embedded one) with the demo detectors of cloud.app.seed_demo, inference, edge-api and the nginx gateway.
"""

from __future__ import annotations

import asyncio
import itertools
import re
import sqlite3
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest

from cloud.app.seed_demo import DEMO_DETECTOR_IDS, DEMO_DIGIT_ID, DEMO_SEVEN_ID
from tests.support import cloud as cloud_support
from tests.support.cloud import DEVICE_TOKEN, CloudServer
from tests.support.stack import ADMIN, EdgeStack

IQ_PATH = "/device-api/v1/image-queries"
QUERIES = 500
ALARM_DEPTH = 100
# One query in five escalates through the decision tree (unsure at a threshold of 1.0); the rest ask
# for it (want_async).
LOW_CONFIDENCE_EVERY = 5
EDGE_CONFIG = {
    "global_config": {"confident_audit_rate": 0.0},
    # Never rate-limited: every unsure answer escalates.
    "edge_inference_configs": {"offline": {"min_time_between_escalations": 1e-6}},
    "detectors": [
        {"detector_id": detector_id, "edge_inference_config": "offline", "confidence_threshold": 0.9}
        for detector_id in DEMO_DETECTOR_IDS
    ],
}


def wait_for(check: Callable[[], Any], what: str, timeout: float = 60.0, interval: float = 0.1) -> Any:
    """Poll until `check` returns something truthy; return it."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(interval)


def cloud_rows(database: cloud_support.TestDatabase, sql: str) -> list[tuple[Any, ...]]:
    """Rows of one query on the cloud's database (either engine; no parameters)."""
    if cloud_support.use_sqlite():
        with sqlite3.connect(database.workdir / "cloud.db") as conn:
            return [tuple(row) for row in conn.execute(sql).fetchall()]

    async def fetch() -> list[tuple[Any, ...]]:
        conn = await asyncpg.connect(database.url)
        try:
            return [tuple(row) for row in await conn.fetch(sql)]
        finally:
            await conn.close()

    return asyncio.run(fetch())


def escalation_count(database: cloud_support.TestDatabase) -> int:
    return int(cloud_rows(database, "SELECT count(*) FROM escalations")[0][0])


def outbox_metric(edge: EdgeStack) -> float | None:
    """edge_outbox_pending from edge-api's /metrics."""
    text = httpx.get(f"{edge.edge_url}/metrics", headers=ADMIN, timeout=10).text
    found = re.search(r"^edge_outbox_pending (\S+)$", text, re.MULTILINE)
    return float(found.group(1)) if found else None


@pytest.fixture(scope="module")
def database(tmp_path_factory: pytest.TempPathFactory) -> Iterator[cloud_support.TestDatabase]:
    db = cloud_support.TestDatabase(tmp_path_factory.mktemp("offline-db")).create()
    yield db
    db.drop()


@pytest.fixture(scope="module")
def cloud(
    database: cloud_support.TestDatabase, tmp_path_factory: pytest.TempPathFactory, demo_models: Path
) -> Iterator[CloudServer]:
    server = CloudServer(database.url, tmp_path_factory.mktemp("offline-cloud"))
    try:
        server.start()
        server.seed_demo(demo_models, "--no-upload")
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def edge(
    cloud: CloudServer, demo_models: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[EdgeStack]:
    stack = EdgeStack(
        tmp_path_factory.mktemp("offline-edge"),
        demo_models,
        cloud,
        edge_env={
            "EDGE_API_TOKEN": DEVICE_TOKEN,
            "EDGE_OUTBOX_ALARM_DEPTH": str(ALARM_DEPTH),
            # Two at a time: the drain takes long enough to be interrupted in the middle.
            "EDGE_OUTBOX_CONCURRENCY": "2",
            "EDGE_LOG_LEVEL": "warning",
        },
    )
    try:
        yield stack.start(EDGE_CONFIG)
    finally:
        stack.stop()


def escalate(camera: httpx.Client, n: int, image: bytes) -> dict[str, Any]:
    """Query number `n`, one the edge must escalate; its answer as the camera sees it."""
    detector_id = DEMO_DIGIT_ID if n % 2 else DEMO_SEVEN_ID
    params: dict[str, str] = {"detector_id": detector_id}
    if n % LOW_CONFIDENCE_EVERY:
        params["want_async"] = "true"
    else:
        params["confidence_threshold"] = "1.0"
    resp = camera.post(IQ_PATH, params=params, content=image)
    assert resp.status_code == 200, resp.text
    body: dict[str, Any] = resp.json()
    return body


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_offline_queries_drain_exactly_once_through_a_sigkill(
    cloud: CloudServer,
    edge: EdgeStack,
    database: cloud_support.TestDatabase,
    digits: list[tuple[bytes, int]],
) -> None:
    assert wait_for(
        lambda: (
            httpx.get(f"{edge.edge_url}/status", headers=ADMIN, timeout=10).json()["cloud"]["reachable"]
            is True
        ),
        "the edge to reach the cloud",
    )
    assert escalation_count(database) == 0
    # The camera was at work before the outage: the edge has the cloud's word on its token.
    me = httpx.get(f"{edge.gateway_url}/device-api/v1/me", headers={"x-api-token": DEVICE_TOKEN}, timeout=10)
    assert me.status_code == 200, me.text

    # -- the cloud goes away ------------------------------------------------------------------------
    cloud.stop()
    wait_for(
        lambda: (
            httpx.get(f"{edge.edge_url}/status", headers=ADMIN, timeout=10).json()["cloud"]["reachable"]
            is False
        ),
        "the edge to notice the cloud is gone",
    )

    images = itertools.cycle([image for image, _ in digits])
    work = [(n, next(images)) for n in range(QUERIES)]
    with (
        httpx.Client(base_url=edge.gateway_url, headers={"x-api-token": DEVICE_TOKEN}, timeout=30) as camera,
        ThreadPoolExecutor(4) as pool,
    ):
        answers = list(pool.map(lambda job: escalate(camera, *job), work))
        # An ordinary confident query is still answered by the edge, and queues nothing.
        confident = camera.post(
            IQ_PATH,
            params={"detector_id": DEMO_DIGIT_ID, "confidence_threshold": "0.0"},
            content=digits[0][0],
        )
    assert confident.status_code == 200, confident.text
    assert confident.json()["result"]["from_edge"] is True and confident.json()["done_processing"] is True
    assert confident.json()["intellioptics"]["escalated"] is False

    ids = [a["id"] for a in answers]
    assert len(set(ids)) == QUERIES
    for n, a in enumerate(answers):
        assert a["intellioptics"]["escalated"] is True, a
        assert a["done_processing"] is False
        reason = "low_confidence" if n % LOW_CONFIDENCE_EVERY == 0 else "want_async"
        assert a["intellioptics"]["escalation_reason"] == reason
        if reason == "low_confidence":
            assert a["result"]["from_edge"] is True and a["result"]["source"] == "ALGORITHM"

    # Everything is queued; the edge says so in /status, /metrics and its log.
    rows = edge.outbox_rows()
    assert sorted(r[0] for r in rows) == sorted(ids) and {r[2] for r in rows} == {"pending"}
    status = httpx.get(f"{edge.edge_url}/status", headers=ADMIN, timeout=10).json()
    assert status["cloud"]["reachable"] is False and status["cloud"]["last_error"]
    assert status["outbox"]["pending"] == QUERIES and status["outbox"]["dead"] == 0
    assert status["outbox"]["alarm"] is True
    wait_for(lambda: outbox_metric(edge) == QUERIES, "edge_outbox_pending to show the whole outbox")
    assert edge.edge is not None
    assert wait_for(
        lambda: "outbox depth over alarm threshold" in edge.edge.output_tail(200),  # type: ignore[union-attr]
        "the outbox alarm in edge-api's log",
    )
    assert escalation_count(database) == 0

    # -- the cloud is back; edge-api dies in the middle of the drain ------------------------------------
    cloud.start()  # same database, same port

    def well_under_way() -> int:
        delivered = escalation_count(database)
        return delivered if delivered >= QUERIES // 5 else 0

    delivered_before_kill = wait_for(well_under_way, "the drain to get under way", interval=0.02)
    edge.kill_edge()
    at_kill = escalation_count(database)
    assert delivered_before_kill <= at_kill < QUERIES, "the drain finished before edge-api was killed"
    assert len(edge.outbox_rows()) > 0

    edge.start_edge()  # same data directory
    wait_for(lambda: not edge.outbox_rows(), "the outbox to drain", timeout=300, interval=0.5)
    status = httpx.get(f"{edge.edge_url}/status", headers=ADMIN, timeout=10).json()
    assert status["outbox"] == {"pending": 0, "dead": 0, "oldest_pending_age_s": None, "alarm": False}
    assert status["cloud"]["reachable"] is True
    wait_for(lambda: outbox_metric(edge) == 0, "edge_outbox_pending back to zero")

    # -- the cloud holds exactly the escalated queries, each once ------------------------------------------
    escalations = cloud_rows(database, "SELECT image_query_id, reason, detector_id FROM escalations")
    assert len(escalations) == QUERIES
    assert sorted(r[0] for r in escalations) == sorted(ids)
    want = {
        a["id"]: ("low_confidence" if n % LOW_CONFIDENCE_EVERY == 0 else "want_async", a["detector_id"])
        for n, a in enumerate(answers)
    }
    assert {r[0]: (r[1], r[2]) for r in escalations} == want
    queries = cloud_rows(database, "SELECT id, origin FROM image_queries")
    assert sorted(r[0] for r in queries) == sorted(ids)
    assert {r[1] for r in queries} == {"edge"}
    items = cloud_rows(database, "SELECT image_query_id FROM review_items")
    assert sorted(r[0] for r in items) == sorted(ids)

    # Each stored image is the one the camera sent.
    with cloud.client() as device:
        for n in (0, 1, QUERIES - 1):
            image = device.get(f"{IQ_PATH}/{ids[n]}/image")
            assert image.status_code == 200, image.text
            assert image.content == work[n][1]
