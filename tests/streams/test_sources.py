"""The pieces of a stream worker on their own: config validation, sources (HTTP MJPEG, video file,
image folder, bad URLs), the newest-frame slot, motion gating and the reconnect backoff."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

from common.edge_config import EdgeConfigError, StreamConfig, parse_edge_config, redact_url
from edge.streams.gating import MotionGate, thumbnail
from edge.streams.sources import (
    CAPTURE_OPTIONS_ENV,
    SourceError,
    SourceKind,
    _OptionsGate,
    kind_of,
    open_source,
)
from edge.streams.worker import EdgeClient, FrameSlot, StreamWorker
from launcher.processes import free_port
from tests.streams.conftest import DIGIT, write_image
from tests.streams.slow_inference import index_of, indexed_video

SEVEN = "det_DemoIsThisASeven00000000000"


def config(**streams: Any) -> dict[str, Any]:
    return {"detectors": [{"detector_id": DIGIT}], "streams": [streams]}


def errors_of(data: dict[str, Any]) -> list[str]:
    with pytest.raises(EdgeConfigError) as info:
        parse_edge_config(data)
    return info.value.errors


def test_stream_settings_are_validated_with_the_rest_of_the_edge_config() -> None:
    ok = parse_edge_config(config(name="cam-1", url="rtsp://10.0.0.5/live", detector_id=DIGIT))
    [cam] = ok.streams
    assert (cam.fps, cam.motion_threshold, cam.enabled, cam.rtsp_transport) == (1.0, None, True, "tcp")

    errors = errors_of(
        {
            "detectors": [{"detector_id": DIGIT}],
            "streams": [
                {"name": "a", "url": "rtsp://cam/live", "detector_id": DIGIT, "fps": 0},
                {"name": "b c", "url": "ftp://cam/x", "detector_id": DIGIT, "fps": 31},
                {"name": "d", "url": "/videos/x.mp4", "detector_id": DIGIT, "motion_threshold": 1.5},
                {"name": "e", "url": "rtsp:///live", "detector_id": DIGIT, "rtsp_transport": "quic"},
                {
                    "name": "f",
                    "url": "x.mp4",
                    "detector_id": DIGIT,
                    "reconnect_initial_s": 5,
                    "reconnect_max_s": 1,
                },
            ],
        }
    )
    paths = {e.split(":", 1)[0] for e in errors}
    assert paths == {
        "streams.0.fps",
        "streams.1.name",
        "streams.1.url",
        "streams.1.fps",
        "streams.2.motion_threshold",
        "streams.3.url",
        "streams.3.rtsp_transport",
        "streams.4",
    }, errors

    errors = errors_of(
        {
            "detectors": [{"detector_id": DIGIT}],
            "streams": [
                {"name": "a", "url": "rtsp://cam/live", "detector_id": DIGIT},
                {"name": "a", "url": "rtsp://cam/other", "detector_id": SEVEN},
            ],
        }
    )
    assert sorted(e.split(":", 1)[0] for e in errors) == ["streams.1.detector_id", "streams.1.name"]


def test_passwords_are_hidden_and_kinds_follow_the_url(tmp_path: Path) -> None:
    assert redact_url("rtsp://admin:hunter2@10.0.0.5:554/live") == "rtsp://admin:***@10.0.0.5:554/live"
    assert redact_url("rtsp://10.0.0.5/live") == "rtsp://10.0.0.5/live"
    assert kind_of("rtsps://cam/live") is SourceKind.RTSP
    assert kind_of("https://cam/video.mjpg") is SourceKind.HTTP
    assert kind_of(str(tmp_path)) is SourceKind.FOLDER
    assert kind_of(f"file://{tmp_path}") is SourceKind.FOLDER
    assert kind_of(str(tmp_path / "x.mp4")) is SourceKind.FILE


class _MjpegHandler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "multipart/x-mixed-replace; boundary=frame")
        self.end_headers()
        i = 0
        try:
            while True:
                _, jpeg = cv2.imencode(".jpg", np.full((48, 64, 3), (i * 40) % 256, np.uint8))
                part = b"--frame\r\nContent-Type: image/jpeg\r\nContent-Length: %d\r\n\r\n" % len(jpeg)
                self.wfile.write(part + jpeg.tobytes() + b"\r\n")
                self.wfile.flush()
                i += 1
                time.sleep(0.05)
        except OSError:
            pass

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def mjpeg_url() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _MjpegHandler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/video.mjpg"
    server.shutdown()
    server.server_close()


def test_http_mjpeg_source_delivers_frames(mjpeg_url: str) -> None:
    stop = threading.Event()
    cfg = StreamConfig(name="mjpeg", url=mjpeg_url, detector_id=DIGIT, timeout_s=5)
    kind, source = open_source(cfg, stop)
    try:
        assert kind is SourceKind.HTTP
        frames = [source.read() for _ in range(4)]
    finally:
        source.close()
    assert all(f is not None and f.shape == (48, 64, 3) for f in frames)
    assert len({int(f[0, 0, 0]) for f in frames if f is not None}) > 1


def test_video_file_plays_at_its_own_rate_and_loops(tmp_path: Path) -> None:
    video = indexed_video(tmp_path / "ten.avi", fps=20, seconds=0.5)
    stop = threading.Event()
    kind, source = open_source(StreamConfig(name="f", url=str(video), detector_id=DIGIT), stop)
    assert kind is SourceKind.FILE
    started = time.monotonic()
    indices: list[int] = []
    while len(indices) < 2 or indices[-1] > indices[-2]:  # until it starts again
        frame = source.read()
        assert frame is not None and len(indices) < 30
        indices.append(index_of(frame))
    first_pass = time.monotonic() - started
    source.close()
    # Ten frames at 20 frames/s take half a second, then the first one shows again: paced like a
    # camera, not read as fast as the disk allows. (A busy machine may skip frames to keep up.)
    assert indices[0] == 0 and indices[-2] == 9 and indices[-1] <= 1, indices
    assert first_pass >= 10 / 20 * 0.9, first_pass

    kind, source = open_source(StreamConfig(name="f", url=str(video), detector_id=DIGIT, loop=False), stop)
    frames = []
    while (frame := source.read()) is not None:
        frames.append(frame)
        assert len(frames) <= 10
    source.close()
    assert index_of(frames[-1]) == 9


def test_image_folder_is_shown_in_name_order_and_listed_again(tmp_path: Path) -> None:
    for i in (2, 0, 1):
        write_image(tmp_path / f"{i}.png", np.full((8, 8, 3), 50 * i, np.uint8))
    (tmp_path / "notes.txt").write_text("ignored")
    stop = threading.Event()
    cfg = StreamConfig(name="folder", url=str(tmp_path), detector_id=DIGIT, fps=30)
    kind, source = open_source(cfg, stop)
    assert kind is SourceKind.FOLDER
    first_pass = [int(source.read()[0, 0, 0]) for _ in range(3)]  # type: ignore[index]
    write_image(tmp_path / "3.png", np.full((8, 8, 3), 150, np.uint8))
    second_pass = [int(source.read()[0, 0, 0]) for _ in range(4)]  # type: ignore[index]
    source.close()
    assert first_pass == [0, 50, 100] and second_pass == [0, 50, 100, 150]


def test_sources_that_cannot_open_say_why(tmp_path: Path) -> None:
    stop = threading.Event()
    port = free_port()
    cases = {
        f"rtsp://127.0.0.1:{port}/live": f"cannot connect to 127.0.0.1:{port}",
        str(tmp_path / "missing.mp4"): "no such file or directory",
        str(tmp_path): "no images",
    }
    (tmp_path / "junk.avi").write_bytes(b"\0" * 1000)
    cases[str(tmp_path / "junk.avi")] = "not a video file"
    for url, message in cases.items():
        with pytest.raises(SourceError, match=message):
            open_source(StreamConfig(name="x", url=url, detector_id=DIGIT, timeout_s=2), stop)


def test_slot_keeps_only_the_newest_frame() -> None:
    slot = FrameSlot()
    assert slot.newer_than(0, timeout=0.01) is None
    for value in range(5):
        slot.put(np.full((2, 2, 3), value, np.uint8))
    taken = slot.newer_than(0, timeout=0.01)
    assert taken is not None and taken.seq == 5 and int(taken.image[0, 0, 0]) == 4
    assert slot.newer_than(taken.seq, timeout=0.01) is None


def test_motion_gate_passes_changes_only() -> None:
    gate = MotionGate(0.05)
    scene = np.zeros((120, 160, 3), np.uint8)
    scene[40:80, 60:100] = 200
    noisy = np.clip(scene.astype(int) + np.random.default_rng(0).integers(-6, 7, scene.shape), 0, 255)
    moved = np.zeros_like(scene)
    moved[40:80, 100:140] = 200

    assert gate.changed(thumbnail(scene))  # nothing submitted yet
    gate.submitted(thumbnail(scene))
    assert not gate.changed(thumbnail(noisy.astype(np.uint8)))  # sensor noise is no change
    assert gate.changed(thumbnail(moved))


def test_reconnect_backoff_doubles_up_to_the_cap() -> None:
    cfg = StreamConfig(
        name="x", url="rtsp://cam/live", detector_id=DIGIT, reconnect_initial_s=0.5, reconnect_max_s=5
    )
    client = EdgeClient("http://127.0.0.1:9", timeout_s=1)
    try:
        worker = StreamWorker(cfg, client)
        assert [worker._backoff(a) for a in range(7)] == [0.5, 1, 2, 4, 5, 5, 5]
    finally:
        client.close()


def test_rtsp_transport_options_never_change_under_an_open_in_progress() -> None:
    gate = _OptionsGate()
    order: list[str] = []
    with gate.hold("rtsp_transport;udp"), gate.hold("rtsp_transport;udp"), gate.hold(None):
        # Same value and "any value" share; a different transport waits for all three to finish.
        assert os.environ[CAPTURE_OPTIONS_ENV] == "rtsp_transport;udp"

        def other() -> None:
            with gate.hold("rtsp_transport;tcp"):
                order.append(os.environ[CAPTURE_OPTIONS_ENV])

        thread = threading.Thread(target=other)
        thread.start()
        time.sleep(0.1)
        order.append("first opens done")
    thread.join(5)
    assert order == ["first opens done", "rtsp_transport;tcp"]
