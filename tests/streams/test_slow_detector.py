"""A detector slower than the stream's frame period lowers the submission rate but never makes the
worker fall behind: every submitted frame is the newest one, under two frame periods old."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path

import pytest

from launcher.processes import free_port
from tests.streams.conftest import StreamsStack, start_streams_stack, wait_until
from tests.streams.slow_inference import SlowInference, indexed_video

pytestmark = pytest.mark.processes

SLOW = "det_SlowDetector000000000000000"
VIDEO_FPS = 20.0
STREAM_FPS = 10.0
PERIOD = 1.0 / STREAM_FPS
DELAY_S = 0.35  # three and a half frame periods per answer


@pytest.fixture
def slow_stack(tmp_path: Path) -> Iterator[tuple[SlowInference, StreamsStack]]:
    upstream = SlowInference(free_port(), SLOW, DELAY_S).start()
    video = indexed_video(tmp_path / "numbered.avi", VIDEO_FPS, seconds=120)
    config = {
        "edge_inference_configs": {
            "edge_only": {"always_return_edge_prediction": True, "disable_cloud_escalation": True}
        },
        "detectors": [{"detector_id": SLOW, "edge_inference_config": "edge_only"}],
        "streams": [{"name": "numbered", "url": str(video), "detector_id": SLOW, "fps": STREAM_FPS}],
    }
    cloud, stack = start_streams_stack(tmp_path / "edge", tmp_path, config, inference_url=upstream.url)
    try:
        yield upstream, stack
    finally:
        stack.streams.stop()
        stack.edge.stop()
        cloud.stop()
        upstream.stop()


def test_slow_detector_never_makes_the_worker_fall_behind(
    slow_stack: tuple[SlowInference, StreamsStack],
) -> None:
    upstream, stack = slow_stack
    wait_until(lambda: len(upstream.arrivals) >= 14, timeout=40, what="14 frames at the slow detector")
    # The first requests also open connections and look the model up; judge the steady state.
    arrivals = list(upstream.arrivals)[2:]
    indices = [a.index for a in arrivals]
    assert indices == sorted(set(indices)), indices

    # The video plays at 20 frames/s, so frame i appears at start + i/20. A frame that arrives at the
    # detector a constant time after it appeared is always the newest one; a worker that queued frames
    # would deliver each later than the one before (by the detector's delay minus a frame period).
    lags = [a.at - a.index / VIDEO_FPS for a in arrivals]
    assert max(lags) - min(lags) < 2 * PERIOD, [round(x - min(lags), 3) for x in lags]
    # Frames in between were dropped, not queued: consecutive submissions are a delay apart.
    gaps = [b - a for a, b in itertools.pairwise(indices)]
    assert min(gaps) >= int(DELAY_S * VIDEO_FPS) - 1, gaps

    status = stack.streams.stream("numbered")
    assert status is not None
    assert status["kind"] == "file" and status["connected"] is True
    assert status["max_submit_age_s"] < 2 * PERIOD, status
    assert status["submit_errors"] == 0, status
    assert status["frames_read"] > 2 * status["frames_submitted"], status
