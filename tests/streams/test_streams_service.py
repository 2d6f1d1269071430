"""Stream ingest against the real edge (inference, edge-api, nginx) with file-based sources: motion
gating, a bad source beside good ones, and streams added, changed and removed by `PUT /edge-config`."""

from __future__ import annotations

from pathlib import Path

import cv2
import httpx
import numpy as np
import pytest

from edge.streams.gating import difference, thumbnail
from launcher.processes import free_port
from tests.streams.conftest import DIGIT, NO_MODEL, SEVEN, StreamsStack, edge_config, stream, write_image
from tests.support.stack import ADMIN

pytestmark = pytest.mark.processes


def digit_frame(data: bytes) -> np.ndarray:
    """An MNIST digit as a 112x112 BGR frame (the scene a camera would see)."""
    grey = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_GRAYSCALE)
    assert grey is not None
    big = cv2.resize(grey, (112, 112), interpolation=cv2.INTER_NEAREST)
    return np.asarray(cv2.cvtColor(big, cv2.COLOR_GRAY2BGR))


def test_static_scene_with_motion_gating_submits_once_then_once_more_on_change(
    streams_stack: StreamsStack, digits: list[tuple[bytes, int]], tmp_path: Path
) -> None:
    first = digit_frame(digits[0][0])
    second = next(
        f
        for f in (digit_frame(d) for d, _ in digits[1:])
        if difference(thumbnail(f), thumbnail(first)) > 0.08
    )
    scene = tmp_path / "scene"
    scene.mkdir()
    write_image(scene / "frame.png", first)
    streams_stack.put_config(edge_config(stream("static", scene, fps=10, motion_threshold=0.04)))
    svc = streams_stack.streams

    # Two seconds of the same scene at 10 frames/s: one frame submitted, the rest skipped.
    status = svc.wait_stream("static", lambda s: s["frames_read"] >= 20, what="20 frames of the scene")
    assert status["frames_submitted"] == 1, status
    assert status["frames_skipped_motion"] >= 10, status
    first_iq = status["last_image_query"]["id"]

    write_image(scene / "frame.png", second)
    status = svc.wait_stream("static", lambda s: s["frames_submitted"] >= 2, what="the changed scene")
    read_at_change = status["frames_read"]
    status = svc.wait_stream(
        "static", lambda s: s["frames_read"] >= read_at_change + 15, what="15 more frames"
    )
    assert status["frames_submitted"] == 2, status
    assert status["submit_errors"] == 0, status
    second_iq = status["last_image_query"]["id"]
    assert second_iq != first_iq

    # Both are ordinary image queries on the edge, answered by the decision tree, naming their stream.
    for iq_id in (first_iq, second_iq):
        iq = streams_stack.image_query(iq_id)
        assert iq["detector_id"] == DIGIT
        assert iq["metadata"]["stream"] == "static"
        assert iq["result"]["from_edge"] is True


def test_bad_sources_show_their_error_and_other_streams_keep_running(
    streams_stack: StreamsStack, tmp_path: Path, digits: list[tuple[bytes, int]]
) -> None:
    folder = tmp_path / "good"
    folder.mkdir()
    for i, (data, _) in enumerate(digits[:3]):
        write_image(folder / f"{i:03d}.png", digit_frame(data))
    (folder / "000.png.txt").write_text("not a video")
    backoff = {"reconnect_initial_s": 0.2, "reconnect_max_s": 1.0, "timeout_s": 2.0}
    closed_port = free_port()
    streams_stack.put_config(
        edge_config(
            stream("good", folder, fps=5),
            stream("refused", f"rtsp://127.0.0.1:{closed_port}/live", **backoff),
            stream("missing", tmp_path / "no-such-video.mp4", **backoff),
            stream("not-video", folder / "000.png.txt", **backoff),
            {**stream("no-model", folder, fps=5), "detector_id": NO_MODEL},
        )
    )
    svc = streams_stack.streams

    svc.wait_stream("good", lambda s: s["frames_submitted"] >= 5, what="the good stream submitting")
    refused = svc.wait_stream("refused", lambda s: s["connect_failures"] >= 3, what="retries")
    missing = svc.wait_stream("missing", lambda s: s["connect_failures"] >= 2, what="retries")
    not_video = svc.wait_stream("not-video", lambda s: s["connect_failures"] >= 2, what="retries")
    assert refused["connected"] is False and f"cannot connect to 127.0.0.1:{closed_port}" in refused["error"]
    assert missing["connected"] is False and "no such file or directory" in missing["error"]
    assert "not a video file" in not_video["error"]
    assert refused["frames_submitted"] == 0
    # A source that works but whose frames edge-api cannot answer shows edge-api's reason.
    no_model = svc.wait_stream("no-model", lambda s: s["submit_errors"] >= 2, what="refused frames")
    assert no_model["connected"] is True and no_model["frames_submitted"] == 0
    assert "edge-api answered 503" in no_model["last_submit_error"], no_model

    # The good stream was not held up by the failing ones.
    before = svc.stream("good")
    assert before is not None and before["connected"] is True and before["error"] is None
    svc.wait_stream("good", lambda s: s["frames_submitted"] >= before["frames_submitted"] + 5)

    # edge-api's /status (through the gateway, the operator's door) shows the same, per stream.
    edge_streams = {s["name"]: s for s in streams_stack.edge_status()["streams"]["streams"]}
    assert set(edge_streams) == {"good", "refused", "missing", "not-video", "no-model"}
    assert edge_streams["good"]["connected"] is True
    assert "cannot connect" in edge_streams["refused"]["error"]
    assert "no such file or directory" in edge_streams["missing"]["error"]
    assert streams_stack.edge_status()["streams"]["service"]["reachable"] is True

    # And the gateway's /metrics carries the per-stream counters.
    metrics = httpx.get(f"{streams_stack.edge.gateway_url}/metrics", headers=ADMIN, timeout=10).text
    assert f'edge_stream_connected{{detector_id="{DIGIT}",stream="good"}} 1.0' in metrics
    assert f'edge_stream_connected{{detector_id="{DIGIT}",stream="refused"}} 0.0' in metrics
    assert 'edge_stream_connect_failures_total{detector_id="' + DIGIT + '",stream="refused"}' in metrics
    for name in ("frames_read", "frames_submitted", "frames_skipped_motion", "reconnects"):
        assert f"edge_stream_{name}_total{{" in metrics
    assert 'edge_stream_last_frame_age_seconds{detector_id="' + DIGIT + '",stream="good"}' in metrics


def test_put_edge_config_adds_changes_and_removes_streams_without_restart(
    streams_stack: StreamsStack, tmp_path: Path, digits: list[tuple[bytes, int]]
) -> None:
    folder = tmp_path / "frames"
    folder.mkdir()
    write_image(folder / "a.png", digit_frame(digits[0][0]))
    write_image(folder / "b.png", digit_frame(digits[1][0]))
    svc = streams_stack.streams
    pid = svc.process.pid if svc.process else None

    streams_stack.put_config(edge_config(stream("one", folder, fps=2)))
    svc.wait_stream("one", lambda s: s["frames_submitted"] >= 2 and s["fps"] == 2)

    # Change one stream, add another (on the other detector).
    streams_stack.put_config(
        edge_config(
            stream("one", folder, fps=8),
            {**stream("two", folder, fps=4), "detector_id": SEVEN},
        )
    )
    svc.wait_stream("one", lambda s: s["fps"] == 8 and s["frames_submitted"] >= 2, what="one at 8 fps")
    two = svc.wait_stream("two", lambda s: s["frames_submitted"] >= 2, what="the new stream")
    assert streams_stack.image_query(two["last_image_query"]["id"])["detector_id"] == SEVEN

    # Disable one, remove two.
    streams_stack.put_config(edge_config({**stream("one", folder, fps=8), "enabled": False}))
    svc.wait_stream("one", lambda s: s["state"] == "disabled", what="one disabled")
    status = svc.status()
    assert [s["name"] for s in status["streams"]] == ["one"]
    assert status["config"]["error"] is None
    assert svc.process is not None and svc.process.pid == pid and svc.process.is_running()

    # An invalid stream is rejected with the path of the bad field and changes nothing.
    bad = edge_config({**stream("one", folder), "detector_id": "det_NotConfiguredOnThisEdge0000"})
    bad["streams"].append(stream("x", "ftp://camera/feed", fps=60))
    resp = httpx.put(f"{streams_stack.edge.edge_url}/edge-config", json=bad, headers=ADMIN, timeout=10)
    assert resp.status_code == 400
    detail = resp.json()["detail"]
    assert "streams.1.url" in detail and "streams.1.fps" in detail, detail
    bad["streams"].pop()
    resp = httpx.put(f"{streams_stack.edge.edge_url}/edge-config", json=bad, headers=ADMIN, timeout=10)
    assert resp.status_code == 400 and "streams.0.detector_id" in resp.json()["detail"]
    assert [s["name"] for s in svc.status()["streams"]] == ["one"]


def test_edge_status_says_when_the_streams_service_is_not_running(
    streams_stack: StreamsStack, tmp_path: Path
) -> None:
    streams_stack.put_config(edge_config(stream("cam", "rtsp://user:secret@127.0.0.1:1/live")))
    streams_stack.streams.stop()
    try:
        section = streams_stack.edge_status()["streams"]
        assert section["service"]["reachable"] is False
        assert "not running" in section["service"]["error"]
        # The configured streams are still listed, password hidden, with the reason nobody reports.
        [cam] = section["streams"]
        assert cam["name"] == "cam" and cam["state"] == "unknown"
        assert cam["url"] == "rtsp://user:***@127.0.0.1:1/live"
        assert "not running" in cam["error"]
    finally:
        streams_stack.streams.start()
    cam = streams_stack.streams.wait_stream("cam", lambda s: s["error"] is not None)
    assert "secret" not in str(cam)
