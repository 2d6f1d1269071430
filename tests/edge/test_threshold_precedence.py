"""Which threshold an edge answers at, in process: the request's, else the edge config's, else the cloud's
current detector setting (kept by the prior book, fetched for detectors with a model too, never waited
for), else the model's default; with a scripted cloud and a settable clock, and the edge's real SQLite
store, so an outage and a restart keep the last value the cloud gave."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from common.edge_config import DetectorConfig, EdgeConfig, InferenceConfig
from common.wire.inference import ModelInfo
from edge.api.core.detectors import EdgeDetector, Threshold
from edge.api.core.priors import PriorBook
from edge.api.core.store import EdgeStore
from edge.api.escalation.cloud_link import CloudLink

SERVED = "det_ServedWithAModel00000000000"
OTHER = "det_AnotherServedDetector000000"
OFF = "det_DisabledOnThisEdge000000000"
TTL_S = 30.0
CLOUD_URL = "http://cloud.test"


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


class ScriptedCloud:
    """The prior route: a threshold per detector, or down (connection refused) for everyone."""

    def __init__(self) -> None:
        self.thresholds: dict[str, float] = {}
        self.down = False
        self.asked: list[str] = []

    def handle(self, request: httpx.Request) -> httpx.Response:
        detector_id = request.url.path.split("/")[-2]
        self.asked.append(detector_id)
        if self.down:
            raise httpx.ConnectError("connection refused", request=request)
        if detector_id not in self.thresholds:
            return httpx.Response(404, json={"detail": "unknown detector"})
        return httpx.Response(200, json=prior_body(detector_id, self.thresholds[detector_id]))


def prior_body(detector_id: str, threshold: float) -> dict[str, Any]:
    return {
        "detector_id": detector_id,
        "mode": "BINARY",
        "labels": ["YES", "NO"],
        "counts": [4, 1],
        "confidence_threshold": threshold,
        "has_model": True,
    }


def model(default: float = 0.8) -> ModelInfo:
    return ModelInfo(
        detector_id=SERVED,
        version="v1",
        detector_name="door",
        query="Is the door open?",
        mode="BINARY",
        labels=["YES", "NO"],
        default_confidence_threshold=default,
        loaded=True,
    )


def detector(configured: float | None = None, with_model: bool = True) -> EdgeDetector:
    return EdgeDetector(
        DetectorConfig(detector_id=SERVED, confidence_threshold=configured),
        InferenceConfig(),
        model() if with_model else None,
    )


class Edge:
    """A prior book on a store in `root`; `restart` drops memory and reads the store again."""

    def __init__(self, root: Path, cloud: ScriptedCloud, clock: Clock) -> None:
        self.root, self.cloud, self.clock = root, cloud, clock
        self.store: EdgeStore | None = None
        self.http: httpx.AsyncClient | None = None
        self.book: PriorBook | None = None

    async def start(self) -> PriorBook:
        self.store = EdgeStore(self.root / "edge.sqlite3")
        await self.store.open()
        self.http = httpx.AsyncClient(base_url=CLOUD_URL, transport=httpx.MockTransport(self.cloud.handle))
        self.book = PriorBook(
            self.store,
            self.http,
            CloudLink(CLOUD_URL),
            "io_cameratoken",
            ttl_s=TTL_S,
            wait_s=1.0,
            retry_s=0.0,
            timeout_s=1.0,
            clock=self.clock,
        )
        await self.book.load()
        return self.book

    async def stop(self) -> None:
        if self.book is not None:
            await self.book.close()
        if self.http is not None:
            await self.http.aclose()
        if self.store is not None:
            await self.store.close()

    async def restart(self) -> PriorBook:
        await self.stop()
        return await self.start()


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def cloud() -> ScriptedCloud:
    return ScriptedCloud()


@pytest.fixture
async def edge(tmp_path: Path, cloud: ScriptedCloud, clock: Clock) -> AsyncIterator[Edge]:
    e = Edge(tmp_path, cloud, clock)
    await e.start()
    yield e
    await e.stop()


def book_of(edge: Edge) -> PriorBook:
    assert edge.book is not None
    return edge.book


async def settle() -> None:
    """Wait for the background fetches (and their writes to the store) to finish."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 5
    while any(t is not asyncio.current_task() for t in asyncio.all_tasks()):
        assert loop.time() < deadline, f"still running: {asyncio.all_tasks()}"
        await asyncio.sleep(0.01)


async def answered_at(book: PriorBook, det: EdgeDetector, requested: float | None = None) -> Threshold:
    """What an image query for `det` is answered at now (as edge.api.core.image_queries asks)."""
    return det.threshold(book.cloud_threshold(det.detector_id), requested)


def test_the_request_wins_then_the_edge_config_then_the_cloud_then_the_model() -> None:
    assert detector(0.7).threshold(0.6, 0.95) == Threshold(0.95, "request")
    assert detector(0.7).threshold(0.6) == Threshold(0.7, "edge_config")
    assert detector().threshold(0.6) == Threshold(0.6, "cloud")
    assert detector().threshold(None) == Threshold(0.8, "model")
    # An edge config of 0 is a value, not a gap.
    assert detector(0.0).threshold(0.6) == Threshold(0.0, "edge_config")
    assert detector(with_model=False).threshold(0.6) == Threshold(0.6, "cloud")
    assert detector(with_model=False).threshold(None).source == "default"


async def test_a_served_detector_takes_the_clouds_threshold_without_waiting_for_it(
    edge: Edge, cloud: ScriptedCloud
) -> None:
    book = book_of(edge)
    cloud.thresholds[SERVED] = 0.6
    # Nothing fetched yet: the model's default now, never a wait; the fetch runs for the next query.
    assert await answered_at(book, detector()) == Threshold(0.8, "model")
    await settle()
    assert await answered_at(book, detector()) == Threshold(0.6, "cloud")
    assert cloud.asked == [SERVED]


async def test_a_change_in_the_cloud_applies_after_the_next_refresh(
    edge: Edge, cloud: ScriptedCloud, clock: Clock
) -> None:
    book = book_of(edge)
    cloud.thresholds[SERVED] = 0.6
    book.refresh_soon(SERVED)
    await settle()
    cloud.thresholds[SERVED] = 0.97

    clock.now += TTL_S - 1  # still fresh: not asked again
    assert await answered_at(book, detector()) == Threshold(0.6, "cloud")
    assert cloud.asked == [SERVED]
    clock.now += 1  # stale: answered at once with the value at hand, refreshed in the background
    assert await answered_at(book, detector()) == Threshold(0.6, "cloud")
    await settle()
    assert await answered_at(book, detector()) == Threshold(0.97, "cloud")
    assert len(cloud.asked) == 2


async def test_the_edge_configs_threshold_wins_over_the_clouds(edge: Edge, cloud: ScriptedCloud) -> None:
    book = book_of(edge)
    cloud.thresholds[SERVED] = 0.6
    book.refresh_soon(SERVED)
    await settle()
    assert await answered_at(book, detector(configured=0.75)) == Threshold(0.75, "edge_config")
    assert await answered_at(book, detector(configured=0.75), requested=0.5) == Threshold(0.5, "request")


async def test_with_the_cloud_unreachable_the_stored_threshold_is_used_also_after_a_restart(
    edge: Edge, cloud: ScriptedCloud, clock: Clock
) -> None:
    cloud.thresholds[SERVED] = 0.66
    book_of(edge).refresh_soon(SERVED)
    await settle()
    cloud.down = True
    cloud.thresholds[SERVED] = 0.99  # never reaches the edge

    clock.now += TTL_S * 10
    book = book_of(edge)
    assert await answered_at(book, detector()) == Threshold(0.66, "cloud")
    await settle()  # the refresh failed: the stored value stays
    assert await answered_at(book, detector()) == Threshold(0.66, "cloud")
    assert book.snapshot(SERVED) is not None and "cloud unreachable" in str(book.last_error[SERVED])

    book = await edge.restart()
    assert await answered_at(book, detector()) == Threshold(0.66, "cloud")
    await settle()
    assert await answered_at(book, detector()) == Threshold(0.66, "cloud")

    cloud.down = False
    await answered_at(book, detector())  # still stale: refreshed now that the cloud answers
    await settle()
    assert await answered_at(book, detector()) == Threshold(0.99, "cloud")


@pytest.mark.processes
async def test_a_detector_the_cloud_forgets_falls_back_to_the_models_default(
    edge: Edge, cloud: ScriptedCloud, clock: Clock
) -> None:
    book = book_of(edge)
    cloud.thresholds[SERVED] = 0.6
    book.refresh_soon(SERVED)
    await settle()
    del cloud.thresholds[SERVED]
    clock.now += TTL_S
    book.cloud_threshold(SERVED)
    await settle()
    assert await answered_at(book, detector()) == Threshold(0.8, "model")


async def test_every_configured_enabled_detector_is_prefetched_with_a_model_or_without(
    edge: Edge, cloud: ScriptedCloud
) -> None:
    config = EdgeConfig.model_validate(
        {
            "detectors": [
                {"detector_id": SERVED},
                {"detector_id": OTHER, "edge_inference_config": "no_cloud"},
                {"detector_id": OFF, "edge_inference_config": "disabled"},
            ]
        }
    )
    cloud.thresholds.update({SERVED: 0.6, OTHER: 0.7, OFF: 0.8})
    book = book_of(edge)
    book.prefetch_configured(config)
    await settle()
    assert sorted(cloud.asked) == sorted([SERVED, OTHER])
    assert book.known(SERVED) is not None and book.known(OFF) is None
    snapshot = book.snapshot(OTHER)
    assert snapshot is not None and snapshot["confidence_threshold"] == 0.7
