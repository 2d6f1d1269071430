"""A real RTSP camera on loopback (rtsp-server-perl fed by ffmpeg): frames become image queries on the
edge at the configured rate, and the worker reconnects by itself when the server goes away and returns."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.streams.conftest import DIGIT, StreamsStack, edge_config, start_streams_stack, stream
from tests.support.rtsp import RtspSource, rtsp_tools_missing
from tests.support.stack import ADMIN

pytestmark = [
    pytest.mark.processes,
    pytest.mark.skipif(rtsp_tools_missing() is not None, reason=rtsp_tools_missing() or ""),
]

FPS = 4.0


@pytest.fixture(scope="module")
def camera() -> Iterator[RtspSource]:
    source = RtspSource(fps=10).start()
    try:
        yield source
    finally:
        source.stop()


@pytest.fixture(scope="module")
def rtsp_stack(
    camera: RtspSource, demo_models: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[StreamsStack]:
    config = edge_config(
        stream(
            "gate-cam",
            camera.url,
            fps=FPS,
            rtsp_transport="udp",
            timeout_s=4.0,
            reconnect_initial_s=0.5,
            reconnect_max_s=2.0,
        )
    )
    # Frames take the cameras' path: through the gateway into edge-api's decision tree.
    cloud, stack = start_streams_stack(tmp_path_factory.mktemp("edge"), demo_models, config, via_gateway=True)
    try:
        yield stack
    finally:
        stack.streams.stop()
        stack.edge.stop()
        cloud.stop()


def submitted_iqs(stack: StreamsStack) -> float:
    """edge-api's own count of image queries it answered for the demo detector."""
    text = httpx.get(f"{stack.edge.edge_url}/metrics", headers=ADMIN, timeout=10).text
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("edge_image_queries_total{") and f'detector_id="{DIGIT}"' in line
    )


def test_rtsp_frames_become_image_queries_at_the_configured_rate(rtsp_stack: StreamsStack) -> None:
    svc = rtsp_stack.streams
    svc.wait_stream(
        "gate-cam", lambda s: s["connected"] and s["frames_submitted"] >= 3, timeout=40, what="RTSP frames"
    )
    edge_before = submitted_iqs(rtsp_stack)
    start = svc.stream("gate-cam")
    assert start is not None
    t0 = time.monotonic()
    time.sleep(4.0)
    end = svc.stream("gate-cam")
    elapsed = time.monotonic() - t0
    assert end is not None and end["connected"] and end["kind"] == "rtsp"

    submitted = end["frames_submitted"] - start["frames_submitted"]
    read = end["frames_read"] - start["frames_read"]
    # The camera delivers 10 frames/s; the stream submits 4 of them per second, no more.
    assert read > submitted
    assert 0.7 * FPS <= submitted / elapsed <= FPS * 1.15 + 1 / elapsed, (submitted, elapsed)
    assert end["submit_errors"] == 0, end
    assert end["last_frame_age_s"] < 1.0

    # They are image queries on the edge, answered by its decision tree and naming their stream (one
    # may have been answered just before the first count and counted by the worker just after).
    assert submitted_iqs(rtsp_stack) - edge_before >= submitted - 1
    iq = rtsp_stack.image_query(end["last_image_query"]["id"])
    assert iq["detector_id"] == DIGIT
    assert iq["metadata"]["stream"] == "gate-cam"
    assert iq["result"]["from_edge"] is True and iq["result"]["label"] is not None

    # edge-api's /status through the gateway reports the stream.
    status = httpx.get(f"{rtsp_stack.edge.gateway_url}/status", headers=ADMIN, timeout=10).json()
    [cam] = status["streams"]["streams"]
    assert cam["name"] == "gate-cam" and cam["connected"] is True and cam["frames_submitted"] > 0


def test_worker_reconnects_after_the_rtsp_server_restarts(
    rtsp_stack: StreamsStack, camera: RtspSource
) -> None:
    svc = rtsp_stack.streams
    before = svc.wait_stream("gate-cam", lambda s: s["connected"], timeout=40)
    reconnects = before["reconnects"]

    camera.stop()
    down = svc.wait_stream("gate-cam", lambda s: not s["connected"], timeout=20, what="the drop noticed")
    assert down["error"], down
    # Nothing is submitted while the camera is gone (and the failed re-opens back off).
    svc.wait_stream("gate-cam", lambda s: s["connect_failures"] >= 2, timeout=20, what="retries")
    stalled = svc.stream("gate-cam")
    assert stalled is not None
    time.sleep(1.0)
    still = svc.stream("gate-cam")
    assert still is not None and still["frames_submitted"] == stalled["frames_submitted"]

    camera.start()
    back = svc.wait_stream(
        "gate-cam",
        lambda s: s["connected"] and s["frames_submitted"] >= still["frames_submitted"] + 3,
        timeout=40,
        what="frames again after the server restarted",
    )
    assert back["reconnects"] >= reconnects + 1
    assert back["error"] is None
    assert back["last_frame_age_s"] < 1.0
